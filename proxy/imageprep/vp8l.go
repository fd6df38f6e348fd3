package imageprep

import (
	"errors"
	"fmt"
)

// A lossless WebP's prefix ("Huffman") codes are sized by its content, not
// its header: golang.org/x/image/vp8l builds one group of five codes for
// each group index its entropy image (the "meta Huffman" image) holds, up
// to 2600 groups, and one code of 2328 symbols can take 60 KB to build
// from 18 bits of description. vp8lCodeBytes reads the bitstream as the
// decoder does, up to the main image's pixels, and sums what the decoder
// allocates for the codes: a crafted 38 KB file of 208x208 pixels makes it
// allocate 204 MiB, libwebp's files 14 to 250 KiB (up to 512x600).
//
// The sum, per entropy-coded image (decodePix: each transform's image, the
// entropy image, the main image), in Go's allocation sizes (goAllocBytes):
//
//   - the color cache, 4 bytes an entry;
//   - the groups (decodeHuffmanGroups): 2680 bytes each (hGroup: five
//     hTrees of a slice and a 128-entry table), one per index up to the
//     highest in the entropy image, or one per index the image holds where
//     the decoder remaps them (an index of 1000 or more, or one of at least
//     the number of tiles), with the 2-byte remapping table;
//   - each code (decodeHuffmanTree): a normal code's lengths (4 bytes a
//     symbol of the alphabet, garbage once built, read even for a group no
//     tile uses), the code-length code's nodes and canonical codes, then,
//     for a group that is built, the tree's nodes (hTree.build: 8 bytes
//     each, 2n-1 for n symbols of non-zero length) and its canonical codes
//     (codeLengthsToCodes, 4 bytes a symbol of the alphabet, when n > 1);
//     a simple code's 1 or 3 nodes.
//
// That is an upper bound of what the decoder allocates for the codes,
// decoded or not, and equal to it but for the few arrays of up to 32 bytes
// the compiler keeps on the stack (TestVP8LAgreesWithDecoder: within 0.5%).
// The images' pixels are not counted here (vp8lBytes counts them), nor the
// color-indexing palette (1 KiB) or the decoder's fixed buffers.
//
// To find where each transform's image and the entropy image end, and
// which groups the latter uses, their pixels are decoded as decodePix
// does, without being stored: literals, LZ77 copies and color cache
// look-ups. An error is a check the decoder makes before the main image's
// pixels (vp8lCodeOK says which codes hTree.build accepts): it fails on
// every bitstream the parser refuses (FuzzVP8LHuffmanCost).
//
// What the parser itself allocates: one vp8lParser (10 KiB) and its
// errors, whatever the input. Its time grows with the bits it reads: every
// code length, symbol and pixel it walks takes at least one bit, and the
// runs that take none (a code-length code of one symbol, an image coded in
// no bits) are taken in one step.

const (
	vp8lLiterals     = 256
	vp8lLengthCodes  = 24
	vp8lDistances    = 40
	vp8lMaxCacheBits = 11
	vp8lMaxAlphabet  = vp8lLiterals + vp8lLengthCodes + 1<<vp8lMaxCacheBits
	vp8lMaxLength    = 15 // the longest code
	vp8lCodeLengths  = 19 // the alphabet of the code-length code
	// vp8lMaxGroups: x/image/vp8l refuses an entropy image holding a
	// group index of 2600 or more, libwebp's MAX_HUFF_IMAGE_SIZE.
	vp8lMaxGroups = 2600

	// Sizes of x/image/vp8l's types on 64-bit platforms.
	vp8lNodeBytes  = 8                   // hNode: symbol uint32, children int32
	vp8lGroupBytes = 5 * (24 + 4*(1<<7)) // hGroup: five hTrees, a slice and [128]uint32 each
	vp8lSymbolInts = 4                   // uint32 per symbol: code lengths, canonical codes
	vp8lColorCache = 0x1e35a7bd          // the color cache's hash multiplier (VP8L spec, 4.2.3)
	vp8lAlphabets  = vp8lMaxAlphabet + 3*vp8lLiterals + vp8lDistances
)

