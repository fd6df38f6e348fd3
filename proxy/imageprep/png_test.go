package imageprep

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"image"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
)

// noisyPixels returns w*h*bpp bytes of a gradient with noise: every filter
// type's predictor then differs from the others'.
func noisyPixels(w, h, bpp int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	pix := make([]byte, w*h*bpp)
	for i := range pix {
		x, y := i/bpp%w, i/bpp/w
		pix[i] = uint8(x*3 + y*2 + i%bpp*40 + r.IntN(24))
	}
	return pix
}

// pngChunk appends one chunk, with its CRC.
func pngChunk(b []byte, typ string, data []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c := append([]byte(typ), data...)
	return binary.BigEndian.AppendUint32(append(b, c...), crc32.ChecksumIEEE(c))
}

// filterRow applies PNG filter ft to row cur (prev: the row above, nil for
// the first) and returns the filtered bytes, as an encoder writes them.
func filterRow(ft byte, cur, prev []byte, bpp int) []byte {
	out := make([]byte, len(cur))
	at := func(s []byte, i int) int {
		if s == nil || i < 0 {
			return 0
		}
		return int(s[i])
	}
	for i := range cur {
		a, b, c := at(cur, i-bpp), at(prev, i), at(prev, i-bpp)
		var pred int
		switch ft {
		case 1:
			pred = a
		case 2:
			pred = b
		case 3:
			pred = (a + b) / 2
		case 4:
			p := a + b - c
			abs := func(v int) int { return max(v, -v) }
			pa, pb, pc := abs(p-a), abs(p-b), abs(p-c)
			switch {
			case pa <= pb && pa <= pc:
				pred = a
			case pb <= pc:
				pred = b
			default:
				pred = c
			}
		}
		out[i] = cur[i] - uint8(pred)
	}
	return out
}

// pngSpec describes a PNG for pngFile.
type pngSpec struct {
	w, h    int
	ctype   byte   // 0 gray, 2 RGB, 6 RGBA
	filters []byte // filter type of row y: filters[y%len]
	idats   int    // IDAT chunks the data is split into (1 when 0)
	before  []string
	after   []string // ancillary chunks before and after the IDATs
}

// pngFile writes s with the pixels pix, filtering each row itself (Go's
// encoder picks filters on its own), and returns the file.
func pngFile(s pngSpec, pix []byte) []byte {
	bpp := map[byte]int{0: 1, 2: 3, 6: 4}[s.ctype]
	var raw bytes.Buffer
	var prev []byte
	for y := range s.h {
		cur := pix[y*s.w*bpp : (y+1)*s.w*bpp]
		ft := s.filters[y%len(s.filters)]
		raw.WriteByte(ft)
		raw.Write(filterRow(ft, cur, prev, bpp))
		prev = cur
	}
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(raw.Bytes())
	zw.Close()
	b := pngHeader(uint32(s.w), uint32(s.h), 8, s.ctype, 0)
	for _, t := range s.before {
		b = pngChunk(b, t, []byte("batchgate"))
	}
	data, parts := z.Bytes(), max(s.idats, 1)
	for i := range parts {
		b = pngChunk(b, "IDAT", data[i*len(data)/parts:(i+1)*len(data)/parts])
	}
	for _, t := range s.after {
		b = pngChunk(b, t, []byte("batchgate"))
	}
	return pngChunk(b, "IEND", nil)
}

