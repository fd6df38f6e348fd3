#!/usr/bin/python3
"""pil_reference.py: what torchvision's ImageNet transform does, with PIL and numpy only.

  pil_reference.py ref IMAGE OUT.png      writes Resize(256, bilinear) + CenterCrop(224) as an 8-bit PNG:
                                          the reference proxy/imageprep's tests compare against.
  pil_reference.py time IMAGE [N]         median ms of the whole pipeline (decode, convert, resize, crop,
                                          ToTensor, Normalize), to compare with BenchmarkPreprocess.
  pil_reference.py variants IMAGE DIR     writes the small PNG/GIF/WebP test images.
Needs Debian's python3-pil and python3-numpy.
"""
import sys, time, io
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
    left, top = int(round((ow - crop) / 2.0)), int(round((oh - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))

def pipeline(data):
    img = Image.open(io.BytesIO(data)).convert("RGB")
    x = np.asarray(resize_crop(img), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (x - MEAN) / STD

if __name__ == "__main__":
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "ref":
        resize_crop(Image.open(path).convert("RGB")).save(sys.argv[3])
    elif cmd == "time":
        data = open(path, "rb").read()
        n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
        ts = []
        for _ in range(n):
            t = time.perf_counter(); pipeline(data); ts.append(time.perf_counter() - t)
        print("PIL+numpy %s: median %.2f ms over %d runs" % (path, sorted(ts)[n // 2] * 1e3, n))
    elif cmd == "variants":
        img = Image.open(path).convert("RGB")
        small = img.resize((img.width // 4, img.height // 4), Image.BILINEAR)
        small.save(sys.argv[3] + "/small.png")
        small.save(sys.argv[3] + "/small.gif")
        small.save(sys.argv[3] + "/small.webp", quality=80)
        rgba = small.convert("RGBA"); rgba.putalpha(128); rgba.save(sys.argv[3] + "/small_alpha.png")
