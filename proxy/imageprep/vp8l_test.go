package imageprep

import (
	"bytes"
	"math"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"golang.org/x/image/vp8l"
)

// vp8lFlatCodes is what x/image/vp8l allocates for vp8lFlat's codes (no
// transform): one group (2680 bytes, in a 2688-byte block) of five trees
// of one node (8 bytes, in a 16-byte block).
const vp8lFlatCodes = 2688 + 5*16

// vp8lBomb returns a w x h VP8L bitstream made to cost x/image/vp8l the
// most for its size: an entropy image of 4x4 tiles whose tile t uses group
// index[t % len(index)] and a color cache of cacheBits (0 to 11), and
// groups whose five codes each give every symbol of their alphabet (up to
// 2328 for green) a length of 1: 18 bits of description for a tree of up
// to 4655 nodes, which x/image/vp8l accepts (the codes wrap around; see
// vp8lCodeOK). The pixels are all black from the color cache, one bit
// each: the file decodes.
func vp8lBomb(w, h int, index []int, cacheBits int) []byte {
	return vp8lCrafted(w, h, cacheBits, func(b *bitWriter, tiles int) int {
		groups := 0
		vp8lIndexImage(b, tiles, func(t int) int {
			groups = max(groups, index[t%len(index)]+1)
			return index[t%len(index)]
		})
		return groups
	}, nil)
}

// vp8lCrafted returns a w x h VP8L bitstream with a color cache of
// cacheBits, an entropy image of 4x4 tiles that meta writes (returning
// the number of groups), groups whose codes code writes (nil: every
// symbol of length 1, as in vp8lBomb), and w*h zero bits of pixels.
func vp8lCrafted(w, h, cacheBits int, meta func(b *bitWriter, tiles int) int, code func(b *bitWriter, group, j, size int)) []byte {
	var b bitWriter
	vp8lHeader(&b, w, h)
	b.put(0, 1) // no transform
	if cacheBits > 0 {
		b.put(1, 1)
		b.put(uint32(cacheBits), 4)
	} else {
		b.put(0, 1)
	}
	b.put(1, 1) // an entropy image
	b.put(0, 3) // of 4x4 tiles
	groups := meta(&b, ((w+3)/4)*((h+3)/4))
	for g := range groups {
		for j, size := range vp8lAlphabetSizes {
			if j == 0 && cacheBits > 0 {
				size += 1 << cacheBits
			}
			if code != nil {
				code(&b, g, j, size)
			} else {
				vp8lUniformCode(&b, 1, size, size)
			}
		}
	}
	// With vp8lBomb's codes each pixel is green code 0: the last symbol
	// of even rank, a color cache entry where there is a cache, else
	// symbol 278, a copy (which fails on the first pixel, once the
	// decoder has allocated the codes).
	for range w * h {
		b.put(0, 1)
	}
	return b.bytes()
}

// vp8lHeader writes a VP8L header: signature, size, no alpha, version 0.
func vp8lHeader(b *bitWriter, w, h int) {
	b.put(0x2f, 8)
	b.put(uint32(w-1), 14)
	b.put(uint32(h-1), 14)
	b.put(0, 1)
	b.put(0, 3)
}

// vp8lIndexImage writes an entropy image of n pixels (no color cache)
// whose pixel t holds group index(t): green the low 8 bits, red the high
// ones, each in a complete code of 8 bits (256 symbols), 4 bits (16).
func vp8lIndexImage(b *bitWriter, n int, index func(t int) int) {
	b.put(0, 1)                     // no color cache
	vp8lUniformCode(b, 8, 256, 280) // green
	vp8lUniformCode(b, 4, 16, 256)  // red
	vp8lOneSymbol(b)                // blue
	vp8lOneSymbol(b)                // alpha
	vp8lOneSymbol(b)                // distance
	for t := range n {
		i := index(t)
		vp8lPutCode(b, uint32(i&0xff), 8)
		vp8lPutCode(b, uint32(i>>8), 4)
	}
}

