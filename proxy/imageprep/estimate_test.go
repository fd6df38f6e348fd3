package imageprep

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"os"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestEstimateCoversDecode decodes generated images of every kind Go's
// decoders meet and checks what they allocate (TotalAlloc: every byte,
// garbage included, so never less than the peak) against the estimate
// Inspect makes from the header: never above it, and never below half of
// it less 256 KiB (the fixed allowance), so a wrong estimate fails either
// way. Before this test a
// lossless WebP in a VP8X container was estimated as lossy (2 bytes a
// pixel; it takes 4), and JPEGs Go converts to RGBA, GIF interlacing and
// PNG rows were not counted.
//
// JPEG is measured with Go's decoder in every build: it is the one that
// runs without libjpeg-turbo, whose own estimate (turboBytes) is checked
// against RSS in docs/memory.md.
func TestEstimateCoversDecode(t *testing.T) {
	const w, h = 640, 480
	lossyAlpha := readLocal(t, "lossy_alpha.webp")
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"jpeg baseline 4:2:0", encodeJPEG(t, gradient(w, h))},
		{"jpeg gray", encodeJPEG(t, toGray(gradient(w, h)))},
		{"jpeg named RGB (converted to RGBA)", jpegRGBNames(encodeJPEG(t, gradient(w, h)))},
		{"jpeg progressive gray", progressiveJPEG(w, h, 1)},
		{"jpeg progressive 4:2:0", progressiveJPEG(w, h, 3)},
		{"jpeg CMYK (testdata)", read(t, "small_cmyk.jpg")},
		{"png RGB", encodePNG(t, gradient(w, h))},
		{"png RGBA", encodePNG(t, withAlpha(gradient(w, h)))},
		{"png gray", encodePNG(t, toGray(gradient(w, h)))},
		{"png gray 16-bit", encodePNG(t, image.NewGray16(image.Rect(0, 0, w, h)))},
		{"png RGBA 16-bit", encodePNG(t, image.NewNRGBA64(image.Rect(0, 0, w, h)))},
		{"png paletted 1-bit", encodePNG(t, paletted(w, h, 2))},
		{"png paletted 8-bit", encodePNG(t, paletted(w, h, 256))},
		{"png interlaced RGB", zeroPNG(w, h, 2, true)},
		{"gif", encodeGIF(t, paletted(w, h, 256), false)},
		{"gif interlaced", encodeGIF(t, paletted(w, h, 256), true)},
		{"gif animated (first frame decoded)", animatedGIF(t, w, h, w, h)},
		{"gif first frame smaller than the screen", animatedGIF(t, w, h, w/2, h/2)},
		{"webp lossless", riffWebP(webpChunk("VP8L", vp8lFlat(w, h, 0, false)))},
		{"webp lossless in VP8X", riffWebP(vp8xChunk(0, w, h), webpChunk("VP8L", vp8lFlat(w, h, 0, false)))},
		{"webp lossless in VP8X with alpha", riffWebP(vp8xChunk(0x10, w, h), webpChunk("VP8L", vp8lFlat(w, h, 0, false)))},
		{"webp lossless 2 colors (indexed, 8 a byte)", riffWebP(webpChunk("VP8L", vp8lFlat(w, h, 2, false)))},
		{"webp lossless 16 colors (indexed, 2 a byte)", riffWebP(webpChunk("VP8L", vp8lFlat(w, h, 16, false)))},
		{"webp lossless predicted", riffWebP(webpChunk("VP8L", vp8lFlat(w, h, 0, true)))},
		{"webp lossless 16 colors predicted in VP8X", riffWebP(vp8xChunk(0, w, h), webpChunk("VP8L", vp8lFlat(w, h, 16, true)))},
		{"webp lossless photo (testdata, cwebp -z 9)", readLocal(t, "lossless_photo_z9.webp")},
		{"webp lossless, 200 groups of the largest codes (crafted)", riffWebP(webpChunk("VP8L", vp8lBomb(w, h, vp8lSeq(200), 11)))},
		{"webp lossless, groups 0 and 1500 used of 1501 (crafted)", riffWebP(webpChunk("VP8L", vp8lBomb(w, h, []int{0, 1500}, 11)))},
		{"webp lossless, 100 groups, failing once they are built (crafted)", riffWebP(webpChunk("VP8L", vp8lBomb(w, h, vp8lSeq(100), 0)))},
		{"webp lossy (testdata)", readLocal(t, "lossy.webp")},
		{"webp lossy, lossless alpha (testdata, cwebp)", readLocal(t, "lossy_lossless_alpha.webp")},
		{"webp lossy, lossless alpha of 200 groups (crafted)", riffWebP(vp8xChunk(0x10, 512, 384),
			webpChunk("ALPH", append([]byte{1}, vp8lBomb(512, 384, vp8lSeq(200), 11)[5:]...)), readLocal(t, "lossy.webp")[12:])},
		{"webp lossy, lossless alpha (testdata)", lossyAlpha},
		{"webp lossy, raw alpha", rawAlpha(t, lossyAlpha)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hd, err := Inspect(tc.data, Limits{MaxPixelsPerByte: -1}) // the lossless WebPs are flat
			if err != nil {
				t.Fatal(err)
			}
			var derr error
			got := testenv.AllocatedBy(func() {
				var img image.Image
				if img, derr = DecodeInspected(tc.data, hd); derr == nil {
					newRowReader(img) // the conversion, where one is needed
				}
			})
			want := hd.goDecodeBytes()
			px := float64(hd.Width * hd.Height)
			t.Logf("%dx%d: allocated %d bytes (%.2f a pixel), estimate %d (%.2f); decode error: %v",
				hd.Width, hd.Height, got, float64(got)/px, want, float64(want)/px, derr)
			if int64(got) > want {
				t.Errorf("decoding allocated %d bytes, above the estimate %d", got, want)
			}
			if want > 2*int64(got)+256<<10 {
				t.Errorf("estimate %d bytes, more than twice the %d allocated plus 256 KiB", want, got)
			}
		})
	}
}

