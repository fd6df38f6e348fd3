package imageprep

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"testing"
)

// pixelBytes is the memory of a decoded image's pixel buffers.
func pixelBytes(img image.Image) int64 {
	switch m := img.(type) {
	case *image.YCbCr:
		return int64(len(m.Y) + len(m.Cb) + len(m.Cr))
	case *image.NYCbCrA:
		return int64(len(m.Y) + len(m.Cb) + len(m.Cr) + len(m.A))
	case *image.Gray:
		return int64(len(m.Pix))
	case *image.Gray16:
		return int64(len(m.Pix))
	case *image.Paletted:
		return int64(len(m.Pix))
	case *image.RGBA:
		return int64(len(m.Pix))
	case *image.NRGBA:
		return int64(len(m.Pix))
	case *image.RGBA64:
		return int64(len(m.Pix))
	case *image.NRGBA64:
		return int64(len(m.Pix))
	case *image.CMYK:
		return int64(len(m.Pix))
	}
	return 1 << 62
}

func TestInspect(t *testing.T) {
	for _, tc := range []struct {
		file, format string
		w, h         int
		direct       bool
	}{
		{"grace_hopper.jpg", "jpeg", 512, 600, true},
		{"small_progressive.jpg", "jpeg", 48, 32, true},
		{"small_gray.jpg", "jpeg", 48, 32, true},
		{"small.png", "png", 0, 0, true},
		{"small_alpha.png", "png", 0, 0, true},
		{"small.gif", "gif", 0, 0, true},
		{"small.webp", "webp", 0, 0, true},
	} {
		data := read(t, tc.file)
		h, err := Inspect(data, Limits{})
		if err != nil || h.Format != tc.format || h.direct != tc.direct {
			t.Errorf("Inspect(%s) = %+v, %v; want format %s, direct %v", tc.file, h, err, tc.format, tc.direct)
			continue
		}
		cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
		if err != nil || cfg.Width != h.Width || cfg.Height != h.Height || (tc.w != 0 && (h.Width != tc.w || h.Height != tc.h)) {
			t.Errorf("%s: Inspect says %dx%d, image.DecodeConfig %dx%d (%v)", tc.file, h.Width, h.Height, cfg.Width, cfg.Height, err)
		}
		img, err := DecodeInspected(data, h)
		if err != nil {
			t.Errorf("%s: %v", tc.file, err)
			continue
		}
		if tc.format == "jpeg" && JPEGDecoder() != "go" {
			continue // libjpeg-turbo allocates in C: its estimate is held under load by perf -adversarial
		}
		if got, est := pixelBytes(img), h.MemoryBytes(imagenet); got > est {
			t.Errorf("%s: decoded pixels take %d bytes, above the estimate %d", tc.file, got, est)
		}
	}
}