// vp8lUniformCode writes a normal code that gives its first n symbols (of
// size) length l: a code-length code of the one symbol l, taking no bits,
// and a count of code-length symbols to read where n < size. 2^l symbols
// make a complete code, whose symbol s has code s; more than 2^l, an
// over-full one x/image/vp8l accepts.
func vp8lUniformCode(b *bitWriter, l, n, size int) {
	b.put(0, 1) // normal
	var order int
	for i, s := range vp8lCodeLengthOrder {
		if int(s) == l {
			order = i
		}
	}
	k := max(order+1, 4)
	b.put(uint32(k-4), 4)
	for i := range k {
		if i == order {
			b.put(1, 3)
		} else {
			b.put(0, 3)
		}
	}
	if n == size {
		b.put(0, 1)
		return
	}
	b.put(1, 1)
	nb := 0 // 2 + 2*nb bits for n-2
	for n-2 >= 1<<(2+2*nb) {
		nb++
	}
	b.put(uint32(nb), 3)
	b.put(uint32(n-2), uint(2+2*nb))
}

// vp8lPutCode writes a code of l bits, its most significant bit first.
func vp8lPutCode(b *bitWriter, code uint32, l int) {
	for i := l - 1; i >= 0; i-- {
		b.put(code>>i&1, 1)
	}
}

// vp8lLengthsCode writes a normal code of the given lengths (of an
// alphabet of size): the code-length code gives 0 to 15 4 bits each (a
// complete code: length l is code l), and the count of lengths read where
// there are fewer than size.
func vp8lLengthsCode(b *bitWriter, lengths []int, size int) {
	b.put(0, 1)  // normal
	b.put(15, 4) // 19 code-length code lengths
	for _, s := range vp8lCodeLengthOrder {
		if s < 16 {
			b.put(4, 3)
		} else {
			b.put(0, 3)
		}
	}
	if len(lengths) == size {
		b.put(0, 1)
	} else {
		vp8lPutCount(b, len(lengths))
	}
	for _, l := range lengths {
		vp8lPutCode(b, uint32(l), 4)
	}
}

// vp8lPutCount writes how many code-length symbols a normal code reads.
func vp8lPutCount(b *bitWriter, n int) {
	b.put(1, 1)
	nb := 0 // 2 + 2*nb bits for n-2
	for n-2 >= 1<<(2+2*nb) {
		nb++
	}
	b.put(uint32(nb), 3)
	b.put(uint32(n-2), uint(2+2*nb))
}

// vp8lSimpleCode writes a simple code of one symbol (below 256).
func vp8lSimpleCode(b *bitWriter, sym int) {
	b.put(1, 1) // simple
	b.put(0, 1) // one symbol
	b.put(1, 1) // of 8 bits
	b.put(uint32(sym), 8)
}

func vp8lSeq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// vp8lCacheImage writes an entropy image with a color cache of 4 bits,
// whose green code is over-full (296 symbols of 8 bits: codes 0 to 39 are
// symbols 256 to 295, copies and cache look-ups; 40 to 255 literals) and
// red always red: group indices red<<8 + green. It holds the literals 100
// and 50, a copy of the pixel before, a look-up of cache entry k, then
// copies. It returns the number of groups, red<<8 + 101: with red 0,
// remapped where the image has no more than 100 tiles, with red 4 because
// the highest index is over 1000.
func vp8lCacheImage(red, k int) func(b *bitWriter, tiles int) int {
	return func(b *bitWriter, tiles int) int {
		b.put(1, 1)
		b.put(4, 4)
		vp8lUniformCode(b, 8, 296, 296)
		vp8lSimpleCode(b, red)
		vp8lOneSymbol(b) // blue
		vp8lOneSymbol(b) // alpha
		b.put(1, 1)      // distance: one symbol, 1 (code 2: the pixel to the left)
		b.put(0, 1)
		b.put(0, 1)
		b.put(1, 1)
		vp8lPutCode(b, 100, 8)
		vp8lPutCode(b, 50, 8)
		vp8lPutCode(b, 0, 8) // symbol 256: a copy of 1 pixel
		vp8lPutCode(b, uint32(24+k), 8)
		for range tiles - 4 {
			vp8lPutCode(b, 0, 8)
		}
		return red<<8 + 101
	}
}

// vp8lCacheSlot is the color cache entry of an ARGB color, for 4 bits.
func vp8lCacheSlot(argb uint32) int { return int(argb * vp8lColorCache >> 28) }

// vp8lBadGroup returns a code writer that writes every group's codes as
// vp8lBomb does, except code 4 (distance) of group bad: an incomplete
// code (lengths 2, 2, 2).
func vp8lBadGroup(bad int) func(b *bitWriter, group, j, size int) {
	return func(b *bitWriter, group, j, size int) {
		if group == bad && j == 4 {
			vp8lLengthsCode(b, []int{2, 2, 2}, size)
			return
		}
		vp8lUniformCode(b, 1, size, size)
	}
}