// vp8lAlphabetSizes are the alphabets of a group's five codes: green,
// length prefixes and the color cache (whose size is added); red; blue;
// alpha; distance prefixes.
var vp8lAlphabetSizes = [5]int{vp8lLiterals + vp8lLengthCodes, vp8lLiterals, vp8lLiterals, vp8lLiterals, vp8lDistances}

// vp8lCodeLengthOrder is the order in which a normal code's description
// gives the lengths of the code-length code (VP8L spec, 3.7.2.1.2).
var vp8lCodeLengthOrder = [vp8lCodeLengths]uint8{17, 18, 0, 1, 2, 3, 4, 5, 16, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

// vp8lDistanceOffsets are the (x, y) offsets of the 120 short distance
// codes, from the VP8L spec (4.2.2): the distance is x + y*width, at least 1.
var vp8lDistanceOffsets = [120][2]int8{
	{0, 1}, {1, 0}, {1, 1}, {-1, 1}, {0, 2}, {2, 0}, {1, 2}, {-1, 2},
	{2, 1}, {-2, 1}, {2, 2}, {-2, 2}, {0, 3}, {3, 0}, {1, 3}, {-1, 3},
	{3, 1}, {-3, 1}, {2, 3}, {-2, 3}, {3, 2}, {-3, 2}, {0, 4}, {4, 0},
	{1, 4}, {-1, 4}, {4, 1}, {-4, 1}, {3, 3}, {-3, 3}, {2, 4}, {-2, 4},
	{4, 2}, {-4, 2}, {0, 5}, {3, 4}, {-3, 4}, {4, 3}, {-4, 3}, {5, 0},
	{1, 5}, {-1, 5}, {5, 1}, {-5, 1}, {2, 5}, {-2, 5}, {5, 2}, {-5, 2},
	{4, 4}, {-4, 4}, {3, 5}, {-3, 5}, {5, 3}, {-5, 3}, {0, 6}, {6, 0},
	{1, 6}, {-1, 6}, {6, 1}, {-6, 1}, {2, 6}, {-2, 6}, {6, 2}, {-6, 2},
	{4, 5}, {-4, 5}, {5, 4}, {-5, 4}, {3, 6}, {-3, 6}, {6, 3}, {-6, 3},
	{0, 7}, {7, 0}, {1, 7}, {-1, 7}, {5, 5}, {-5, 5}, {7, 1}, {-7, 1},
	{4, 6}, {-4, 6}, {6, 4}, {-6, 4}, {2, 7}, {-2, 7}, {7, 2}, {-7, 2},
	{3, 7}, {-3, 7}, {7, 3}, {-7, 3}, {5, 6}, {-5, 6}, {6, 5}, {-6, 5},
	{8, 0}, {4, 7}, {-4, 7}, {7, 4}, {-7, 4}, {8, 1}, {8, 2}, {6, 6},
	{-6, 6}, {8, 3}, {5, 7}, {-5, 7}, {7, 5}, {-7, 5}, {8, 4}, {6, 7},
	{-6, 7}, {7, 6}, {-7, 6}, {8, 5}, {7, 7}, {-7, 7}, {8, 6}, {8, 7},
}

var errVP8LShort = errors.New("bitstream ends early")

// vp8lCodeBytes reads a VP8L chunk (its 5-byte header, then the
// bitstream) and returns the image's size and what x/image/vp8l allocates
// for its prefix codes (see above). An error means the decoder fails too;
// n is then what was counted before it.
func vp8lCodeBytes(data []byte) (w, h int, n int64, err error) {
	p := newVP8LParser(data)
	if w, h, err = p.header(); err != nil {
		return 0, 0, 0, fmt.Errorf("vp8l header: %w", err)
	}
	err = p.image(w, h)
	return w, h, p.total, err
}

// vp8lAlphaCodeBytes is vp8lCodeBytes for the lossless payload of an ALPH
// chunk (after its first byte): x/image/webp's readAlpha decodes it as a
// VP8L bitstream behind a header it makes from the canvas's size, w x h.
func vp8lAlphaCodeBytes(data []byte, w, h int) (int64, error) {
	if w < 1 || h < 1 || w > 1<<14 || h > 1<<14 {
		return 0, fmt.Errorf("vp8l: alpha plane of %dx%d pixels", w, h)
	}
	p := newVP8LParser(data)
	err := p.image(w, h)
	return p.total, err
}

// vp8lParser reads a VP8L bitstream as x/image/vp8l's decoder does, up to
// the main image's pixels, and counts what the decoder allocates for the
// codes in total.
type vp8lParser struct {
	bits  vp8lBits
	total int64
	// The codes of the entropy-coded image being walked, and their symbols.
	codes   [5]vp8lCode
	symbols [vp8lAlphabets]uint16
	// Scratch: the code-length code and one code's lengths.
	clCode    vp8lCode
	clSymbols [vp8lCodeLengths]uint16
	lengths   [vp8lMaxAlphabet]uint8
	groups    vp8lGroupSet
}

func newVP8LParser(data []byte) *vp8lParser {
	p := &vp8lParser{bits: vp8lBits{data: data}}
	s := p.symbols[:]
	for i := range p.codes {
		n := vp8lAlphabetSizes[i]
		if i == 0 {
			n = vp8lMaxAlphabet
		}
		p.codes[i].symbols, s = s[:n:n], s[n:]
	}
	p.clCode.symbols = p.clSymbols[:]
	return p
}

// alloc counts an allocation of n bytes by the decoder.
func (p *vp8lParser) alloc(n int64) { p.total += goAllocBytes(n) }

// header reads what x/image/vp8l's decodeHeader reads.
func (p *vp8lParser) header() (w, h int, err error) {
	var f [5]uint32
	for i, n := range [5]uint{8, 14, 14, 1, 3} { // magic, w-1, h-1, alpha hint, version
		if f[i], err = p.bits.read(n); err != nil {
			return 0, 0, err
		}
	}
	if f[0] != 0x2f || f[4] != 0 {
		return 0, 0, fmt.Errorf("signature 0x%02x, version %d", f[0], f[4])
	}
	return int(f[1]) + 1, int(f[2]) + 1, nil
}

// image reads the transforms, as x/image/vp8l's Decode and decodeTransform
// do, then the main image's codes.
func (p *vp8lParser) image(w, h int) error {
	var seen [4]bool
	for {
		more, err := p.bits.read(1)
		if err != nil {
			return fmt.Errorf("vp8l transforms: %w", err)
		}
		if more == 0 {
			break
		}
		typ, nw, err := p.transform(w, h)
		if err != nil {
			return fmt.Errorf("vp8l transform %d: %w", typ, err)
		}
		if seen[typ] {
			return fmt.Errorf("vp8l: transform %d repeated", typ)
		}
		seen[typ], w = true, nw
	}
	if err := p.mainCodes(w, h); err != nil {
		return fmt.Errorf("vp8l image: %w", err)
	}
	return nil
}

// transform reads one transform (decodeTransform): its type, its image,
// and the width of the image after it.
func (p *vp8lParser) transform(w, h int) (typ uint32, nw int, err error) {
	if typ, err = p.bits.read(2); err != nil {
		return 0, 0, err
	}
	switch typ {
	case 0, 1: // predictor, cross-color: a mode for each tile
		bits, err := p.bits.read(3)
		if err != nil {
			return typ, 0, err
		}
		return typ, w, p.subImage(vp8lTiles(w, bits+2), vp8lTiles(h, bits+2), nil)
	case 3: // color indexing: the palette, then pixels packed by its size
		colors, err := p.bits.read(8)
		if err != nil {
			return typ, 0, err
		}
		colors++
		bits := uint32(0)
		switch {
		case colors <= 2:
			bits = 3
		case colors <= 4:
			bits = 2
		case colors <= 16:
			bits = 1
		}
		return typ, vp8lTiles(w, bits), p.subImage(int(colors), 1, nil)
	}
	return typ, w, nil // subtract green
}

// vp8lTiles is x/image/vp8l's nTiles: tiles of 1<<bits pixels over size.
func vp8lTiles(size int, bits uint32) int {
	return (size + 1<<bits - 1) >> bits
}

// colorCache reads an image's color cache size (decodePix), counts its
// entries (4 bytes each) and returns its bits (0: none).
func (p *vp8lParser) colorCache() (uint32, error) {
	use, err := p.bits.read(1)
	if err != nil || use == 0 {
		return 0, err
	}
	bits, err := p.bits.read(4)
	if err != nil {
		return 0, err
	}
	if bits < 1 || bits > vp8lMaxCacheBits {
		return 0, fmt.Errorf("color cache of %d bits", bits)
	}
	p.alloc(4 << bits)
	return bits, nil
}

// mainCodes reads the main image's color cache, entropy image and groups
// of codes (decodePix and decodeHuffmanGroups at the top level). It stops
// before the pixels.
func (p *vp8lParser) mainCodes(w, h int) error {
	cacheBits, err := p.colorCache()
	if err != nil {
		return err
	}
	meta, err := p.bits.read(1)
	if err != nil {
		return err
	}
	g := &p.groups
	*g = vp8lGroupSet{}
	groups, remap := 1, false
	if meta != 0 {
		bits, err := p.bits.read(3)
		if err != nil {
			return err
		}
		tw, th := vp8lTiles(w, bits+2), vp8lTiles(h, bits+2)
		if err := p.subImage(tw, th, g); err != nil {
			return fmt.Errorf("entropy image: %w", err)
		}
		// decodeHuffmanGroups remaps the indices to the ones used
		// where the highest is 1000 or more, or not below the number
		// of tiles (as libwebp does).
		groups = g.max + 1
		if remap = g.max >= 1000 || g.max >= tw*th; remap {
			groups = g.count
			p.alloc(2 * int64(g.max+1))
		}
	}
	p.alloc(vp8lGroupBytes * int64(groups))
	for i := range g.max + 1 {
		built := !remap || g.has(i)
		for j, size := range vp8lAlphabetSizes {
			if j == 0 && cacheBits > 0 {
				size += 1 << cacheBits
			}
			if err := p.code(size, built, nil); err != nil {
				return fmt.Errorf("group %d, code %d: %w", i, j, err)
			}
		}
	}
	return nil
}

// subImage reads an entropy-coded image of w x h pixels that is not the
// main image (decodePix): a transform's, or the entropy image, whose group
// indices go to groups when it is not nil. It decodes the pixels, not
// storing them, to find where the image ends.
func (p *vp8lParser) subImage(w, h int, groups *vp8lGroupSet) error {
	cacheBits, err := p.colorCache()
	if err != nil {
		return err
	}
	p.alloc(vp8lGroupBytes) // one group
	for j, size := range vp8lAlphabetSizes {
		if j == 0 && cacheBits > 0 {
			size += 1 << cacheBits
		}
		if err := p.code(size, true, &p.codes[j]); err != nil {
			return fmt.Errorf("code %d: %w", j, err)
		}
	}
	if err := p.pixels(w, h, cacheBits, groups); err != nil {
		return fmt.Errorf("pixels: %w", err)
	}
	return nil
}

// code reads one code's description, as decodeHuffmanTree does, for an
// alphabet of size symbols, and counts what the decoder allocates for it.
// built says whether the decoder builds the tree (its group is used): it
// checks and allocates only then. dec, when not nil, is set to decode
// with the code.
func (p *vp8lParser) code(size int, built bool, dec *vp8lCode) error {
	simple, err := p.bits.read(1)
	if err != nil {
		return err
	}
	if simple != 0 {
		return p.simpleCode(size, built, dec)
	}
	return p.normalCode(size, built, dec)
}

// simpleCode reads a code of one or two symbols (buildSimple): the first
// of 1 or 8 bits, the second of 8; the tree has a leaf for each, taking
// no bits for one symbol, one bit for two.
func (p *vp8lParser) simpleCode(size int, built bool, dec *vp8lCode) error {
	two, err := p.bits.read(1)
	if err != nil {
		return err
	}
	wide, err := p.bits.read(1)
	if err != nil {
		return err
	}
	n := 1 + int(two)
	var sym [2]uint32
	if sym[0], err = p.bits.read(1 + 7*uint(wide)); err != nil {
		return err
	}
	if n == 2 {
		if sym[1], err = p.bits.read(8); err != nil {
			return err
		}
	}
	if !built {
		return nil
	}
	for _, s := range sym[:n] {
		if int(s) >= size {
			return fmt.Errorf("symbol %d of %d", s, size)
		}
	}
	if dec != nil {
		dec.count = [vp8lMaxLength + 1]uint16{}
		dec.count[n-1] = uint16(n) // one symbol: no bits; two: one bit each
		dec.symbols[0], dec.symbols[1] = uint16(sym[0]), uint16(sym[1])
	}
	p.alloc(vp8lNodeBytes * int64(2*n-1))
	return nil
}

// normalCode reads a code given by its code lengths, themselves coded with
// the code-length code (decodeHuffmanTree, decodeCodeLengths).
func (p *vp8lParser) normalCode(size int, built bool, dec *vp8lCode) error {
	if err := p.codeLengthCode(); err != nil {
		return fmt.Errorf("code-length code: %w", err)
	}
	p.alloc(vp8lSymbolInts * int64(size)) // the lengths
	var lengths []uint8
	if dec != nil {
		lengths = p.lengths[:size]
		clear(lengths)
	}
	hist, err := p.readLengths(size, lengths)
	if err != nil {
		return fmt.Errorf("code lengths: %w", err)
	}
	if !built {
		return nil
	}
	n, ok := vp8lCodeOK(&hist)
	if !ok {
		return fmt.Errorf("invalid code: %d symbols", n)
	}
	p.alloc(vp8lNodeBytes * int64(2*n-1))
	if n > 1 {
		p.alloc(vp8lSymbolInts * int64(size)) // codeLengthsToCodes
	}
	if dec != nil {
		dec.build(&hist, lengths)
	}
	return nil
}

// codeLengthCode reads the code-length code into p.clCode (4 to 19
// lengths of 3 bits, in vp8lCodeLengthOrder) and counts what building it
// allocates: its nodes, and its canonical codes (19 uint32) when it has
// more than one symbol.
func (p *vp8lParser) codeLengthCode() error {
	k, err := p.bits.read(4)
	if err != nil {
		return err
	}
	var lengths [vp8lCodeLengths]uint8
	for _, s := range vp8lCodeLengthOrder[:k+4] {
		l, err := p.bits.read(3)
		if err != nil {
			return err
		}
		lengths[s] = uint8(l)
	}
	var hist [vp8lMaxLength + 1]int
	for _, l := range lengths {
		hist[l]++
	}
	n, ok := vp8lCodeOK(&hist)
	if !ok {
		return fmt.Errorf("invalid code: %d symbols", n)
	}
	p.clCode.build(&hist, lengths[:])
	p.alloc(vp8lNodeBytes * int64(2*n-1))
	if n > 1 {
		p.alloc(vp8lSymbolInts * vp8lCodeLengths)
	}
	return nil
}

// readLengths reads the lengths of a code of size symbols with p.clCode,
// as decodeCodeLengths does: an optional count of code-length symbols to
// read, then lengths 0 to 15, 16 (repeat the last non-zero length, 8 before
// any, 3 to 6 times), 17 and 18 (3 to 10, 11 to 138 zeros). It returns the
// count of each length (hist[0] is not kept) and, when lengths is not nil,
// sets each symbol's.
func (p *vp8lParser) readLengths(size int, lengths []uint8) (hist [vp8lMaxLength + 1]int, err error) {
	limit := size // code-length symbols to read at most
	capped, err := p.bits.read(1)
	if err != nil {
		return hist, err
	}
	if capped != 0 {
		nb, err := p.bits.read(3)
		if err != nil {
			return hist, err
		}
		m, err := p.bits.read(2 + 2*uint(nb))
		if err != nil {
			return hist, err
		}
		if limit = int(m) + 2; limit > size {
			return hist, fmt.Errorf("%d code lengths for %d symbols", limit, size)
		}
	}
	prev := uint8(8)
	for sym := 0; sym < size && limit > 0; {
		cl := &p.clCode
		if cl.count[0] == 1 && cl.symbols[0] < 16 {
			// A code-length code of one literal length takes no
			// bits: the rest is that length, up to the limit.
			run := min(limit, size-sym)
			sym, limit = vp8lSetLengths(&hist, lengths, sym, run, uint8(cl.symbols[0])), limit-run
			continue
		}
		limit--
		s, err := cl.next(&p.bits)
		if err != nil {
			return hist, err
		}
		if s < 16 {
			sym = vp8lSetLengths(&hist, lengths, sym, 1, uint8(s))
			if s != 0 {
				prev = uint8(s)
			}
			continue
		}
		run, l, err := p.repeat(s, prev)
		if err != nil {
			return hist, err
		}
		if sym+run > size {
			return hist, fmt.Errorf("a run of %d lengths past symbol %d of %d", run, sym, size)
		}
		sym = vp8lSetLengths(&hist, lengths, sym, run, l)
	}
	return hist, nil
}

// repeat reads the count of a repeat code (16, 17 or 18) and returns it
// with the length it repeats: prev for 16, 0 for the others.
func (p *vp8lParser) repeat(s uint32, prev uint8) (int, uint8, error) {
	extra, base, l := [3]uint{2, 3, 7}[s-16], [3]int{3, 3, 11}[s-16], uint8(0)
	if s == 16 {
		l = prev
	}
	r, err := p.bits.read(extra)
	return int(r) + base, l, err
}

// vp8lSetLengths gives the run symbols from sym on length l, and returns
// the symbol after them.
func vp8lSetLengths(hist *[vp8lMaxLength + 1]int, lengths []uint8, sym, run int, l uint8) int {
	if l != 0 {
		hist[l] += run
		if lengths != nil {
			for i := range run {
				lengths[sym+i] = l
			}
		}
	}
	return sym + run
}

// vp8lCodeOK says whether x/image/vp8l's hTree.build accepts code lengths
// with this count of each non-zero length, and how many symbols they give.
// build places the canonical codes in a tree of 2n-1 nodes and fails where
// one is a prefix of another or a node would be past them. So it accepts
// one symbol (a code of no bits, whatever its length), a complete code
// (the lengths' Kraft sum is 1), and an over-full code of a single length
// m with more than 2^m symbols: their codes wrap around modulo 2^m, and
// each of the 2^m codes decodes to the last symbol given it. It refuses no
// symbols, an incomplete code (the tree would need more nodes), and any
// other over-full code (a code wraps onto a shorter one).
func vp8lCodeOK(hist *[vp8lMaxLength + 1]int) (n int, ok bool) {
	kraft, lens := 0, 0
	for l := 1; l <= vp8lMaxLength; l++ {
		if hist[l] > 0 {
			n += hist[l]
			kraft += hist[l] << (vp8lMaxLength - l)
			lens++
		}
	}
	return n, n == 1 || kraft == 1<<vp8lMaxLength || (lens == 1 && kraft > 1<<vp8lMaxLength)
}

// vp8lCode decodes with a code that vp8lCodeOK accepts, bit by bit in
// canonical order: count[l] codes of l bits, their symbols in code order.
// count[0] == 1 is a code of one symbol and no bits. This is what
// x/image/vp8l's hTree.next gives for the trees hTree.build accepts.
type vp8lCode struct {
	count   [vp8lMaxLength + 1]uint16
	symbols []uint16
}

// build sets the code from its lengths (hist their count, as vp8lCodeOK
// accepted them).
func (c *vp8lCode) build(hist *[vp8lMaxLength + 1]int, lengths []uint8) {
	c.count = [vp8lMaxLength + 1]uint16{}
	n, lens, m := 0, 0, 0
	for l := 1; l <= vp8lMaxLength; l++ {
		if hist[l] > 0 {
			n, lens, m = n+hist[l], lens+1, l
		}
	}
	switch {
	case n == 1:
		c.count[0] = 1
		for s, l := range lengths {
			if l != 0 {
				c.symbols[0] = uint16(s)
			}
		}
	case lens == 1 && hist[m] > 1<<m:
		// Over-full: code j goes to the last symbol whose rank is j
		// modulo 2^m.
		c.count[m] = 1 << m
		r := 0
		for s, l := range lengths {
			if l != 0 {
				c.symbols[r&(1<<m-1)] = uint16(s)
				r++
			}
		}
	default:
		var next [vp8lMaxLength + 2]int
		for l := 1; l <= vp8lMaxLength; l++ {
			c.count[l] = uint16(hist[l])
			next[l+1] = next[l] + hist[l]
		}
		for s, l := range lengths {
			if l != 0 {
				c.symbols[next[l]] = uint16(s)
				next[l]++
			}
		}
	}
}

// next decodes a symbol, one bit at a time, most significant bit of the
// code first.
func (c *vp8lCode) next(b *vp8lBits) (uint32, error) {
	if c.count[0] == 1 {
		return uint32(c.symbols[0]), nil
	}
	code, first, index := 0, 0, 0
	for l := 1; l <= vp8lMaxLength; l++ {
		bit, err := b.read(1)
		if err != nil {
			return 0, err
		}
		code |= int(bit)
		n := int(c.count[l])
		if code-first < n {
			return uint32(c.symbols[index+code-first]), nil
		}
		index, first = index+n, (first+n)<<1
		code <<= 1
	}
	return 0, errors.New("no symbol") // not for a code vp8lCodeOK accepts
}

// pixels walks the w x h pixels of a sub-image coded with p.codes, as
// decodePix's loop does, without storing them: literals, LZ77 copies of
// earlier pixels (checked to stay inside the image) and color cache
// look-ups. groups, when not nil, gets each pixel's group index (red << 8
// | green): a copy or a cached color repeats an earlier pixel, except a
// look-up of a cache entry no earlier pixel filled, which gives 0.
func (p *vp8lParser) pixels(w, h int, cacheBits uint32, groups *vp8lGroupSet) error {
	total, cacheSize := w*h, 0
	if cacheBits > 0 {
		cacheSize = 1 << cacheBits
	}
	if done, err := p.constantPixels(cacheSize, groups); done || err != nil {
		return err
	}
	green, red, blue, alpha := &p.codes[0], &p.codes[1], &p.codes[2], &p.codes[3]
	for pos := 0; pos < total; {
		g, err := green.next(&p.bits)
		if err != nil {
			return err
		}
		switch {
		case g < vp8lLiterals:
			var argb [3]uint32
			for i, c := range [3]*vp8lCode{red, blue, alpha} {
				if argb[i], err = c.next(&p.bits); err != nil {
					return err
				}
			}
			if groups != nil {
				if err := groups.add(int(argb[0])<<8 | int(g)); err != nil {
					return err
				}
				if cacheBits > 0 {
					groups.fill((argb[2]<<24 | argb[0]<<16 | g<<8 | argb[1]) * vp8lColorCache >> (32 - cacheBits))
				}
			}
			pos++
		case g < vp8lLiterals+vp8lLengthCodes:
			n, err := p.copyLength(g-vp8lLiterals, w, pos)
			if err != nil {
				return err
			}
			if pos+n > total {
				return fmt.Errorf("a copy of %d pixels at %d of %d", n, pos, total)
			}
			pos += n
		default:
			k := int(g) - vp8lLiterals - vp8lLengthCodes
			if k >= cacheSize {
				return fmt.Errorf("color cache entry %d of %d", k, cacheSize)
			}
			if groups != nil && !groups.filled(uint32(k)) {
				if err := groups.add(0); err != nil {
					return err
				}
				groups.fill(0) // the hash of 0
			}
			pos++
		}
	}
	return nil
}

// constantPixels handles the images whose every pixel takes no bits:
// green of one symbol, a literal with red, blue and alpha of one symbol
// each (every pixel is that color), or a cache look-up (the cache holds
// only zeros, so every pixel is 0). done says it did.
func (p *vp8lParser) constantPixels(cacheSize int, groups *vp8lGroupSet) (done bool, err error) {
	green := &p.codes[0]
	if green.count[0] != 1 {
		return false, nil
	}
	g := int(green.symbols[0])
	switch {
	case g < vp8lLiterals:
		for _, c := range p.codes[1:4] {
			if c.count[0] != 1 {
				return false, nil
			}
		}
		if groups != nil {
			err = groups.add(int(p.codes[1].symbols[0])<<8 | g)
		}
		return true, err
	case g >= vp8lLiterals+vp8lLengthCodes && g-vp8lLiterals-vp8lLengthCodes < cacheSize:
		if groups != nil {
			err = groups.add(0)
		}
		return true, err
	}
	return false, nil
}

// copyLength reads an LZ77 copy after its length prefix (as decodePix and
// lz77Param do) and returns its length, checking that its distance stays
// inside the image: at most pos pixels back, in an image w wide.
func (p *vp8lParser) copyLength(prefix uint32, w, pos int) (int, error) {
	n, err := p.lz77(prefix)
	if err != nil {
		return 0, err
	}
	dprefix, err := p.codes[4].next(&p.bits)
	if err != nil {
		return 0, err
	}
	code, err := p.lz77(dprefix)
	if err != nil {
		return 0, err
	}
	d := code - len(vp8lDistanceOffsets) // distanceMap
	if code <= len(vp8lDistanceOffsets) {
		o := vp8lDistanceOffsets[code-1]
		d = max(int(o[0])+int(o[1])*w, 1)
	}
	if d > pos {
		return 0, fmt.Errorf("a copy from %d pixels back at %d", d, pos)
	}
	return n, nil
}

// lz77 reads the value of a length or distance prefix: 1 to 4 for prefixes
// 0 to 3, then ranges of a power of two, their offset in extra bits.
func (p *vp8lParser) lz77(prefix uint32) (int, error) {
	if prefix < 4 {
		return int(prefix) + 1, nil
	}
	extra := uint(prefix-2) >> 1
	v, err := p.bits.read(extra)
	if err != nil {
		return 0, err
	}
	return int((2+prefix&1)<<extra+v) + 1, nil
}

// vp8lGroupSet is what the entropy image tells of the groups: the highest
// index (decodeHuffmanGroups' maxHGroupIndex), the indices used and their
// count, and which color cache entries its pixels have filled.
type vp8lGroupSet struct {
	max, count int
	used       [(vp8lMaxGroups + 63) / 64]uint64
	cache      [(1 << vp8lMaxCacheBits) / 64]uint64
}

// add records a pixel's group index; x/image/vp8l refuses 2600 or more.
func (g *vp8lGroupSet) add(i int) error {
	if i >= vp8lMaxGroups {
		return fmt.Errorf("group index %d, limit %d", i, vp8lMaxGroups-1)
	}
	if !g.has(i) {
		g.used[i/64] |= 1 << (i % 64)
		g.count++
	}
	g.max = max(g.max, i)
	return nil
}

func (g *vp8lGroupSet) has(i int) bool { return g.used[i/64]&(1<<(i%64)) != 0 }

func (g *vp8lGroupSet) fill(k uint32) { g.cache[k/64] |= 1 << (k % 64) }

func (g *vp8lGroupSet) filled(k uint32) bool { return g.cache[k/64]&(1<<(k%64)) != 0 }

// vp8lBits reads a VP8L bitstream least significant bit first, as
// x/image/vp8l's decoder.read does; past the end is an error there too.
type vp8lBits struct {
	data []byte
	acc  uint64
	n    uint
}

func (b *vp8lBits) read(n uint) (uint32, error) {
	for b.n < n {
		if len(b.data) == 0 {
			return 0, errVP8LShort
		}
		b.acc |= uint64(b.data[0]) << b.n
		b.data, b.n = b.data[1:], b.n+8
	}
	v := uint32(b.acc & (1<<n - 1))
	b.acc >>= n
	b.n -= n
	return v, nil
}

// goSizeClasses are the Go runtime's allocation sizes up to 32 KiB
// (internal/runtime/gc.SizeClassToSize).
var goSizeClasses = [...]int64{8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256,
	288, 320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792, 2048,
	2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728, 10240, 10880,
	12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672, 32768}

// goAllocBytes is what an allocation of n bytes adds to Go's count of
// allocated bytes (runtime.MemStats.TotalAlloc): n rounded up to its size
// class, at least a 16-byte block (small objects without pointers share
// them), or to whole 8 KiB pages past 32 KiB.
func goAllocBytes(n int64) int64 {
	if n > goSizeClasses[len(goSizeClasses)-1] {
		return (n + 8191) &^ 8191
	}
	for _, c := range goSizeClasses[1:] {
		if n <= c {
			return c
		}
	}
	return n
}