// The header's claims about costly decoding are read: progressive JPEGs keep
// their coefficients, interlaced PNGs decode each pass apart, 16-bit PNGs
// take 8 bytes a pixel.
func TestInspectCosts(t *testing.T) {
	prog, err := Inspect(read(t, "small_progressive.jpg"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	base, _ := Inspect(read(t, "small_gray.jpg"), Limits{})
	// 4:2:0: 48x32 luma and two 24x16 chroma planes, one byte a sample,
	// plus 4 bytes a sample of coefficients when progressive.
	if want := int64(5 * (48*32 + 2*24*16)); prog.decodeBytes != want || base.decodeBytes != 48*32 {
		t.Errorf("decode bytes: progressive YCbCr 4:2:0 %d, want %d; baseline gray %d, want %d",
			prog.decodeBytes, want, base.decodeBytes, 48*32)
	}
	for _, tc := range []struct {
		depth, ctype, interlace byte
		want                    int64
		direct                  bool
	}{
		// The image, and the decoder's 2 rows as stored (filter byte first).
		{8, 0, 0, 1*100*50 + 2*101, true},    // gray
		{8, 2, 0, 4*100*50 + 2*301, true},    // RGB as RGBA
		{8, 6, 0, 4*100*50 + 2*401, true},    // NRGBA
		{16, 6, 0, 8*100*50 + 2*801, false},  // NRGBA64
		{8, 2, 1, 8*100*50 + 6*301, true},    // interlaced: twice, rows of 7 passes
		{8, 3, 0, 1*100*50 + 2*101, true},    // paletted
		{2, 3, 0, 1*100*50 + 2*(1+25), true}, // paletted, 4 pixels a byte
	} {
		h, err := Inspect(pngHeader(100, 50, tc.depth, tc.ctype, tc.interlace), Limits{})
		if err != nil || h.decodeBytes != tc.want || h.direct != tc.direct {
			t.Errorf("PNG depth %d type %d interlace %d: %+v, %v; want %d bytes, direct %v", tc.depth, tc.ctype, tc.interlace, h, err, tc.want, tc.direct)
		}
	}
}

// pngHeader returns a PNG signature and IHDR with no image data: enough for
// Inspect.
func pngHeader(w, h uint32, depth, ctype, interlace byte) []byte {
	b := []byte("\x89PNG\r\n\x1a\n")
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, depth, ctype, 0, 0, interlace)
	b = binary.BigEndian.AppendUint32(b, 13)
	chunk := append([]byte("IHDR"), ihdr...)
	b = append(b, chunk...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(chunk))
}

func TestInspectRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"text", []byte("hello"), ErrFormat},
		{"empty", nil, ErrFormat},
		{"jpeg without frame", []byte("\xff\xd8\xff\xd9"), ErrCorrupt},
		{"png 0x0", pngHeader(0, 0, 8, 2, 0), ErrCorrupt},
		{"png bomb", pngHeader(50_000, 50_000, 8, 2, 0), ErrTooLarge},
		{"png huge dims", pngHeader(1<<31, 1<<31, 8, 2, 0), ErrCorrupt},
	} {
		if _, err := Inspect(tc.data, Limits{}); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// The in-place readers for gray, CMYK and paletted images give exactly what
// converting to NRGBA first (the generic path) gives.
func TestDirectReadersMatchConversion(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	rect := image.Rect(0, 0, 300, 260)
	gray := image.NewGray(rect)
	cmyk := image.NewCMYK(rect)
	pal := image.NewPaletted(rect, color.Palette{color.RGBA{255, 0, 0, 255}, color.NRGBA{0, 200, 100, 128}, color.Gray{77}})
	for i := range gray.Pix {
		gray.Pix[i] = uint8(r.IntN(256))
		pal.Pix[i] = uint8(r.IntN(3))
	}
	for i := range cmyk.Pix {
		cmyk.Pix[i] = uint8(r.IntN(256))
	}
	for _, img := range []image.Image{gray, cmyk, pal} {
		conv := image.NewNRGBA(rect)
		draw.Draw(conv, rect, img, image.Point{}, draw.Src)
		if img == cmyk { // PIL's cmyk2rgb, which rounds a little differently from Go's
			for i := range rect.Dx() * rect.Dy() {
				p := cmyk.Pix[4*i : 4*i+4]
				nk := 255 - float64(p[3])
				for c := range 3 {
					conv.Pix[4*i+c] = uint8(math.Round(nk - float64(p[c])*nk/255))
				}
			}
		}
		got, want := make([]float32, 3*224*224), make([]float32, 3*224*224)
		if err := Preprocess(img, imagenet, got); err != nil {
			t.Fatal(err)
		}
		Preprocess(conv, imagenet, want)
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%T: value %d is %v, the converted image gives %v", img, i, got[i], want[i])
				break
			}
		}
	}
}