// vp8lPixelBound is what x/image/vp8l allocates for a w x h image besides
// its codes, in Go's allocation sizes: vp8lBytes' buffers each rounded up
// (the pixels, the color-indexing transform's packed ones, three images of
// 4x4 tiles), the palette, and 1 KiB for the decoder, the image and an
// error.
func vp8lPixelBound(w, h int) int64 {
	w64, h64 := int64(w), int64(h)
	tiles := ((w64 + 3) / 4) * ((h64 + 3) / 4)
	return goAllocBytes(4*w64*h64) + goAllocBytes(4*((w64+1)/2)*h64) + 3*goAllocBytes(4*tiles) + goAllocBytes(1024) + 1<<10
}

// vp8lFuzzNoise is what a fuzz worker's other goroutines may allocate
// while one input is measured.
const vp8lFuzzNoise = 4 << 10

// vp8lCheck checks vp8lCodeBytes against x/image/vp8l on a bitstream of
// up to maxPixels and maxCodes bytes of codes (counted to the error, for
// one refused): a bitstream it refuses, the decoder fails on; for one it
// accepts, the decoder allocates no more than vp8lPixelBound and the codes
// (plus slack), decoded or not. It returns the parser's and the decoder's
// errors, and the decoder's allocation against the estimate (0, 0 where
// it did not decode).
func vp8lCheck(t testing.TB, data []byte, maxPixels int, maxCodes, slack int64) (perr, derr error, got, want int64) {
	t.Helper()
	var w, h int
	var codes int64
	parse := testenv.AllocatedBy(func() { w, h, codes, perr = vp8lCodeBytes(data) })
	if limit := uint64(2*len(data) + 64<<10); parse > limit {
		t.Fatalf("parsing %d bytes allocated %d, over %d", len(data), parse, limit)
	}
	cfg, cerr := vp8l.DecodeConfig(bytes.NewReader(data))
	if cerr != nil {
		if perr == nil {
			t.Fatalf("the parser accepts a header x/image/vp8l refuses (%v)", cerr)
		}
		return perr, cerr, 0, 0
	}
	if perr == nil && (cfg.Width != w || cfg.Height != h || codes <= 0) {
		t.Fatalf("the parser reads %dx%d and %d bytes of codes, x/image/vp8l %dx%d", w, h, codes, cfg.Width, cfg.Height)
	}
	if cfg.Width*cfg.Height > maxPixels || codes > maxCodes {
		return perr, nil, 0, 0
	}
	g := testenv.AllocatedBy(func() { _, derr = vp8l.Decode(bytes.NewReader(data)) })
	if perr != nil {
		if derr == nil {
			t.Fatalf("the parser refuses what x/image/vp8l decodes: %v", perr)
		}
		return perr, derr, 0, 0
	}
	got, want = int64(g), vp8lPixelBound(w, h)+codes
	if got > want+slack {
		t.Fatalf("%dx%d: x/image/vp8l allocated %d bytes (decode error: %v), over the estimate %d (%d of them codes)", w, h, got, derr, want, codes)
	}
	return perr, derr, got, want
}

