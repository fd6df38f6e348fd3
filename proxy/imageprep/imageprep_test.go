package imageprep

import (
	"bytes"
	"errors"
	"image/png"
	"math"
	"os"
	"testing"
)

var imagenet = Params{ResizeShorter: 256, Height: 224, Width: 224,
	Mean: [3]float32{0.485, 0.456, 0.406}, Std: [3]float32{0.229, 0.224, 0.225}}

func read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMatchesPIL compares the output on a real photo with PIL's
// Resize(256, bilinear) + CenterCrop(224), made by scripts/pil_reference.py.
func TestMatchesPIL(t *testing.T) {
	img, format, err := Decode(read(t, "grace_hopper.jpg"), Limits{})
	if err != nil || format != "jpeg" {
		t.Fatalf("Decode = %q, %v", format, err)
	}
	got := make([]float32, 3*224*224)
	if err := Preprocess(img, imagenet, got); err != nil {
		t.Fatal(err)
	}
	ref, err := png.Decode(bytes.NewReader(read(t, "grace_hopper_ref224.png")))
	if err != nil {
		t.Fatal(err)
	}
	var sum, worst float64
	for y := range 224 {
		for x := range 224 {
			r, g, b, _ := ref.At(x, y).RGBA()
			for c, v := range []uint32{r >> 8, g >> 8, b >> 8} {
				want := (float64(v)/255 - float64(imagenet.Mean[c])) / float64(imagenet.Std[c])
				d := math.Abs(float64(got[c*224*224+y*224+x]) - want)
				sum += d
				worst = max(worst, d)
			}
		}
	}
	mean := sum / (3 * 224 * 224)
	t.Logf("difference to PIL after normalization: mean %.4f, max %.4f", mean, worst)
	// PIL rounds to 8 bits after each pass and decodes JPEG with libjpeg:
	// about one level of 255 on average, a few at worst.
	if mean > 0.02 || worst > 0.25 {
		t.Errorf("difference to PIL: mean %.4f (want <= 0.02), max %.4f (want <= 0.25)", mean, worst)
	}
}

func TestFormats(t *testing.T) {
	for _, tc := range []struct{ file, format string }{
		{"grace_hopper.jpg", "jpeg"}, {"small.png", "png"}, {"small.gif", "gif"},
		{"small.webp", "webp"}, {"small_alpha.png", "png"},
	} {
		img, format, err := Decode(read(t, tc.file), Limits{})
		if err != nil || format != tc.format {
			t.Errorf("Decode(%s) = %q, %v; want %q", tc.file, format, err, tc.format)
			continue
		}
		out := make([]float32, 3*224*224)
		if err := Preprocess(img, imagenet, out); err != nil {
			t.Errorf("Preprocess(%s): %v", tc.file, err)
		}
		for i, v := range out {
			if math.IsNaN(float64(v)) || v < -2.2 || v > 2.7 {
				t.Fatalf("%s: value %d = %g, outside the normalized range", tc.file, i, v)
			}
		}
	}
	// The same picture in PNG and GIF gives nearly the same tensor; the
	// alpha channel is dropped, not composited (PIL's convert("RGB")).
	a, b, c := prep(t, "small.png"), prep(t, "small_alpha.png"), prep(t, "small.gif")
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("value %d: %g with alpha, %g without", i, b[i], a[i])
		}
	}
	if d := meanDiff(a, c); d > 0.1 {
		t.Errorf("GIF (256 colours) differs from PNG by %.3f on average", d)
	}
}

func prep(t *testing.T, file string) []float32 {
	img, _, err := Decode(read(t, file), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float32, 3*224*224)
	Preprocess(img, imagenet, out)
	return out
}

func meanDiff(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += math.Abs(float64(a[i] - b[i]))
	}
	return s / float64(len(a))
}

func TestDecodeErrors(t *testing.T) {
	jpeg := read(t, "grace_hopper.jpg")
	for _, tc := range []struct {
		name string
		data []byte
		lim  Limits
		want error
	}{
		{"text", []byte("hello, this is not an image"), Limits{}, ErrFormat},
		{"empty", nil, Limits{}, ErrFormat},
		{"bmp", append([]byte("BM"), make([]byte, 60)...), Limits{}, ErrFormat},
		{"truncated jpeg", jpeg[:len(jpeg)/2], Limits{}, ErrCorrupt},
		{"corrupt header", jpeg[:20], Limits{}, ErrCorrupt},
		{"over the pixel budget", jpeg, Limits{MaxPixels: 512*600 - 1}, ErrTooLarge},
		{"decompression bomb header", pngHeader(100000, 100000, 8, 0, 0), Limits{}, ErrTooLarge},
	} {
		if _, _, err := Decode(tc.data, tc.lim); !errors.Is(err, tc.want) {
			t.Errorf("%s: Decode = %v, want %v", tc.name, err, tc.want)
		}
	}
}