// TestPixelsPerByte: the 46-byte lossless WebP of issue 22 (6000x6000 in a
// VP8X chunk, about 140 MiB and seconds of CPU to decode) is refused from
// its header, with or without the VP8X chunk, and so is anything over the
// cap once over SmallImagePixels; flat 8-bit PNGs, the most compressed
// images the cap must never refuse, pass, and Limits change the cap.
//
// The default's measurements (pixels a byte; libwebp 1.2.4, zlib and PIL's
// GIF encoder through Debian's python3-pil): a 512x600 photo 1 (PNG,
// lossless WebP) to 7 (lossy WebP), as 2048x2400 up to 24 (lossy WebP; JPEG
// q90 8); a 1920x1080 text screenshot 15 (PNG) to 31 (lossless WebP); a
// near-blank 3840x2160 one 254 (PNG), 548 (gray PNG), 533 (GIF), 246
// (lossy WebP), 7017 (lossless WebP: refused by default); one colour at
// 4000x3000: 284 (RGB PNG), 654 (gray PNG), 64 to 254 (JPEG), 559 (lossy
// WebP), 1148 (GIF), 1755 (1-bit PNG), 22727 (lossless WebP). Go's zlib
// at its best packs the flat gray PNG below in 1002 (1022 at 12 MP).
func TestPixelsPerByte(t *testing.T) {
	bomb := riffWebP(vp8xChunk(0, 6000, 6000), webpChunk("VP8L", vp8lFlat(6000, 6000, 0, false)))
	if len(bomb) != 46 {
		t.Fatalf("the VP8X bomb takes %d bytes, want 46 as in the issue", len(bomb))
	}
	flatRGB := zeroPNG(2000, 1500, 2, false)
	for _, tc := range []struct {
		name string
		data []byte
		lim  Limits
		want error
	}{
		{"issue 22: 6000x6000 lossless in VP8X, 46 bytes", bomb, Limits{}, ErrPixelsPerByte},
		{"6000x6000 lossless, 28 bytes", riffWebP(webpChunk("VP8L", vp8lFlat(6000, 6000, 0, false))), Limits{}, ErrPixelsPerByte},
		{"1024x1024 lossless, any size", riffWebP(webpChunk("VP8L", vp8lFlat(1024, 1024, 0, false))), Limits{}, nil},
		{"1025x1024 lossless, 28 bytes", riffWebP(webpChunk("VP8L", vp8lFlat(1025, 1024, 0, false))), Limits{}, ErrPixelsPerByte},
		{"bomb, cap off", bomb, Limits{MaxPixelsPerByte: -1}, nil},
		{"bomb, cap raised", bomb, Limits{MaxPixelsPerByte: 1 << 20}, nil},
		{"flat RGB PNG, 3 MP", flatRGB, Limits{}, nil},
		{"flat gray PNG, 3 MP", zeroPNG(2000, 1500, 0, false), Limits{}, nil},
		{"flat RGB PNG, cap lowered", flatRGB, Limits{MaxPixelsPerByte: 100}, ErrPixelsPerByte},
		{"photo JPEG under 1 MiP, cap lowered", read(t, "grace_hopper.jpg"), Limits{MaxPixelsPerByte: 1}, nil},
	} {
		hd, err := Inspect(tc.data, tc.lim)
		if err == nil {
			t.Logf("%s: %d pixels a byte", tc.name, int64(hd.Width)*int64(hd.Height)/int64(len(tc.data)))
		}
		if !errors.Is(err, tc.want) || (tc.want == ErrPixelsPerByte && !errors.Is(err, ErrTooLarge)) {
			t.Errorf("%s (%d bytes): %v, want %v", tc.name, len(tc.data), err, tc.want)
		}
		if errors.Is(err, ErrPixelsPerByte) && !bytes.Contains([]byte(err.Error()), []byte("MAX_PIXELS_PER_BYTE")) {
			t.Errorf("%s: %q does not say how to raise the cap", tc.name, err)
		}
	}
}

