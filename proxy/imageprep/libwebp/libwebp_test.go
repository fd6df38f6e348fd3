package libwebp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image/color"
	"image/png"
	"os"
	"testing"
)

// The files: testdata/*.webp, made by libwebp 1.2.4 through PIL (Debian's
// python3-pil) from a seeded noisy sine texture, Image.save(name,
// quality=50, method=4): tiny_24x24, row_1000x40 and wide_16383x32 (the
// widest WebP there is, for the memory bound); ../testdata/lossy.webp and
// lossy_alpha.webp, 512x384 gradients (package imageprep's).

// vp8Chunk returns the payload of the first "VP8 " chunk of a WebP file.
func vp8Chunk(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	for p := 12; p+8 <= len(data); {
		n := int(binary.LittleEndian.Uint32(data[p+4:]))
		if string(data[p:p+4]) == "VP8 " {
			return data[p+8 : p+8+n]
		}
		p += 8 + n + n&1
	}
	t.Fatalf("%s has no VP8 chunk", name)
	return nil
}

func skipUnavailable(t testing.TB) {
	if !Available {
		if err := DecodeVP8([]byte{1}, 1, 1, 1, 1, make([]byte, 3)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("without libwebp: got %v, want ErrUnavailable", err)
		}
		t.Skip("this build has no libwebp (nolibwebp tag or cgo off)")
	}
}

// pilRGB reads a PNG of PIL's decode of a WebP file,
// Image.open(name).convert("RGB"), as RGB rows.
func pilRGB(t testing.TB, name string) ([]byte, int, int) {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	out := make([]byte, 0, 3*b.Dx()*b.Dy())
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			out = append(out, c.R, c.G, c.B)
		}
	}
	return out, b.Dx(), b.Dy()
}

func meanAbsDiff(a, b []byte) float64 {
	s := 0
	for i := range a {
		d := int(a[i]) - int(b[i])
		s += max(d, -d)
	}
	return float64(s) / float64(len(a))
}

// TestDecodeVP8: at full size the frame decodes to PIL's pixels, bit for
// bit (testdata/*.pil.png: Image.open(file).convert("RGB"), PIL 9.4 with
// the same libwebp 1.2.4; of an image with alpha, PIL's RGB drops it as
// the bare frame has none); the errors are ErrCorrupt.
func TestDecodeVP8(t *testing.T) {
	skipUnavailable(t)
	for _, c := range []struct{ webp, pil string }{
		{"testdata/tiny_24x24.webp", "testdata/tiny_24x24.pil.png"},
		{"../testdata/lossy.webp", "testdata/lossy.pil.png"},
		{"../testdata/lossy_alpha.webp", "testdata/lossy_alpha.pil.png"},
	} {
		t.Run(c.webp, func(t *testing.T) {
			want, w, h := pilRGB(t, c.pil)
			got := make([]byte, 3*w*h)
			if err := DecodeVP8(vp8Chunk(t, c.webp), w, h, w, h, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("differs from PIL's decode: mean difference %.3f levels", meanAbsDiff(got, want))
			}
		})
	}
	frame := vp8Chunk(t, "../testdata/lossy.webp")
	lossless, err := os.ReadFile("../testdata/lossless_photo_z6.webp")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		frame      []byte
		w, h       int
		dst        int
		wantErr    error
		wantString string
	}{
		{"whole", frame, 512, 384, 3 * 512 * 384, nil, ""},
		{"cut in half", frame[:len(frame)/2], 512, 384, 3 * 512 * 384, ErrCorrupt, ""},
		{"header only", frame[:10], 512, 384, 3 * 512 * 384, ErrCorrupt, ""},
		{"another size than the header's", frame, 512, 383, 3 * 512 * 384, ErrCorrupt, "not a lossy 512x383 frame"},
		{"lossless", lossless[20:], 96, 113, 3 * 96 * 113, ErrCorrupt, ""},
		{"not WebP", []byte("not a VP8 frame at all, no"), 512, 384, 3 * 512 * 384, ErrCorrupt, ""},
		{"empty", nil, 512, 384, 3 * 512 * 384, ErrCorrupt, ""},
		{"dst too small", frame, 512, 384, 3*512*384 - 1, nil, "BUG"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := DecodeVP8(tc.frame, tc.w, tc.h, tc.w, tc.h, make([]byte, tc.dst))
			switch {
			case tc.wantString != "" && (err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.wantString))):
				t.Fatalf("got %v, want an error saying %q", err, tc.wantString)
			case tc.wantString == "" && !errors.Is(err, tc.wantErr):
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestDecodeVP8Scaled: scaled down, every pixel is close to the average
// of the full-size pixels it covers (libwebp averages in YUV before the
// conversion, so not exactly).
func TestDecodeVP8Scaled(t *testing.T) {
	skipUnavailable(t)
	const name = "../testdata/lossy.webp"
	frame := vp8Chunk(t, name)
	full := make([]byte, 3*512*384)
	if err := DecodeVP8(frame, 512, 384, 512, 384, full); err != nil {
		t.Fatal(err)
	}
	for _, d := range []int{2, 4, 8} {
		w, h := 512/d, 384/d
		got := make([]byte, 3*w*h)
		if err := DecodeVP8(frame, 512, 384, w, h, got); err != nil {
			t.Fatalf("1/%d: %v", d, err)
		}
		want := make([]byte, 0, len(got))
		for y := range h {
			for x := range w {
				for c := range 3 {
					s := 0
					for yy := y * d; yy < (y+1)*d; yy++ {
						for xx := x * d; xx < (x+1)*d; xx++ {
							s += int(full[3*(yy*512+xx)+c])
						}
					}
					want = append(want, byte((s+d*d/2)/(d*d)))
				}
			}
		}
		if diff := meanAbsDiff(got, want); diff > 2 {
			t.Errorf("1/%d: mean difference from the box average of the full-size pixels %.2f, want at most 2", d, diff)
		}
	}
}

func mustRead(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// BenchmarkDecodeVP8 decodes a 512x384 frame at full size and scaled to
// 1/2 and 1/4 by libwebp's rescaler (`go run ./perf -preprocess` times
// the whole pipeline on photos, against PIL).
func BenchmarkDecodeVP8(b *testing.B) {
	skipUnavailable(b)
	frame := vp8Chunk(b, "../testdata/lossy.webp")
	const w, h = 512, 384
	for _, d := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("1/%d", d), func(b *testing.B) {
			dst := make([]byte, 3*w*h)
			b.ReportAllocs()
			for b.Loop() {
				if err := DecodeVP8(frame, w, h, w/d, h/d, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