// TestVP8LCodeBomb: a 38 KB lossless WebP of 208x208 pixels whose 2600
// groups of codes make x/image/vp8l allocate 204 MiB (and decode: every
// pixel is black) is refused from its header against the proxy's 128 MiB
// decode budget, in a VP8L chunk or as the lossless alpha plane of a
// lossy image. Before vp8lCodeBytes it was estimated at under 1 MiB.
// Where libwebp decodes lossy WebP, the alpha plane is never decoded (PIL's
// RGB drops it), so that file costs what its lossy frame costs: estimated
// under 2 MiB, and decoded within it.
func TestVP8LCodeBomb(t *testing.T) {
	const budget = 128 << 20 // DECODE_MEMORY_BYTES' default
	bomb := vp8lBomb(208, 208, vp8lSeq(vp8lMaxGroups), vp8lMaxCacheBits)
	lossy := readLocal(t, "lossy.webp")
	alpha := append([]byte{1}, vp8lBomb(512, 384, vp8lSeq(vp8lMaxGroups), vp8lMaxCacheBits)[5:]...)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"VP8L", riffWebP(webpChunk("VP8L", bomb))},
		{"VP8X, ALPH, VP8", riffWebP(vp8xChunk(0x10, 512, 384), webpChunk("ALPH", alpha), lossy[12:])},
	} {
		hd, err := Inspect(tc.data, Limits{})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		need := hd.MemoryBytes(imagenet)
		t.Logf("%s, %d bytes: estimate %d bytes", tc.name, len(tc.data), need)
		if hd.libwebp() {
			out := make([]float32, 3*224*224)
			var err error
			alloc := int64(testenv.AllocatedBy(func() { err = Tensor(tc.data, hd, imagenet, out) }))
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			t.Logf("%s through libwebp: Go allocated %d bytes", tc.name, alloc)
			if need > 2<<20 || alloc > need {
				t.Errorf("%s through libwebp: estimate %d bytes (want under 2 MiB), Go allocated %d", tc.name, need, alloc)
			}
			continue
		}
		if need <= budget {
			t.Errorf("%s: estimate %d bytes, within the %d budget", tc.name, need, budget)
		}
	}
	if testing.Short() || testenv.RaceEnabled() {
		return // the decode takes 200 MiB, and seconds under the race detector
	}
	_, derr, got, want := vp8lCheck(t, bomb, 1<<20, 1<<30, 0)
	t.Logf("VP8L bitstream, %d bytes: x/image/vp8l allocates %d bytes (error: %v), estimate %d", len(bomb), got, derr, want)
	if derr != nil || got < 100<<20 {
		t.Errorf("the bomb allocates %d bytes (error: %v), want over 100 MiB and a decoded image", got, derr)
	}
}

// TestVP8LAgreesWithDecoder: the parser refuses what x/image/vp8l fails on
// before the pixels, and only that, and bounds what it allocates: crafted
// bitstreams at each check the decoder makes.
func TestVP8LAgreesWithDecoder(t *testing.T) {
	flat := vp8lFlat(64, 48, 16, true)
	header := func(f func(b *bitWriter)) []byte {
		var b bitWriter
		vp8lHeader(&b, 64, 48)
		f(&b)
		return b.bytes()
	}
	filled := vp8lCacheSlot(100 << 8)
	unfilled := 0
	for unfilled == filled || unfilled == vp8lCacheSlot(50<<8) {
		unfilled++
	}
	// 16x16 pixels: 16 tiles, so group indices 50 and 100 are remapped.
	cached := func(k int, code func(b *bitWriter, group, j, size int)) []byte {
		return vp8lCrafted(16, 16, 11, vp8lCacheImage(0, k), code)
	}
	copyFirst := func(b *bitWriter, tiles int) int {
		b.put(0, 1)
		vp8lLengthsCode(b, append(make([]int, 256), 1), 280) // only symbol 256: a copy
		for range 4 {
			vp8lOneSymbol(b)
		}
		return 1
	}
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool // the parser accepts it
	}{
		{"flat, 16 colors, predictor", flat, true},
		{"signature", append([]byte{0x2e}, flat[1:]...), false},
		{"version 1", append(bytes.Clone(flat[:4]), append([]byte{flat[4] | 0x20}, flat[5:]...)...), false},
		{"cut short", vp8lBomb(64, 64, vp8lSeq(50), 11)[:200], false},
		{"subtract green twice", header(func(b *bitWriter) { b.put(0b10_1_10_1, 6); b.put(0, 3) }), false},
		{"color cache of 12 bits", header(func(b *bitWriter) { b.put(0, 1); b.put(1, 1); b.put(12, 4) }), false},
		{"300 groups of codes of 2328 symbols of 1 bit", vp8lBomb(64, 64, vp8lSeq(300), 11), true},
		{"no color cache: the pixels fail, once the codes are built", vp8lBomb(64, 64, vp8lSeq(30), 0), true},
		{"group index 2600", vp8lBomb(64, 64, []int{0, 2600}, 0), false},
		{"incomplete code", cached(filled, vp8lBadGroup(100)), false},
		{"over-full code of two lengths", cached(filled, func(b *bitWriter, g, j, size int) {
			if j == 4 && g == 50 {
				vp8lLengthsCode(b, []int{1, 1, 2}, size)
			} else {
				vp8lUniformCode(b, 1, size, size)
			}
		}), false},
		{"complete code of three lengths", cached(filled, func(b *bitWriter, g, j, size int) {
			if j == 4 {
				vp8lLengthsCode(b, []int{1, 2, 3, 3}, size)
			} else {
				vp8lUniformCode(b, 1, size, size)
			}
		}), true},
		{"simple code's symbol past its alphabet", cached(filled, func(b *bitWriter, g, j, size int) {
			if j == 4 && g == 100 {
				vp8lSimpleCode(b, 45)
			} else {
				vp8lUniformCode(b, 1, size, size)
			}
		}), false},
		{"the same in a group no tile uses (remapped: index 1000 or more)", vp8lCrafted(64, 64, 11, vp8lCacheImage(4, vp8lCacheSlot(4<<16|100<<8)), func(b *bitWriter, g, j, size int) {
			if j == 4 && g == 7 {
				vp8lSimpleCode(b, 45)
			} else {
				vp8lUniformCode(b, 1, size, size)
			}
		}), true},
		{"incomplete code in a group no tile uses (remapped: index over the tiles)", cached(filled, vp8lBadGroup(7)), true},
		{"incomplete code in a group no tile uses, not remapped", vp8lCrafted(64, 64, 11, vp8lCacheImage(0, filled), vp8lBadGroup(7)), false},
		{"a look-up of a filled cache entry: group 0 unused", cached(filled, vp8lBadGroup(0)), true},
		{"a look-up of an empty cache entry: group 0 used", cached(unfilled, vp8lBadGroup(0)), false},
		{"entropy image copying from before its start", vp8lCrafted(64, 64, 11, copyFirst, nil), false},
	} {
		perr, derr, got, want := vp8lCheck(t, tc.data, 1<<20, 1<<30, 0)
		t.Logf("%s: parser %v; x/image/vp8l %v, allocated %d, estimate %d", tc.name, perr, derr, got, want)
		if (perr == nil) != tc.ok {
			t.Errorf("%s: parser says %v, want ok %v", tc.name, perr, tc.ok)
		}
	}
}