// TestInspectWebP: what x/image/webp does with each layout of chunks.
func TestInspectWebP(t *testing.T) {
	const w, h = 64, 48
	vp8l := webpChunk("VP8L", vp8lFlat(w, h, 0, false))
	lossy := readLocal(t, "lossy.webp")
	vp8 := lossy[12:] // the VP8 chunk
	rawAlpha := rawAlpha(t, readLocal(t, "lossy_alpha.webp"))
	anim := append(vp8xChunk(0x02, w, h), webpChunk("ANIM", make([]byte, 6))...)
	for _, tc := range []struct {
		name   string
		data   []byte
		want   error
		bytes  int64 // decodeBytes
		direct bool
	}{
		{"VP8L", riffWebP(vp8l), nil, vp8lBytes(w, h) + vp8lFlatCodes, true},
		{"VP8X, VP8L", riffWebP(vp8xChunk(0, w, h), vp8l), nil, vp8lBytes(w, h) + vp8lFlatCodes, true},
		{"VP8X with alpha, VP8L", riffWebP(vp8xChunk(0x10, w, h), vp8l), nil, vp8lBytes(w, h) + vp8lFlatCodes, true},
		{"VP8X, VP8L of another size", riffWebP(vp8xChunk(0, w, h+1), vp8l), ErrCorrupt, 0, false},
		{"VP8L, codes cut short", riffWebP(webpChunk("VP8L", vp8lFlat(w, h, 0, false)[:7])), ErrCorrupt, 0, false},
		{"VP8X with alpha, ALPH raw, VP8", rawAlpha, nil, 512*384 + vp8Bytes(512, 384, chunkLen(t, rawAlpha, "VP8 ")), false},
		{"VP8", lossy, nil, vp8Bytes(512, 384, chunkLen(t, lossy, "VP8 ")), true},
		{"VP8 cut short", lossy[:len(lossy)-10], ErrCorrupt, 0, false},
		{"VP8X with alpha, no ALPH", riffWebP(vp8xChunk(0x10, 512, 384), vp8), ErrCorrupt, 0, false},
		{"VP8X, no image", riffWebP(vp8xChunk(0, w, h)), ErrCorrupt, 0, false},
		{"animated", riffWebP(anim, webpChunk("ANMF", append(make([]byte, 16), vp8l...))), ErrFormat, 0, false},
	} {
		hd, err := Inspect(tc.data, Limits{})
		if !errors.Is(err, tc.want) || (err == nil && (hd.decodeBytes != tc.bytes || hd.direct != tc.direct)) {
			t.Errorf("%s: %v, %d bytes, direct %v; want %v, %d, %v", tc.name, err, hd.decodeBytes, hd.direct, tc.want, tc.bytes, tc.direct)
		}
		if _, _, derr := image.Decode(bytes.NewReader(tc.data)); (derr == nil) != (err == nil) {
			t.Errorf("%s: Inspect says %v, x/image/webp %v", tc.name, err, derr)
		}
	}
}

