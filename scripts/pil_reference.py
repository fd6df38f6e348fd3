#!/usr/bin/python3
"""pil_reference.py: what torchvision's ImageNet transform does, with PIL and numpy only.

torch is not installable here; numpy does ToTensor and Normalize in float32, as torch does.

  pil_reference.py ref IMAGE OUT.png [draft]  Resize(256, bilinear) + CenterCrop(224) as an 8-bit PNG,
                                              after img.draft("RGB", (256, 256)) when "draft" is given
  pil_reference.py tensors OUTDIR IMAGE...    for each IMAGE, OUTDIR/NAME.exact.f32 and NAME.draft.f32: the
                                              normalized CHW float32 tensors (little-endian) without and with draft()
  pil_reference.py time N IMAGE...            median ms over N runs per IMAGE of the whole pipeline (decode,
                                              convert, resize, crop, ToTensor, Normalize), without and with
                                              draft(); one line "time NAME EXACT_MS DRAFT_MS" per image
  pil_reference.py serve                      times on request, for perf -preprocess's interleaved comparison:
                                              each stdin line "RUNS DRAFT PATH" (DRAFT 0 or 1) is answered
                                              "ms MEDIAN" over RUNS runs after one unmeasured
  pil_reference.py versions                   one line: the Python, PIL, numpy, libjpeg-turbo, zlib and libwebp versions
  pil_reference.py make-images DIR SEED       writes the varied test set (sizes, progressive, gray, CMYK,
                                              EXIF orientation, 12 MP with noise) from proxy/testdata/grace_hopper.jpg
  pil_reference.py variants IMAGE DIR         writes the small PNG/GIF/WebP test images
  pil_reference.py accepts IMAGE...           whether PIL decodes each IMAGE, without and with draft(): one
                                              line "accepts NAME EXACT DRAFT", each "ok" or "error"
Needs Debian's python3-pil and python3-numpy.
"""
import io
import os
import sys
import time

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def resize_crop(img, size=256, crop=224):
    w, h = img.size
    if w <= h:
        ow, oh = size, int(size * h / w)
    else:
        ow, oh = int(size * w / h), size
    img = img.resize((ow, oh), Image.BILINEAR)  # torchvision Resize on PIL: antialiased bilinear
    # torchvision's center_crop: int(round(...)), Python's round (half to even)
    left, top = int(round((ow - crop) / 2.0)), int(round((oh - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def open_rgb(data, draft):
    img = Image.open(io.BytesIO(data))
    if draft:
        img.draft("RGB", (256, 256))
    return img.convert("RGB")


def pipeline(data, draft=False):
    x = np.asarray(resize_crop(open_rgb(data, draft)), dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
    return (x - MEAN) / STD


def median_ms(f, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 2] * 1e3


def noisy(img, rng, sigma):
    a = np.asarray(img, dtype=np.float32)
    a = a + rng.normal(0, sigma, a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), img.mode)


def exif_orientation(o):
    ex = Image.Exif()
    ex[0x0112] = o  # Orientation: PIL and torchvision ignore it unless asked (ImageOps.exif_transpose)
    ex[0x010F] = "batchgate test"  # Make
    return ex.tobytes()


def make_images(d, seed):
    rng = np.random.default_rng(seed)
    base = Image.open(os.path.join(os.path.dirname(__file__), "../proxy/testdata/grace_hopper.jpg")).convert("RGB")
    os.makedirs(d, exist_ok=True)

    def sized(w, h, sigma):
        # Crop to the aspect ratio, resize, then noise for a realistic entropy.
        bw, bh = base.size
        if bw * h > bh * w:
            cw = bh * w // h
            img = base.crop(((bw - cw) // 2, 0, (bw - cw) // 2 + cw, bh))
        else:
            ch = bw * h // w
            img = base.crop((0, (bh - ch) // 2, bw, (bh - ch) // 2 + ch))
        return noisy(img.resize((w, h), Image.BICUBIC), rng, sigma)

    out = []

    def save(name, img, **kw):
        p = os.path.join(d, name)
        img.save(p, **kw)
        out.append(p)

    save("small_500x375.jpg", sized(500, 375, 4), quality=90)
    save("medium_768x576.jpg", sized(768, 576, 4), quality=90)
    save("photo_4032x3024.jpg", sized(4032, 3024, 6), quality=92, exif=exif_orientation(1))
    save("portrait_3024x4032_exif6.jpg", sized(3024, 4032, 6), quality=90, exif=exif_orientation(6))
    save("progressive_1600x1200.jpg", sized(1600, 1200, 4), quality=88, progressive=True)
    save("progressive_640x480.jpg", sized(640, 480, 4), quality=85, progressive=True)
    save("gray_1200x900.jpg", sized(1200, 900, 4).convert("L"), quality=90)
    save("gray_400x300.jpg", sized(400, 300, 4).convert("L"), quality=90)
    save("cmyk_1000x750.jpg", sized(1000, 750, 4).convert("CMYK"), quality=90)
    save("cmyk_300x400.jpg", sized(300, 400, 4).convert("CMYK"), quality=90)
    save("q75_444_1920x1080.jpg", sized(1920, 1080, 5), quality=75, subsampling=0)
    save("q95_422_1280x960.jpg", sized(1280, 960, 5), quality=95, subsampling=1)
    save("wide_2048x512.jpg", sized(2048, 512, 4), quality=90)
    save("tall_600x1800.jpg", sized(600, 1800, 4), quality=90)
    save("png_640x480.png", sized(640, 480, 3))
    save("png_1600x1200.png", sized(1600, 1200, 3))
    save("webp_1920x1440.webp", sized(1920, 1440, 4), quality=80)
    save("webp_1600x1200.webp", sized(1600, 1200, 4), quality=80)
    # Crops of the 12 MP photo at other framings: more large images.
    big = sized(4032, 3024, 6)
    for i in range(int(os.environ.get("PARITY_EXTRA", "8"))):
        x, y = int(rng.integers(0, 1500)), int(rng.integers(0, 1000))
        w = int(rng.integers(1100, 4032 - x))
        h = min(int(w * rng.uniform(0.6, 1.4)), 3024 - y)
        if min(w, h) < 600:
            continue
        save("crop%d_%dx%d.jpg" % (i, w, h), big.crop((x, y, x + w, y + h)), quality=int(rng.integers(80, 96)))
    for p in out:
        print(p)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ref":
        data = open(sys.argv[2], "rb").read()
        resize_crop(open_rgb(data, len(sys.argv) > 4 and sys.argv[4] == "draft")).save(sys.argv[3])
    elif cmd == "tensors":
        outdir = sys.argv[2]
        for path in sys.argv[3:]:
            data = open(path, "rb").read()
            name = os.path.basename(path)
            for kind, draft in (("exact", False), ("draft", True)):
                pipeline(data, draft).astype("<f4").tofile(os.path.join(outdir, "%s.%s.f32" % (name, kind)))
    elif cmd == "time":
        n = int(sys.argv[2])
        for path in sys.argv[3:]:
            data = open(path, "rb").read()
            exact = median_ms(lambda: pipeline(data), n)
            draft = median_ms(lambda: pipeline(data, True), n)
            print("time %s %.3f %.3f" % (os.path.basename(path), exact, draft), flush=True)
    elif cmd == "serve":
        cache = {}
        for line in sys.stdin:
            runs, draft, path = line.rstrip("\n").split(" ", 2)
            if path not in cache:
                cache[path] = open(path, "rb").read()
            data, draft = cache[path], draft == "1"
            pipeline(data, draft)  # unmeasured
            print("ms %.3f" % median_ms(lambda: pipeline(data, draft), int(runs)), flush=True)
    elif cmd == "versions":
        from PIL import features
        import PIL
        print("python %s, PIL %s, numpy %s, libjpeg-turbo %s, zlib %s, libwebp %s" % (
            sys.version.split()[0], PIL.__version__, np.__version__, features.version("libjpeg_turbo"),
            features.version("zlib"), features.version("webp")))
    elif cmd == "accepts":
        for path in sys.argv[2:]:
            data = open(path, "rb").read()
            verdicts = []
            for draft in (False, True):
                try:
                    open_rgb(data, draft)
                    verdicts.append("ok")
                except Exception:
                    verdicts.append("error")
            print("accepts %s %s %s" % (os.path.basename(path), *verdicts), flush=True)
    elif cmd == "make-images":
        make_images(sys.argv[2], int(sys.argv[3]))
    elif cmd == "variants":
        img = Image.open(sys.argv[2]).convert("RGB")
        small = img.resize((img.width // 4, img.height // 4), Image.BILINEAR)
        small.save(sys.argv[3] + "/small.png")
        small.save(sys.argv[3] + "/small.gif")
        small.save(sys.argv[3] + "/small.webp", quality=80)
        rgba = small.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(sys.argv[3] + "/small_alpha.png")
    else:
        sys.exit(__doc__)
