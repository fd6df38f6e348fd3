package imageprep

import (
	"os"
	"testing"
)

// BenchmarkPreprocess times the whole pipeline on a 512x600 JPEG photo:
// compare with `scripts/pil_reference.py time proxy/testdata/grace_hopper.jpg`.
func BenchmarkPreprocess(b *testing.B) {
	data, err := os.ReadFile("../testdata/grace_hopper.jpg")
	if err != nil {
		b.Fatal(err)
	}
	out := make([]float32, 3*224*224)
	b.Run("decode", func(b *testing.B) {
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
	b.Run("total", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			img, _, _ := Decode(data, Limits{})
			Preprocess(img, imagenet, out)
		}
		b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/image")
	})
}