// vp8lFlat returns the bitstream of a w x h lossless WebP image whose
// pixels cost no bits: every prefix code is a simple code of one symbol (the
// VP8L spec, section 3.7.2.1.1). colors > 0 adds a color-indexing transform
// of that many colors (2: 8 pixels a byte; 16: 2), predictor a predictor
// transform of 4x4 tiles: what makes the decoder allocate the most besides
// the pixels.
func vp8lFlat(w, h, colors int, predictor bool) []byte {
	var b bitWriter
	b.put(0x2f, 8)
	b.put(uint32(w-1), 14)
	b.put(uint32(h-1), 14)
	b.put(0, 1) // alpha hint
	b.put(0, 3) // version
	if colors > 0 {
		b.put(1, 1)
		b.put(3, 2) // color indexing
		b.put(uint32(colors-1), 8)
		vp8lFlatImage(&b) // the palette: colors x 1
		switch {
		case colors <= 2:
			w = (w + 7) / 8
		case colors <= 4:
			w = (w + 3) / 4
		case colors <= 16:
			w = (w + 1) / 2
		}
	}
	if predictor {
		b.put(1, 1)
		b.put(0, 2)       // predictor
		b.put(0, 3)       // 4x4 tiles
		vp8lFlatImage(&b) // the tiles' modes
	}
	b.put(0, 1) // no more transforms
	b.put(0, 1) // no color cache
	b.put(0, 1) // one group of prefix codes
	for range 5 {
		vp8lOneSymbol(&b)
	}
	return b.bytes()
}

// vp8lFlatImage writes an entropy-coded subimage of zero-bit pixels.
func vp8lFlatImage(b *bitWriter) {
	b.put(0, 1) // no color cache
	for range 5 {
		vp8lOneSymbol(b)
	}
}

// vp8lOneSymbol writes a simple prefix code of the single symbol 0.
func vp8lOneSymbol(b *bitWriter) {
	b.put(1, 1) // simple code
	b.put(0, 1) // one symbol
	b.put(0, 1) // of 1 bit
	b.put(0, 1) // 0
}

// bitWriter packs values least significant bit first, as VP8L reads them.
type bitWriter struct {
	buf  []byte
	acc  uint64
	bits uint
}

func (b *bitWriter) put(v uint32, n uint) {
	b.acc |= uint64(v) << b.bits
	for b.bits += n; b.bits >= 8; b.bits -= 8 {
		b.buf = append(b.buf, byte(b.acc))
		b.acc >>= 8
	}
}

func (b *bitWriter) bytes() []byte {
	if b.bits > 0 {
		return append(b.buf, byte(b.acc))
	}
	return b.buf
}

// riffWebP wraps chunks in a RIFF WEBP header.
func riffWebP(chunks ...[]byte) []byte {
	body := bytes.Join(append([][]byte{[]byte("WEBP")}, chunks...), nil)
	return append(binary.LittleEndian.AppendUint32([]byte("RIFF"), uint32(len(body))), body...)
}

// webpChunk is a RIFF chunk: id, length, data and the padding byte.
func webpChunk(id string, data []byte) []byte {
	c := append(binary.LittleEndian.AppendUint32([]byte(id), uint32(len(data))), data...)
	if len(data)%2 == 1 {
		c = append(c, 0)
	}
	return c
}

