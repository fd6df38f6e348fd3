package turbojpeg_test

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/batchgate/batchgate/proxy/imageprep/turbojpeg"
)

func skipUnavailable(t testing.TB) {
	if !turbojpeg.Available {
		t.Skip("built without libjpeg-turbo")
	}
}

func readFile(t testing.TB, name string) []byte {
	b, err := os.ReadFile("../../testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDecodeMatchesGo: at full scale libjpeg-turbo and Go's decoder agree
// within the rounding of their color conversions and upsampling (Go
// replicates chroma, libjpeg interpolates). PIL's decode, which is
// libjpeg-turbo's exactly, is checked in package imageprep.
func TestDecodeMatchesGo(t *testing.T) {
	skipUnavailable(t)
	for _, tc := range []struct {
		file   string
		format turbojpeg.Format
		cs     turbojpeg.Colorspace
		mean   float64 // largest mean difference allowed
	}{
		{"grace_hopper.jpg", turbojpeg.RGB, turbojpeg.ColorYCbCr, 1},
		{"small_progressive.jpg", turbojpeg.RGB, turbojpeg.ColorYCbCr, 8}, // 48x32: chroma edges everywhere
		{"small_gray.jpg", turbojpeg.Gray, turbojpeg.ColorGray, 0.5},
		{"small_cmyk.jpg", turbojpeg.CMYK, turbojpeg.ColorCMYK, 1},
	} {
		t.Run(tc.file, func(t *testing.T) {
			data := readFile(t, tc.file)
			d := newDecoder(t)
			info, err := d.Header(data)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := jpeg.Decode(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if b := ref.Bounds(); info.Width != b.Dx() || info.Height != b.Dy() || info.Colorspace != tc.cs {
				t.Fatalf("header %+v, want %dx%d colorspace %d", info, b.Dx(), b.Dy(), tc.cs)
			}
			buf := make([]byte, info.Width*info.Height*tc.format.Bytes())
			w, h, err := d.Decode(data, 1, tc.format, buf)
			if err != nil || w != info.Width || h != info.Height {
				t.Fatalf("Decode = %dx%d, %v", w, h, err)
			}
			var sum, n float64
			for y := range h {
				for x := range w {
					var want []uint8
					switch m := ref.(type) {
					case *image.CMYK: // Go un-inverts Adobe's CMYK
						c := m.CMYKAt(x, y)
						want = []uint8{255 - c.C, 255 - c.M, 255 - c.Y, 255 - c.K}
					default:
						c := color.NRGBAModel.Convert(ref.At(x, y)).(color.NRGBA)
						want = []uint8{c.R, c.G, c.B}
					}
					p := buf[(y*w+x)*tc.format.Bytes():]
					for c := range tc.format.Bytes() {
						sum += abs(float64(p[c]) - float64(want[c]))
						n++
					}
				}
			}
			if mean := sum / n; mean > tc.mean {
				t.Errorf("mean |turbo-go| = %.2f, want <= %g", mean, tc.mean)
			}
		})
	}
}

func abs(v float64) float64 { return max(v, -v) }

// TestDecodeScaled: 1/2, 1/4 and 1/8 give the rounded-up sizes and an image
// close to a box-filtered full decode.
func TestDecodeScaled(t *testing.T) {
	skipUnavailable(t)
	data := readFile(t, "grace_hopper.jpg")
	d := newDecoder(t)
	full := make([]byte, 512*600*3)
	if _, _, err := d.Decode(data, 1, turbojpeg.RGB, full); err != nil {
		t.Fatal(err)
	}
	for _, denom := range []int{2, 4, 8} {
		w, h := turbojpeg.ScaledSize(512, 600, denom)
		buf := make([]byte, w*h*3)
		gw, gh, err := d.Decode(data, denom, turbojpeg.RGB, buf)
		if err != nil || gw != w || gh != h {
			t.Fatalf("1/%d: %dx%d, %v; want %dx%d", denom, gw, gh, err, w, h)
		}
		var diff, n float64
		for y := range h - 1 {
			for x := range w - 1 {
				for c := range 3 {
					var box float64
					for dy := range denom {
						for dx := range denom {
							box += float64(full[((y*denom+dy)*512+x*denom+dx)*3+c])
						}
					}
					diff += abs(box/float64(denom*denom) - float64(buf[(y*w+x)*3+c]))
					n++
				}
			}
		}
		if mean := diff / n; mean > 3 {
			t.Errorf("1/%d: mean difference from a box filter %.2f, want <= 3", denom, mean)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	skipUnavailable(t)
	data := readFile(t, "grace_hopper.jpg")
	big := make([]byte, 512*600*3)
	for _, tc := range []struct {
		name  string
		data  []byte
		denom int
		dst   []byte
		warn  bool
	}{
		{"empty", nil, 1, big, false},
		{"not a jpeg", []byte("GIF89a......"), 1, big, false},
		{"truncated", data[:len(data)/2], 1, big, true},
		{"bad scale", data, 3, big, false},
		{"small buffer", data, 1, big[:100], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := newDecoder(t).Decode(tc.data, tc.denom, turbojpeg.RGB, tc.dst)
			if err == nil {
				t.Fatal("no error")
			}
			if got := errors.Is(err, turbojpeg.ErrWarning); got != tc.warn {
				t.Errorf("errors.Is(%v, ErrWarning) = %v, want %v", err, got, tc.warn)
			}
		})
	}
	// Extra bytes before the end-of-image marker: libjpeg warns
	// (JWRN_EXTRANEOUS_DATA) and decodes the whole image, as PIL does.
	extra := append(append(append([]byte(nil), data[:len(data)-2]...), 0, 1, 2, 3), 0xff, 0xd9)
	if w, h, err := newDecoder(t).Decode(extra, 1, turbojpeg.RGB, big); err != nil || w != 512 || h != 600 {
		t.Errorf("extra bytes before EOI: %dx%d, %v; want the image", w, h, err)
	}
}

// TestHeaderTablesOnly: a tables-only datastream (SOI, tables, EOI), which
// libjpeg reads without error, has no image: Header says so rather than
// reporting 0x0 pixels.
func TestHeaderTablesOnly(t *testing.T) {
	skipUnavailable(t)
	data := readFile(t, "grace_hopper.jpg")
	tables := []byte{0xff, 0xd8}
	for _, seg := range segments(t, data) {
		if m := seg[1]; m == 0xdb || m == 0xc4 { // DQT, DHT
			tables = append(tables, seg...)
		}
	}
	tables = append(tables, 0xff, 0xd9)
	if info, err := newDecoder(t).Header(tables); err == nil {
		t.Fatalf("tables only: %+v, no error", info)
	}
}

// segments splits a JPEG's marker segments up to its first scan.
func segments(t *testing.T, data []byte) [][]byte {
	var segs [][]byte
	for i := 2; i+4 <= len(data) && data[i] == 0xff && data[i+1] != 0xda; {
		n := 2 + (int(data[i+2])<<8 | int(data[i+3]))
		segs = append(segs, data[i:i+n])
		i += n
	}
	if len(segs) == 0 {
		t.Fatal("no marker segments")
	}
	return segs
}

// newDecoder is a Decoder closed when t ends.
func newDecoder(t testing.TB) *turbojpeg.Decoder {
	d, err := turbojpeg.NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// FuzzDecode: any bytes give an image or an error, never a crash, at every
// scale, on a new Decoder for each input as package imageprep uses them; an
// image is decoded only from data that ReachesEOI walks to its end marker.
func FuzzDecode(f *testing.F) {
	for _, name := range []string{"grace_hopper.jpg", "small_progressive.jpg", "small_gray.jpg", "small_cmyk.jpg"} {
		f.Add(readFile(f, name))
	}
	if !turbojpeg.Available {
		f.Skip("built without libjpeg-turbo")
	}
	buf := make([]byte, 1<<22)
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := turbojpeg.NewDecoder()
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		info, err := d.Header(data)
		if err != nil || info.Width*info.Height > 1<<20 {
			return
		}
		for _, denom := range []int{1, 8} {
			w, h, err := d.Decode(data, denom, turbojpeg.RGB, buf)
			if err == nil && (w > info.Width || h > info.Height || w < 1 || h < 1) {
				t.Fatalf("1/%d of %dx%d decoded as %dx%d", denom, info.Width, info.Height, w, h)
			}
			// libjpeg reads every image it decodes to its EOI.
			if err == nil && !turbojpeg.ReachesEOI(data) {
				t.Fatalf("1/%d decoded, but ReachesEOI finds no end-of-image marker", denom)
			}
		}
	})
}

// TestErrorsConcurrent: each decode's error is its own. TurboJPEG 2.1 keeps
// the last message in thread-local storage, and reading it in a second cgo
// call, after the goroutine may have moved to another thread, once turned a
// cut file into an image (another thread's harmless warning) and a whole
// one into an error.
func TestErrorsConcurrent(t *testing.T) {
	skipUnavailable(t)
	data := readFile(t, "grace_hopper.jpg")
	extra := append(append(append([]byte(nil), data[:len(data)-2]...), 0, 1, 2, 3), 0xff, 0xd9)
	cases := []struct {
		name string
		data []byte
		want string // in the error; "" for none
	}{
		{"whole", data, ""},
		{"cut", data[:len(data)/2], "Premature end of JPEG file"},
		{"extra bytes", extra, ""},
		{"not a jpeg", []byte("GIF89a......"), "Not a JPEG file"},
	}
	const rounds = 300
	var wg sync.WaitGroup
	errs := make(chan error, len(cases)*rounds)
	for _, tc := range cases {
		wg.Go(func() {
			buf := make([]byte, 512*600*3)
			for range rounds {
				d, err := turbojpeg.NewDecoder()
				if err != nil {
					errs <- err
					return
				}
				_, _, err = d.Decode(tc.data, 1, turbojpeg.RGB, buf)
				d.Close()
				if got := fmt.Sprint(err); (tc.want == "") != (err == nil) || !strings.Contains(got, tc.want) {
					errs <- fmt.Errorf("%s: %v, want %q", tc.name, err, tc.want)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 5 {
			t.Error(err)
		}
	}
	if n > 0 {
		t.Errorf("%d of %d decodes got another's error", n, len(cases)*rounds)
	}
}
