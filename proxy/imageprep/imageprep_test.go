package imageprep

import (
	"bytes"
	"errors"
	"image/png"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/proxy/imageprep/turbojpeg"
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

// TestMatchesPIL compares the tensor of real photos with PIL's
// Resize(256, bilinear) + CenterCrop(224) made by scripts/pil_reference.py
// from the same files (baseline, progressive, gray, CMYK), on the exact path
// (full-size decode) and, for the 512x600 photo, on the DCT-scaled path
// against PIL with draft() (decoded at 1/2). With libjpeg-turbo, the
// library PIL decodes with, the bytes are the same: the tensor is PIL +
// torchvision's exactly. Go's decoder upsamples chroma differently: close,
// not equal.
func TestMatchesPIL(t *testing.T) {
	for _, tc := range []struct {
		image, ref string
		denom      int // 0: as Tensor picks
	}{
		{"grace_hopper", "grace_hopper_ref224", 1},
		{"grace_hopper", "grace_hopper_draft_ref224", 0},
		{"small_progressive", "small_progressive_ref224", 0},
		{"small_gray", "small_gray_ref224", 0},
		{"small_cmyk", "small_cmyk_ref224", 0},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			data := read(t, tc.image+".jpg")
			h, err := Inspect(data, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			got := make([]float32, 3*224*224)
			if tc.denom == 0 {
				err = Tensor(data, h, imagenet, got)
			} else {
				err = TensorAt(data, h, imagenet, tc.denom, got)
			}
			if err != nil {
				t.Fatal(err)
			}
			ref := tc.ref
			if JPEGDecoder() == "go" && strings.Contains(ref, "draft") {
				ref = tc.image + "_ref224" // no DCT scaling without libjpeg-turbo
			}
			mean, worst := diffToRef(t, got, ref+".png")
			t.Logf("%s decoder: difference to PIL after normalization: mean %.4f, max %.4f", JPEGDecoder(), mean, worst)
			switch {
			case JPEGDecoder() == "libjpeg-turbo" && worst != 0:
				t.Errorf("libjpeg-turbo: difference to PIL mean %.5f, max %.5f; want exactly 0", mean, worst)
			case mean > 0.1 || worst > 1.5:
				// Go replicates chroma where libjpeg interpolates: a
				// few levels of 255 on average (most on the 48x32 image,
				// magnified 8 times), more on sharp color edges.
				t.Errorf("Go decoder: difference to PIL mean %.4f (want <= 0.1), max %.4f (want <= 1.5)", mean, worst)
			}
		})
	}
	// Preprocess on an image decoded by Go: the same resize, so only the
	// decoders differ.
	img, _, err := Decode(read(t, "grace_hopper.jpg"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, 3*224*224)
	if err := Preprocess(img, imagenet, got); err != nil {
		t.Fatal(err)
	}
	if mean, worst := diffToRef(t, got, "grace_hopper_ref224.png"); mean > 0.02 || worst > 0.25 {
		t.Errorf("Go decoder + Preprocess: difference to PIL mean %.4f (want <= 0.02), max %.4f (want <= 0.25)", mean, worst)
	}
}

// diffToRef returns the mean and largest absolute difference between a
// tensor and an 8-bit reference crop, normalized as torchvision does.
func diffToRef(t *testing.T, got []float32, refName string) (mean, worst float64) {
	t.Helper()
	ref, err := png.Decode(bytes.NewReader(read(t, refName)))
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for y := range 224 {
		for x := range 224 {
			r, g, b, _ := ref.At(x, y).RGBA()
			for c, v := range []uint32{r >> 8, g >> 8, b >> 8} {
				want := (float32(v)/255 - imagenet.Mean[c]) / imagenet.Std[c]
				d := math.Abs(float64(got[c*224*224+y*224+x] - want))
				sum += d
				worst = max(worst, d)
			}
		}
	}
	return sum / (3 * 224 * 224), worst
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

// TestFullSizeJPEG: Limits.FullSizeJPEG turns the DCT-domain scaling off,
// in the scale, the memory estimate and the tensor.
func TestFullSizeJPEG(t *testing.T) {
	data := read(t, "grace_hopper.jpg") // 512x600: 1/2 when scaling is on
	scaled, _ := Inspect(data, Limits{})
	full, _ := Inspect(data, Limits{FullSizeJPEG: true})
	want := 2
	if JPEGDecoder() == "go" {
		want = 1
	}
	if got := ScaleDenom(scaled, imagenet); got != want {
		t.Errorf("ScaleDenom = %d, want %d", got, want)
	}
	if got := ScaleDenom(full, imagenet); got != 1 {
		t.Errorf("ScaleDenom with FullSizeJPEG = %d, want 1", got)
	}
	if want == 2 && full.MemoryBytes(imagenet) <= scaled.MemoryBytes(imagenet) {
		t.Errorf("full-size estimate %d not above the scaled one %d", full.MemoryBytes(imagenet), scaled.MemoryBytes(imagenet))
	}
	got := make([]float32, 3*224*224)
	if err := Tensor(data, full, imagenet, got); err != nil {
		t.Fatal(err)
	}
	if mean, worst := diffToRef(t, got, "grace_hopper_ref224.png"); JPEGDecoder() != "go" && worst != 0 {
		t.Errorf("FullSizeJPEG: difference to PIL without draft mean %.4f, max %.4f; want 0", mean, worst)
	}
}

// TestScaleDenom is the draft() rule on the sizes that matter.
func TestScaleDenom(t *testing.T) {
	if JPEGDecoder() == "go" {
		t.Skip("no DCT scaling without libjpeg-turbo")
	}
	for _, tc := range []struct{ w, h, want int }{
		{500, 375, 1}, {511, 511, 1}, {512, 512, 2}, {768, 576, 2}, {1023, 1024, 2}, {1024, 1024, 4},
		{1920, 1080, 4}, {2047, 4000, 4}, {2048, 2048, 8}, {4032, 3024, 8}, {3024, 4032, 8}, {20000, 300, 1},
	} {
		h := Header{Format: "jpeg", Width: tc.w, Height: tc.h, components: 3}
		if got := ScaleDenom(h, imagenet); got != tc.want {
			t.Errorf("%dx%d: 1/%d, want 1/%d", tc.w, tc.h, got, tc.want)
		}
		if h.Format = "png"; ScaleDenom(h, imagenet) != 1 {
			t.Errorf("%dx%d PNG: scaled", tc.w, tc.h)
		}
	}
}

// TestImagesIndependent: an image's tensor does not depend on the images
// decoded before it. Two ways it once did, with libjpeg-turbo handles
// shared through a pool:
//   - an upload cut short inside its header left the handle half-way
//     through that header, and every later JPEG on it failed as corrupt;
//   - libjpeg keeps the tables it read, so an image without its own
//     quantization tables decoded with the previous image's instead of
//     failing as it does alone (and in PIL).
func TestImagesIndependent(t *testing.T) {
	tensor := func(data []byte) ([]float32, error) {
		h, err := Inspect(data, Limits{})
		if err != nil {
			return nil, err
		}
		out := make([]float32, 3*224*224)
		return out, Tensor(data, h, imagenet, out)
	}
	// Every cut of a small photo between its frame header and a little past
	// its first scan's start, the part libjpeg reads as the header.
	good := read(t, "small_progressive.jpg")
	want, err := tensor(good)
	if err != nil {
		t.Fatal(err)
	}
	sos := bytes.Index(good, []byte{0xff, 0xda})
	tried := 0
	for n := bytes.Index(good, []byte{0xff, 0xc2}); n < sos+32; n++ {
		if _, err := Inspect(good[:n], Limits{}); err != nil {
			continue
		}
		tried++
		if _, err := tensor(good[:n]); err == nil {
			t.Fatalf("the first %d bytes: no error", n)
		}
		got, err := tensor(good)
		if err != nil {
			t.Fatalf("after the first %d bytes, the whole image fails: %v", n, err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("after the first %d bytes, the whole image gives another tensor", n)
		}
	}
	if tried < 50 {
		t.Fatalf("only %d cuts passed Inspect", tried)
	}

	// A photo without its DQT segments.
	good = read(t, "grace_hopper.jpg")
	noDQT := withoutDQT(good)
	alone, aloneErr := tensor(noDQT)
	if turbojpeg.Available && !errors.Is(aloneErr, ErrCorrupt) {
		t.Fatalf("no DQT, alone: %v, want ErrCorrupt as in PIL", aloneErr)
	}
	for range 3 {
		if _, err := tensor(good); err != nil {
			t.Fatal(err)
		}
		got, err := tensor(noDQT)
		if (err == nil) != (aloneErr == nil) || !slices.Equal(got, alone) {
			t.Fatalf("no DQT, after the whole photo: %v; alone: %v", err, aloneErr)
		}
	}
}