// vp8xChunk declares a w x h canvas; flags 0x10: alpha, 0x02: animation.
func vp8xChunk(flags byte, w, h int) []byte {
	d := []byte{flags, 0, 0, 0}
	d = append(d, byte(w-1), byte((w-1)>>8), byte((w-1)>>16), byte(h-1), byte((h-1)>>8), byte((h-1)>>16))
	return webpChunk("VP8X", d)
}

// rawAlpha replaces the lossless-coded ALPH chunk of a VP8X file with raw
// alpha (compression 0): a byte a pixel.
func rawAlpha(t testing.TB, data []byte) []byte {
	var chunks [][]byte
	var w, h int
	for p := 12; p+8 <= len(data); {
		id, n := string(data[p:p+4]), int(binary.LittleEndian.Uint32(data[p+4:]))
		body := data[p+8 : p+8+n]
		switch id {
		case "VP8X":
			w = 1 + (int(body[4]) | int(body[5])<<8 | int(body[6])<<16)
			h = 1 + (int(body[7]) | int(body[8])<<8 | int(body[9])<<16)
		case "ALPH":
			body = make([]byte, 1+w*h)
		}
		chunks = append(chunks, webpChunk(id, body))
		p += 8 + n + n%2
	}
	if w == 0 {
		t.Fatal("no VP8X chunk")
	}
	return riffWebP(chunks...)
}

// progressiveJPEG returns a progressive JPEG of a flat w x h image, gray
// (nc 1) or YCbCr 4:2:0 (nc 3), that holds only its first DC scan: Go's
// decoder keeps every block's coefficients for it, as for any progressive
// file. Go's encoder writes baseline only.
func progressiveJPEG(w, h, nc int) []byte {
	seg := func(b []byte, marker byte, data []byte) []byte {
		b = append(b, 0xff, marker)
		return append(binary.BigEndian.AppendUint16(b, uint16(2+len(data))), data...)
	}
	b := seg([]byte{0xff, 0xd8}, 0xdb, append([]byte{0}, bytes.Repeat([]byte{1}, 64)...))
	sof := []byte{8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), byte(nc)}
	sos := []byte{byte(nc)}
	for i := range nc {
		hv := byte(0x11)
		if nc == 3 && i == 0 {
			hv = 0x22
		}
		sof = append(sof, byte(i+1), hv, 0)
		sos = append(sos, byte(i+1), 0x00)
	}
	b = seg(b, 0xc2, sof)
	// A DC table of one 1-bit code, for "no difference".
	b = seg(b, 0xc4, append([]byte{0x00, 1}, make([]byte, 15+1)...))
	b = seg(b, 0xda, append(sos, 0, 0, 0))
	blocks := (w + 7) / 8 * ((h + 7) / 8)
	if nc == 3 { // MCUs of 16x16: 4 luma blocks and 2 chroma
		blocks = (w + 15) / 16 * ((h + 15) / 16) * 6
	}
	b = append(b, make([]byte, (blocks+7)/8)...)
	return append(b, 0xff, 0xd9)
}

// jpegRGBNames renames the components of a JPEG from Go's encoder (no JFIF
// segment) R, G and B, so Go's decoder takes the image for RGB and
// converts it to RGBA.
func jpegRGBNames(data []byte) []byte {
	data = bytes.Clone(data)
	i := bytes.Index(data, []byte{0xff, 0xc0}) // frame header
	data[i+10], data[i+13], data[i+16] = 'R', 'G', 'B'
	i = bytes.Index(data, []byte{0xff, 0xda}) // scan header
	data[i+5], data[i+7], data[i+9] = 'R', 'G', 'B'
	return data
}