// pngRowsEqual decodes data with the fast path and with image/png and
// reports whether the fast path took it and, if it did, whether every row
// is the same.
func pngRowsEqual(t testing.TB, data []byte) (taken bool) {
	t.Helper()
	h, err := Inspect(data, Limits{MaxPixelsPerByte: -1})
	if err != nil {
		return false
	}
	s := new(scratch)
	fast, ok := decodePNGFast(data, h, s)
	if !ok {
		return false
	}
	img, err := DecodeInspected(data, h)
	if err != nil {
		t.Fatalf("the fast path decoded a %dx%d PNG that image/png refuses: %v", h.Width, h.Height, err)
	}
	ref := newRowReader(img)
	if fast.channels() != ref.channels() {
		t.Fatalf("channels: fast %d, image/png %d", fast.channels(), ref.channels())
	}
	var fb, rb []byte
	for y := range h.Height {
		got, want := fast.row(y, 0, h.Width, &fb), ref.row(y, 0, h.Width, &rb)
		if !bytes.Equal(got, want) {
			t.Fatalf("row %d differs from image/png's", y)
		}
	}
	return true
}

func TestPNGFastMatchesImagePNG(t *testing.T) {
	const w, h = 61, 23 // odd sizes: no row is a round number of bytes
	all := []byte{0, 1, 2, 3, 4}
	tests := []struct {
		name string
		spec pngSpec
	}{
		{"gray, every filter", pngSpec{w: w, h: h, ctype: 0, filters: all}},
		{"RGB, every filter", pngSpec{w: w, h: h, ctype: 2, filters: all}},
		{"RGBA, every filter", pngSpec{w: w, h: h, ctype: 6, filters: all}},
		{"RGB, Paeth on every row (the first too)", pngSpec{w: w, h: h, ctype: 2, filters: []byte{4}}},
		{"RGB, Average on every row (the first too)", pngSpec{w: w, h: h, ctype: 2, filters: []byte{3}}},
		{"RGB, Up on every row (the first too)", pngSpec{w: w, h: h, ctype: 2, filters: []byte{2}}},
		{"RGB, one pixel wide", pngSpec{w: 1, h: h, ctype: 2, filters: all}},
		{"RGBA, one row", pngSpec{w: w, h: 1, ctype: 6, filters: []byte{4}}},
		{"RGB, data in 7 IDAT chunks", pngSpec{w: w, h: h, ctype: 2, filters: all, idats: 7}},
		{"RGB, ancillary chunks before and after the data", pngSpec{w: w, h: h, ctype: 2, filters: all,
			before: []string{"gAMA", "tEXt"}, after: []string{"tIME", "zzzz"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bpp := map[byte]int{0: 1, 2: 3, 6: 4}[tc.spec.ctype]
			data := pngFile(tc.spec, noisyPixels(tc.spec.w, tc.spec.h, bpp, uint64(len(tc.name))))
			if !pngRowsEqual(t, data) {
				t.Fatal("the fast path did not take the file")
			}
		})
	}
	// Go's own encoder (its filter choices, its compression), and
	// through the whole pipeline: the same tensor both ways.
	for _, m := range []image.Image{gradient(300, 200), toGray(gradient(300, 200)), withAlpha(gradient(300, 200))} {
		data := encodePNG(t, m)
		if !pngRowsEqual(t, data) {
			t.Fatalf("%T: the fast path did not take image/png's own file", m)
		}
		hd, err := Inspect(data, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		p := Params{ResizeShorter: 64, Height: 56, Width: 56, Mean: [3]float32{0.5, 0.5, 0.5}, Std: [3]float32{0.2, 0.2, 0.2}}
		fast, ref := make([]float32, 3*56*56), make([]float32, 3*56*56)
		if err := tensorAt(data, hd, p, 1, fast, true); err != nil {
			t.Fatal(err)
		}
		if err := tensorAt(data, hd, p, 1, ref, false); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(fast, ref) {
			t.Fatalf("%T: the tensors differ", m)
		}
	}
}

// TestPNGFastDeclines: the files the fast path must leave to image/png,
// whose verdict is then Tensor's. wantOK is image/png's, as its source
// reads (a test of this test's files).
func TestPNGFastDeclines(t *testing.T) {
	const w, h = 40, 30
	good := pngSpec{w: w, h: h, ctype: 2, filters: []byte{0, 1, 2, 3, 4}, idats: 3}
	pix := noisyPixels(w, h, 3, 1)
	base := pngFile(good, pix)
	idat := bytes.Index(base, []byte("IDAT")) - 4
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(base)) }
	withSpec := func(f func(*pngSpec)) []byte {
		s := good
		f(&s)
		return pngFile(s, pix)
	}
	tests := []struct {
		name   string
		data   []byte
		wantOK bool
	}{
		{"16-bit", encodePNG(t, image.NewNRGBA64(image.Rect(0, 0, w, h))), true},
		{"paletted", encodePNG(t, paletted(w, h, 16)), true},
		{"interlaced", zeroPNG(w, h, 2, true), true},
		{"tRNS before the data", withSpec(func(s *pngSpec) { s.before = []string{"tRNS"} }), false},
		{"PLTE in an RGB file (optional there)", withSpec(func(s *pngSpec) { s.before = []string{"PLTE"} }), true},
		{"an unknown critical chunk", withSpec(func(s *pngSpec) { s.before = []string{"ZZZZ"} }), true},
		{"IDAT chunks not in one run", mutate(func(b []byte) []byte {
			// An ancillary chunk between the first IDAT and the others.
			n := int(binary.BigEndian.Uint32(b[idat:]))
			end := idat + 12 + n
			return append(pngChunk(b[:end:end], "tEXt", []byte("x")), b[end:]...)
		}), false},
		{"bad CRC on an ancillary chunk", mutate(func(b []byte) []byte {
			i := bytes.Index(b, []byte("IEND")) + 4 // IEND's CRC
			b[i] ^= 1
			return b
		}), false},
		{"bad filter type 5", mutate(func(b []byte) []byte {
			raw := pngRaw(t, b)
			raw[1+3*w] = 5 // the second row's filter byte
			return rewriteIDAT(b, raw)
		}), false},
		{"rows short of the image", mutate(func(b []byte) []byte {
			raw := pngRaw(t, b)
			return rewriteIDAT(b, raw[:len(raw)-1])
		}), false},
		{"rows beyond the image", mutate(func(b []byte) []byte {
			raw := pngRaw(t, b)
			return rewriteIDAT(b, append(raw, 0))
		}), false},
		{"Adler-32 mismatch", mutate(func(b []byte) []byte {
			raw := pngRaw(t, b)
			z := deflateBytes(raw)
			z[len(z)-1] ^= 1
			return replaceIDAT(b, z)
		}), false},
		{"bytes after the zlib stream", mutate(func(b []byte) []byte {
			// image/png's zlib reader reads ahead, so it never
			// sees them; the fast path declines, to be safe.
			return replaceIDAT(b, append(deflateBytes(pngRaw(t, b)), 0, 0, 0))
		}), true},
		{"no IEND", mutate(func(b []byte) []byte { return b[:bytes.Index(b, []byte("IEND"))-4] }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if pngRowsEqual(t, tc.data) {
				t.Fatal("the fast path took the file")
			}
			h, err := Inspect(tc.data, Limits{MaxPixelsPerByte: -1})
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			dst := make([]float32, 3*16*16)
			p := Params{ResizeShorter: 20, Height: 16, Width: 16, Std: [3]float32{1, 1, 1}}
			_, refErr := DecodeInspected(tc.data, h)
			if refOK := refErr == nil; refOK != tc.wantOK {
				t.Fatalf("image/png: error %v, want ok %v (the test's file is not what it says)", refErr, tc.wantOK)
			}
			if err := Tensor(tc.data, h, p, dst); (err == nil) != tc.wantOK {
				t.Fatalf("Tensor: error %v; want image/png's verdict (ok %v)", err, tc.wantOK)
			}
		})
	}
}

