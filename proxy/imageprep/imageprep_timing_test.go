package imageprep

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"math/rand/v2"
	"testing"

	"golang.org/x/image/draw"
)

// benchJPEG makes a w x h JPEG from the committed photo, with noise so that
// its entropy (and so its decode time) is that of a real photo: the
// benchmark images are made here, not committed.
func benchJPEG(tb testing.TB, w, h int) []byte {
	src, _, err := Decode(read(tb, "grace_hopper.jpg"), Limits{})
	if err != nil {
		tb.Fatal(err)
	}
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.CatmullRom.Scale(dst, dst.Bounds(), src, src.Bounds(), draw.Src, nil)
	r := rand.New(rand.NewPCG(uint64(w), uint64(h)))
	for i := range dst.Pix {
		if i%4 != 3 {
			dst.Pix[i] = uint8(min(max(int(dst.Pix[i])+int(r.NormFloat64()*5), 0), 255))
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, dst, &jpeg.Options{Quality: 90}); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// BenchmarkTensor times the whole pipeline (Inspect + Tensor) on the sizes
// of the goals: compare with `go run ./perf -preprocess`, which also times
// PIL on the same files. "exact" forces the full-size decode.
func BenchmarkTensor(b *testing.B) {
	out := make([]float32, 3*224*224)
	for _, sz := range [][2]int{{500, 375}, {768, 576}, {4032, 3024}} {
		data := benchJPEG(b, sz[0], sz[1])
		h, err := Inspect(data, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		for _, mode := range []string{"served", "exact"} {
			denom := ScaleDenom(h, imagenet)
			if mode == "exact" {
				if denom == 1 {
					continue
				}
				denom = 1
			}
			b.Run(fmt.Sprintf("%dx%d/%s/%s", sz[0], sz[1], JPEGDecoder(), mode), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					h, _ := Inspect(data, Limits{})
					if err := TensorAt(data, h, imagenet, denom, out); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/image")
			})
		}
	}
}

// BenchmarkPreprocess times Go's decoder and the resize apart, on the
// committed 512x600 photo.
func BenchmarkPreprocess(b *testing.B) {
	data := read(b, "grace_hopper.jpg")
	out := make([]float32, 3*224*224)
	b.Run("go-decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Decode(data, Limits{})
		}
	})
	img, _, _ := Decode(data, Limits{})
	b.Run("resize+normalize", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Preprocess(img, imagenet, out)
		}
	})
}

// BenchmarkResample times the resize, crop and normalization alone, from
// libjpeg-turbo's RGB (or Go's YCbCr where the build has no libjpeg-turbo).
func BenchmarkResample(b *testing.B) {
	out := make([]float32, 3*224*224)
	for _, sz := range [][2]int{{500, 375}, {512, 600}} {
		data := benchJPEG(b, sz[0], sz[1])
		h, _ := Inspect(data, Limits{})
		s := new(scratch)
		var src *rowReader
		w, ht := h.Width, h.Height
		if JPEGDecoder() == "libjpeg-turbo" {
			var err error
			if src, w, ht, err = decodeTurbo(data, h, 1, s); err != nil {
				b.Fatal(err)
			}
		} else {
			img, _ := DecodeInspected(data, h)
			src = newRowReader(img)
		}
		b.Run(fmt.Sprintf("%dx%d", sz[0], sz[1]), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := resample(src, w, ht, imagenet, out, s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