// TestVP8LHonestFiles: lossless WebPs from libwebp (testdata, see below)
// are accepted, and their estimate without the fixed 256 KiB allowance
// covers what decoding them allocates (16 KiB aside, for the decoder's
// reader and palette) but not twice over. Before vp8lCodeBytes the
// estimate fell short by up to 100 KiB (the photos at -z 6 and 9).
//
// Made by cwebp (libwebp 1.2.4, Debian's webp package), from
// ../testdata/small.png resized to 96 pixels wide (-lossless -resize 96 0,
// at -z 0, 6 and 9), ../testdata/small_alpha.png (the same at -z 9), and a
// 256x192 gradient (red x, green 4y, blue x+y; -lossless -z 0, -z 9, and
// -near_lossless 60); lossy_lossless_alpha.webp from small_alpha.png (-q
// 50 -alpha_method 1 -alpha_filter best).
func TestVP8LHonestFiles(t *testing.T) {
	for _, name := range []string{
		"lossless_photo_z0.webp", "lossless_photo_z6.webp", "lossless_photo_z9.webp", "lossless_alpha_z9.webp",
		"lossless_gradient_z0.webp", "lossless_gradient_z9.webp", "near_lossless_gradient.webp",
	} {
		data := readLocal(t, name)
		hd, err := Inspect(data, Limits{})
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var derr error
		got := int64(testenv.AllocatedBy(func() { _, derr = DecodeInspected(data, hd) }))
		want := hd.decodeBytes
		codes := want - vp8lBytes(int64(hd.Width), int64(hd.Height))
		t.Logf("%-28s %dx%d, %5d bytes: got %7d allocated, want %7d estimated (%6d of codes), %.2fx", name, hd.Width, hd.Height, len(data), got, want, codes, float64(want)/float64(got))
		if derr != nil {
			t.Errorf("%s: %v", name, derr)
		}
		if got > want+16<<10 {
			t.Errorf("%s: decoding allocated %d bytes, estimate %d (16 KiB aside)", name, got, want)
		}
		if want > 2*got {
			t.Errorf("%s: estimate %d, more than twice the %d allocated", name, want, got)
		}
		if chunk := vp8lChunk(t, data); chunk != nil {
			vp8lCheck(t, chunk, 1<<20, 1<<30, 0)
		}
	}
	// The lossless alpha plane of a lossy file: as x/image/webp reads it.
	data := readLocal(t, "lossy_lossless_alpha.webp")
	hd, err := Inspect(data, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var b bitWriter
	vp8lHeader(&b, hd.Width, hd.Height)
	alpha := riffChunk(t, data, "ALPH")
	if alpha[0]&3 != 1 {
		t.Fatalf("ALPH compression %d, want 1 (lossless)", alpha[0]&3)
	}
	vp8lCheck(t, append(b.bytes(), alpha[1:]...), 1<<20, 1<<30, 0)
}

// vp8lChunk is the VP8L chunk's data in a RIFF file, or nil.
func vp8lChunk(t testing.TB, data []byte) []byte {
	for p := 12; p+8 <= len(data); {
		n := int(uint32(data[p+4]) | uint32(data[p+5])<<8 | uint32(data[p+6])<<16 | uint32(data[p+7])<<24)
		if string(data[p:p+4]) == "VP8L" {
			return data[p+8 : p+8+n]
		}
		p += 8 + n + n%2
	}
	return nil
}

// riffChunk is the data of the first chunk id in a RIFF file.
func riffChunk(t testing.TB, data []byte, id string) []byte {
	t.Helper()
	n := chunkLen(t, data, id)
	i := bytes.Index(data, []byte(id))
	return data[i+8 : i+8+int(n)]
}

// TestVP8LParserCost: the parser takes a constant allocation (its state,
// 10 KiB) and time that grows with the bits it reads, not the pixels they
// declare: 16384x16384 pixels in 12 or 16 bytes, whose transforms' images
// hold 16 million tiles each, coded in no bits; the 208x208 bomb; 600 KB
// of garbage.
func TestVP8LParserCost(t *testing.T) {
	for _, data := range [][]byte{
		vp8lFlat(1<<14, 1<<14, 0, true),
		vp8lFlat(1<<14, 1<<14, 200, true),
		vp8lBomb(208, 208, vp8lSeq(vp8lMaxGroups), vp8lMaxCacheBits),
		bytes.Repeat([]byte{0x2f, 0xff, 0xff, 0xff, 0x0f, 0x55}, 100_000),
	} {
		var err error
		var codes int64
		n := testenv.AllocatedBy(func() { _, _, codes, err = vp8lCodeBytes(data) })
		t.Logf("%d bytes: allocated %d, %d bytes of codes, %v", len(data), n, codes, err)
		if n > 16<<10 {
			t.Errorf("parsing %d bytes allocated %d", len(data), n)
		}
	}
}

// TestGoAllocBytes: goAllocBytes is what the runtime counts.
func TestGoAllocBytes(t *testing.T) {
	for _, n := range []int64{16, 17, 24, 100, 1000, 2680, 4097, 9312, 32768, 32769, 37240, 1 << 20, 6968000} {
		// The count is the process's: anything else allocating meanwhile
		// (a test running beside it, the runtime) adds to it, never takes
		// from it, so the least of a few tries is the allocation's own.
		var sink []byte
		got := uint64(math.MaxUint64)
		for range 5 {
			got = min(got, testenv.AllocatedBy(func() { sink = make([]byte, n) }))
		}
		_ = sink
		if int64(got) != goAllocBytes(n) {
			t.Errorf("make([]byte, %d): %d bytes counted, goAllocBytes says %d", n, got, goAllocBytes(n))
		}
	}
}

// FuzzVP8LHuffmanCost: vp8lCodeBytes never panics, allocates a constant
// whatever the input, refuses only bitstreams x/image/vp8l fails on, and
// for those it accepts bounds what the decoder allocates, whether it
// decodes them or not. The fuzzer decodes up to 64 Ki pixels and 8 MiB of
// codes (decoding the 200 MiB ones takes it seconds).
func FuzzVP8LHuffmanCost(f *testing.F) {
	for _, data := range [][]byte{
		vp8lFlat(64, 48, 0, false),
		vp8lFlat(64, 48, 2, true),
		vp8lFlat(64, 48, 200, true),
		vp8lBomb(16, 16, vp8lSeq(16), 11),
		vp8lBomb(16, 16, []int{0, 1000}, 0),
		vp8lCrafted(16, 16, 11, vp8lCacheImage(0, vp8lCacheSlot(100<<8)), vp8lBadGroup(0)),
		vp8lCrafted(16, 16, 11, vp8lCacheImage(0, 0), nil),
	} {
		f.Add(data)
	}
	for _, name := range []string{"lossless_photo_z9.webp", "lossless_gradient_z0.webp", "lossless_gradient_z9.webp", "near_lossless_gradient.webp"} {
		f.Add(vp8lChunk(f, readLocal(f, name)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		vp8lCheck(t, data, 1<<16, 8<<20, vp8lFuzzNoise)
	})
}