// pngRaw returns the inflated image data of a file from pngFile.
func pngRaw(t testing.TB, file []byte) []byte {
	var z []byte
	for p := 8; p+12 <= len(file); {
		n := int(binary.BigEndian.Uint32(file[p:]))
		if string(file[p+4:p+8]) == "IDAT" {
			z = append(z, file[p+8:p+8+n]...)
		}
		p += 12 + n
	}
	zr, err := zlib.NewReader(bytes.NewReader(z))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	out.ReadFrom(zr)
	return out.Bytes()
}

func deflateBytes(raw []byte) []byte {
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(raw)
	zw.Close()
	return z.Bytes()
}

func rewriteIDAT(file, raw []byte) []byte { return replaceIDAT(file, deflateBytes(raw)) }

// replaceIDAT returns file with its IDAT chunks replaced by one holding z.
func replaceIDAT(file, z []byte) []byte {
	var out []byte
	done := false
	for p := 8; p+12 <= len(file); {
		n := int(binary.BigEndian.Uint32(file[p:]))
		typ := string(file[p+4 : p+8])
		switch {
		case typ != "IDAT":
			out = append(out, file[p:p+12+n]...)
		case !done:
			out, done = pngChunk(out, "IDAT", z), true
		}
		p += 12 + n
	}
	return append([]byte(pngSig), out...)
}