// FuzzInspect: no input panics Inspect or the decoders; when both Inspect and
// image.DecodeConfig read a header they agree on the size; a decoded image's
// pixels never take more memory than Inspect's estimate of the decode; and
// Inspect refuses a WebP as damaged or unsupported only when x/image/webp
// cannot decode it either.
func FuzzInspect(f *testing.F) {
	for _, name := range []string{"grace_hopper.jpg", "small_progressive.jpg", "small_gray.jpg", "small_cmyk.jpg", "small.gif", "small.webp"} {
		data, err := readFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add(pngHeader(100, 50, 16, 6, 1))
	var small bytes.Buffer
	png.Encode(&small, image.NewNRGBA(image.Rect(0, 0, 20, 10)))
	f.Add(small.Bytes())
	f.Add([]byte("\xff\xd8\xff\xc2\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"))
	// The costly layouts TestEstimateCoversDecode measures, small.
	const w, h = 96, 64
	vp8l := webpChunk("VP8L", vp8lFlat(w, h, 0, false))
	for _, data := range [][]byte{
		riffWebP(vp8xChunk(0, 6000, 6000), webpChunk("VP8L", vp8lFlat(6000, 6000, 0, false))), // issue 22
		riffWebP(vp8l),
		riffWebP(vp8xChunk(0, w, h), vp8l),
		riffWebP(vp8xChunk(0x10, w, h), vp8l),
		riffWebP(vp8xChunk(0x10, w, h), webpChunk("ALPH", append([]byte{1}, vp8lFlat(w, h, 0, false)[5:]...)), vp8l),
		riffWebP(webpChunk("VP8L", vp8lFlat(w, h, 16, true))),
		riffWebP(vp8xChunk(0, w, h), webpChunk("VP8L", vp8lFlat(w, h, 2, false))),
		riffWebP(vp8xChunk(0x02, w, h), webpChunk("ANIM", make([]byte, 6)), webpChunk("ANMF", append(make([]byte, 16), vp8l...))),
		riffWebP(webpChunk("VP8L", vp8lBomb(w, h, vp8lSeq(40), 11))),
		riffWebP(webpChunk("VP8L", vp8lBomb(w, h, []int{0, 500}, 2))), // remapped: 500 is over the 384 tiles
		riffWebP(vp8xChunk(0x10, 512, 384), webpChunk("ALPH", append([]byte{1}, vp8lBomb(512, 384, vp8lSeq(20), 11)[5:]...)), readLocal(f, "lossy.webp")[12:]),
		readLocal(f, "lossless_photo_z9.webp"),
		readLocal(f, "lossy_lossless_alpha.webp"),
		readLocal(f, "lossy.webp"),
		readLocal(f, "lossy_alpha.webp"),
		progressiveJPEG(w, h, 1),
		progressiveJPEG(w, h, 3),
		jpegRGBNames(encodeJPEG(f, gradient(w, h))),
		zeroPNG(w, h, 2, true),
		encodePNG(f, paletted(w, h, 4)),
		encodeGIF(f, paletted(w, h, 256), true),
		animatedGIF(f, w, h, w/2, h/2),
	} {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := Limits{MaxPixels: 1 << 20}
		h, err := Inspect(data, lim)
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Inspect error %v wraps none of the three", err)
			}
			if cfg, format, cerr := image.DecodeConfig(bytes.NewReader(data)); cerr == nil && format == "webp" &&
				!errors.Is(err, ErrTooLarge) && cfg.Width*cfg.Height <= lim.MaxPixels {
				if _, _, derr := image.Decode(bytes.NewReader(data)); derr == nil {
					t.Fatalf("Inspect refuses a WebP that x/image/webp decodes: %v", err)
				}
			}
			return
		}
		if cfg, format, err := image.DecodeConfig(bytes.NewReader(data)); err == nil &&
			(format != h.Format || cfg.Width != h.Width || cfg.Height != h.Height) {
			t.Fatalf("Inspect says %s %dx%d, image.DecodeConfig %s %dx%d", h.Format, h.Width, h.Height, format, cfg.Width, cfg.Height)
		}
		// What the proxy runs: Tensor, at the scale it picks and exact.
		out := make([]float32, 3*224*224)
		for _, denom := range []int{ScaleDenom(h, imagenet), 1} {
			if err := TensorAt(data, h, imagenet, denom, out); err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Tensor at 1/%d: %v does not wrap ErrCorrupt", denom, err)
			}
		}
		img, err := DecodeInspected(data, h)
		if err != nil {
			return
		}
		// Go's decoder, whichever the build has for JPEG.
		if got := pixelBytes(img); got > h.decodeBytes {
			t.Fatalf("%T %dx%d takes %d bytes, estimate %d", img, h.Width, h.Height, got, h.decodeBytes)
		}
		if err := Preprocess(img, imagenet, out); err != nil {
			t.Fatalf("Preprocess: %v", err)
		}
	})
}

func readFile(name string) ([]byte, error) { return os.ReadFile("../testdata/" + name) }