// zeroPNG returns a PNG of w x h zero samples, 8-bit gray (ctype 0) or RGB
// (2), interlaced (Adam7, which Go's encoder does not write) or not, at
// zlib's best compression.
func zeroPNG(w, h int, ctype byte, interlaced bool) []byte {
	samples := map[byte]int{0: 1, 2: 3}[ctype]
	passes := [][4]int{{0, 0, 1, 1}}
	if interlaced {
		passes = [][4]int{{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4}, {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}}
	}
	var idat bytes.Buffer
	z, _ := zlib.NewWriterLevel(&idat, zlib.BestCompression)
	for _, p := range passes {
		pw, ph := (w-p[0]+p[2]-1)/p[2], (h-p[1]+p[3]-1)/p[3]
		if pw <= 0 || ph <= 0 {
			continue
		}
		row := make([]byte, 1+samples*pw) // filter 0, then the row
		for range ph {
			z.Write(row)
		}
	}
	z.Close()
	interlace := byte(0)
	if interlaced {
		interlace = 1
	}
	b := pngHeader(uint32(w), uint32(h), 8, ctype, interlace)
	for _, c := range []struct {
		typ  string
		data []byte
	}{{"IDAT", idat.Bytes()}, {"IEND", nil}} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(c.data)))
		chunk := append([]byte(c.typ), c.data...)
		b = binary.BigEndian.AppendUint32(append(b, chunk...), crc32.ChecksumIEEE(chunk))
	}
	return b
}

func gradient(w, h int) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < len(m.Pix); i += 4 {
		x, y := i/4%w, i/4/w
		copy(m.Pix[i:], []byte{uint8(x), uint8(y), uint8(x + y), 255})
	}
	return m
}

func toGray(m *image.RGBA) *image.Gray {
	g := image.NewGray(m.Bounds())
	for i := range g.Pix {
		g.Pix[i] = m.Pix[4*i]
	}
	return g
}

func withAlpha(m *image.RGBA) *image.NRGBA {
	n := &image.NRGBA{Pix: bytes.Clone(m.Pix), Stride: m.Stride, Rect: m.Rect}
	for i := 3; i < len(n.Pix); i += 4 {
		n.Pix[i] = 128
	}
	return n
}

func paletted(w, h, colors int) *image.Paletted {
	pal := make(color.Palette, colors)
	for i := range pal {
		pal[i] = color.RGBA{uint8(i), uint8(255 - i), 0, 255}
	}
	m := image.NewPaletted(image.Rect(0, 0, w, h), pal)
	for i := range m.Pix {
		m.Pix[i] = uint8(i % colors)
	}
	return m
}

func encodePNG(t testing.TB, m image.Image) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(t testing.TB, m image.Image) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, m, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// encodeGIF encodes m; interlaced sets the frame's interlace flag (the rows
// are then read out of order, which changes nothing of the cost).
func encodeGIF(t testing.TB, m *image.Paletted, interlaced bool) []byte {
	var b bytes.Buffer
	if err := gif.Encode(&b, m, nil); err != nil {
		t.Fatal(err)
	}
	data := b.Bytes()
	if interlaced {
		i := 13 + 3*256 // after the header and the global color table
		if data[10]&0x80 == 0 || data[i] != 0x2c {
			t.Fatal("gif: no image descriptor after the global color table")
		}
		data[i+9] |= 0x40
	}
	return data
}

// animatedGIF returns 3 frames of fw x fh on a w x h screen.
func animatedGIF(t testing.TB, w, h, fw, fh int) []byte {
	g := &gif.GIF{Config: image.Config{Width: w, Height: h}}
	for range 3 {
		g.Image = append(g.Image, paletted(fw, fh, 16))
		g.Delay = append(g.Delay, 10)
	}
	var b bytes.Buffer
	if err := gif.EncodeAll(&b, g); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// readLocal reads testdata/name: lossy.webp and lossy_alpha.webp, made by
// libwebp 1.2.4 through PIL (Debian's python3-pil) from a 512x384
// gradient, RGB and RGBA: Image.save(name, quality=50, method=4). Go has
// no lossy WebP encoder.
func readLocal(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chunkLen is the length of the first chunk id in a RIFF file.
func chunkLen(t testing.TB, data []byte, id string) int64 {
	for p := 12; p+8 <= len(data); {
		n := int(binary.LittleEndian.Uint32(data[p+4:]))
		if string(data[p:p+4]) == id {
			return int64(n)
		}
		p += 8 + n + n%2
	}
	t.Fatalf("no %s chunk", id)
	return 0
}