// TestPNGFastEstimate: the fast path allocates no more than the header's
// estimate, which MemoryBytes reserves.
func TestPNGFastEstimate(t *testing.T) {
	const w, h = 640, 480
	for _, ctype := range []byte{0, 2, 6} {
		bpp := map[byte]int{0: 1, 2: 3, 6: 4}[ctype]
		data := pngFile(pngSpec{w: w, h: h, ctype: ctype, filters: []byte{4}, idats: 20}, noisyPixels(w, h, bpp, 3))
		hd, err := Inspect(data, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if !hd.fastPNG {
			t.Fatalf("ctype %d: Inspect did not mark the file for the fast path", ctype)
		}
		s := new(scratch)
		var ok bool
		got := testenv.AllocatedBy(func() { _, ok = decodePNGFast(data, hd, s) })
		if !ok {
			t.Fatalf("ctype %d: the fast path did not take the file", ctype)
		}
		if int64(got) > hd.fastBytes || hd.fastBytes > hd.MemoryBytes(Params{ResizeShorter: 256, Height: 224, Width: 224}) {
			t.Errorf("ctype %d: allocated %d bytes; estimate %d, reserved %d", ctype, got, hd.fastBytes,
				hd.MemoryBytes(Params{ResizeShorter: 256, Height: 224, Width: 224}))
		}
	}
}

// FuzzPNG: whatever the fast path takes, image/png decodes to the same rows.
func FuzzPNG(f *testing.F) {
	const w, h = 13, 7
	for i, ctype := range []byte{0, 2, 6} {
		bpp := map[byte]int{0: 1, 2: 3, 6: 4}[ctype]
		f.Add(pngFile(pngSpec{w: w, h: h, ctype: ctype, filters: []byte{0, 1, 2, 3, 4}, idats: i + 1,
			after: []string{"tEXt"}}, noisyPixels(w, h, bpp, uint64(i))))
	}
	f.Add(encodePNG(f, withAlpha(gradient(20, 9))))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		pngRowsEqual(t, data)
	})
}

// BenchmarkPNG: the fast path against image/png on a 1600x1200 photo-like
// RGB PNG (Paeth rows, as PIL writes them), through the whole pipeline.
func BenchmarkPNG(b *testing.B) {
	const w, h = 1600, 1200
	data := pngFile(pngSpec{w: w, h: h, ctype: 2, filters: []byte{4, 1, 4, 2}, idats: 50}, noisyPixels(w, h, 3, 9))
	hd, err := Inspect(data, Limits{})
	if err != nil {
		b.Fatal(err)
	}
	p := Params{ResizeShorter: 256, Height: 224, Width: 224, Std: [3]float32{1, 1, 1}}
	dst := make([]float32, 3*224*224)
	for _, fast := range []bool{true, false} {
		name := map[bool]string{true: "fast", false: "image-png"}[fast]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := tensorAt(data, hd, p, 1, dst, fast); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
