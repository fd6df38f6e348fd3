package imageprep

import (
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"image"
	"io"

	"github.com/batchgate/batchgate/proxy/imageprep/libdeflate"
)

// The PNG fast path: 8-bit gray, RGB and RGBA files without interlacing,
// transparency chunk or palette, which is what cameras, screenshots and
// PIL write. It inflates the image data in one call (libdeflate where the
// build has it, else compress/zlib), undoes the row filters in place, and
// hands the rows to the resize as they lie, with no conversion. Go's
// image/png decodes the same pixels at about 1.4 times PIL's time on a
// 1600x1200 photo, two thirds of it in compress/flate and its Paeth
// filter (docs/performance.md).
//
// The fast path never decides that a file is bad: whatever it does not
// recognise exactly (another layout, a chunk out of the expected order, a
// CRC, zlib or filter error, data left over) sends the file to image/png,
// whose verdict and pixels are the reference. FuzzPNG checks that
// whatever the fast path takes, image/png decodes to the same rows.

// pngSig is the 8-byte PNG signature.
const pngSig = "\x89PNG\r\n\x1a\n"

// fastPNGLayout reports whether IHDR's depth, color type and interlace
// method are the fast path's, and the bytes a pixel then takes.
func fastPNGLayout(depth, ctype, interlace byte) (bpp int, ok bool) {
	if depth != 8 || interlace != 0 {
		return 0, false
	}
	switch ctype {
	case 0:
		return 1, true
	case 2:
		return 3, true
	case 6:
		return 4, true
	}
	return 0, false
}

// pngFastBytes is the memory the fast path takes for an image: the filtered
// rows (a filter byte and w*bpp samples each) and, for libdeflate, one
// contiguous copy of the image data, at most the file's size.
func pngFastBytes(w, h, bpp, fileSize int) int64 {
	n := int64(h) * (1 + int64(w)*int64(bpp))
	if libdeflate.Available {
		n += int64(fileSize)
	}
	return n + 64<<10
}

// decodePNGFast decodes data, whose header Inspect returned as h, on the
// fast path into s. ok is false when the file is not one for the fast
// path, or anything in it is not as expected: then decode it with
// image/png.
func decodePNGFast(data []byte, h Header, s *scratch) (r *rowReader, ok bool) {
	if !h.fastPNG || len(data) < len(pngSig)+25 || string(data[:len(pngSig)]) != pngSig {
		return nil, false
	}
	// The chunks: IHDR first, then any ancillary chunks image/png skips,
	// one run of IDAT chunks, ancillary chunks again, and IEND. Every
	// chunk's CRC is checked, as image/png does.
	var idat [][]byte
	idatBytes, state := 0, 0 // 0: before IDAT, 1: in the IDAT run, 2: after it
	var ihdr []byte
	for p := len(pngSig); ; {
		if p+12 > len(data) {
			return nil, false
		}
		n := binary.BigEndian.Uint32(data[p:])
		if n > 0x7fffffff || int64(n) > int64(len(data)-p-12) {
			return nil, false
		}
		typ, body := data[p+4:p+8], data[p+8:p+8+int(n)]
		if crc32.ChecksumIEEE(data[p+4:p+8+int(n)]) != binary.BigEndian.Uint32(data[p+8+int(n):]) {
			return nil, false
		}
		p += 12 + int(n)
		switch t := string(typ); {
		case ihdr == nil:
			if t != "IHDR" || n != 13 {
				return nil, false
			}
			ihdr = body
		case t == "IDAT":
			if state == 2 {
				return nil, false
			}
			state = 1
			idat = append(idat, body)
			idatBytes += len(body)
		case t == "IEND":
			if state == 0 {
				return nil, false
			}
			return s.pngRows(ihdr, idat, idatBytes, h)
		case typ[0]&0x20 == 0, t == "tRNS":
			// A critical chunk (PLTE, or one image/png does not
			// know) or transparency: image/png's rules decide.
			return nil, false
		default:
			if state == 1 {
				state = 2
			}
		}
	}
}

// pngRows inflates and unfilters the image data into s.pix and returns a
// rowReader over it.
func (s *scratch) pngRows(ihdr []byte, idat [][]byte, idatBytes int, h Header) (*rowReader, bool) {
	w, ht := int(binary.BigEndian.Uint32(ihdr)), int(binary.BigEndian.Uint32(ihdr[4:]))
	bpp, ok := fastPNGLayout(ihdr[8], ihdr[9], ihdr[12])
	if !ok || ihdr[10] != 0 || ihdr[11] != 0 || w != h.Width || ht != h.Height || w == 0 || ht == 0 {
		return nil, false
	}
	stride := 1 + w*bpp
	raw := grow(&s.pix, ht*stride)
	if libdeflate.Available {
		src := idat[0]
		if len(idat) > 1 {
			src = grow(&s.idat, idatBytes)[:0]
			for _, b := range idat {
				src = append(src, b...)
			}
		}
		if used, err := libdeflate.Zlib(raw, src); err != nil || used != len(src) {
			return nil, false
		}
	} else if !inflateGo(raw, idat) {
		return nil, false
	}
	if !unfilter(raw, stride, bpp) {
		return nil, false
	}
	r := &rowReader{b: image.Rect(0, 0, w, ht)}
	switch bpp {
	case 1:
		r.gray = &image.Gray{Pix: raw[1:], Stride: stride, Rect: r.b}
	case 3:
		r.rgb, r.rstride = raw[1:], stride
	default:
		r.pix, r.stride = raw[1:], stride
	}
	return r, true
}

// inflateGo is libdeflate.Zlib with compress/zlib: the stream across the
// IDAT chunks must fill raw exactly, end with a good checksum, and use all
// of the chunks' bytes.
func inflateGo(raw []byte, idat [][]byte) bool {
	in := &chunkReader{chunks: idat}
	zr, err := zlib.NewReader(in)
	if err != nil {
		return false
	}
	if _, err := io.ReadFull(zr, raw); err != nil {
		return false
	}
	// One more read reaches the end of the stream and checks the
	// Adler-32 checksum; then no byte may be left.
	var one [1]byte
	if n, err := zr.Read(one[:]); n != 0 || err != io.EOF {
		return false
	}
	_, err = in.ReadByte()
	return err == io.EOF
}

// chunkReader reads the IDAT chunks' bytes in turn. It is an io.ByteReader,
// so compress/flate reads from it byte by byte, without a read-ahead
// buffer, and what is left after the stream is left here.
type chunkReader struct {
	chunks [][]byte
}

func (r *chunkReader) ReadByte() (byte, error) {
	for len(r.chunks) > 0 && len(r.chunks[0]) == 0 {
		r.chunks = r.chunks[1:]
	}
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	b := r.chunks[0][0]
	r.chunks[0] = r.chunks[0][1:]
	return b, nil
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.chunks) > 0 && len(r.chunks[0]) == 0 {
		r.chunks = r.chunks[1:]
	}
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks[0] = r.chunks[0][n:]
	return n, nil
}

// unfilter undoes PNG's row filters in place: raw holds rows of stride
// bytes, a filter type byte then the samples, bpp bytes a pixel. It is
// false on an unknown filter type.
func unfilter(raw []byte, stride, bpp int) bool {
	var prev []byte // the previous row's samples; none for the first row
	for y := 0; y+stride <= len(raw); y += stride {
		cur := raw[y+1 : y+stride]
		switch raw[y] {
		case 0:
		case 1: // Sub
			for i := bpp; i < len(cur); i++ {
				cur[i] += cur[i-bpp]
			}
		case 2: // Up
			if prev != nil {
				for i, b := range prev[:len(cur)] {
					cur[i] += b
				}
			}
		case 3: // Average
			if prev == nil {
				for i := bpp; i < len(cur); i++ {
					cur[i] += cur[i-bpp] / 2
				}
				break
			}
			prev := prev[:len(cur)]
			for i := range bpp {
				cur[i] += prev[i] / 2
			}
			for i := bpp; i < len(cur); i++ {
				cur[i] += uint8((int(cur[i-bpp]) + int(prev[i])) / 2)
			}
		case 4: // Paeth
			if prev == nil {
				// With the row above all zero, Paeth picks the
				// left neighbour: Sub.
				for i := bpp; i < len(cur); i++ {
					cur[i] += cur[i-bpp]
				}
				break
			}
			paeth(cur, prev[:len(cur)], bpp)
		default:
			return false
		}
		prev = cur
	}
	return true
}

// paeth undoes the Paeth filter on one row, branch-free: on photos the
// predictor's choice is close to random, and a mispredicted branch per
// byte was most of image/png's time in it. For RGB and RGBA the left and
// upper-left pixels stay in registers, one chain per channel, so that no
// byte waits for the store of the one before it.
func paeth(cur, prev []byte, bpp int) {
	for i := range bpp {
		cur[i] += prev[i] // a = c = 0: the predictor is b
	}
	switch bpp {
	case 3:
		paeth3(cur, prev)
		return
	case 4:
		paeth4(cur, prev)
		return
	}
	for i := bpp; i < len(cur); i++ {
		cur[i] += paethPredict(int(cur[i-bpp]), int(prev[i]), int(prev[i-bpp]))
	}
}

// paethPredict is the Paeth predictor of a (left), b (above) and c (upper
// left): a when |b-c| <= |a-c| and |b-c| <= |a+b-2c|; else b when
// |a-c| <= |a+b-2c|; else c.
func paethPredict(a, b, c int) uint8 {
	pa, pb, pc := max(b-c, c-b), max(a-c, c-a), max(a+b-2*c, 2*c-a-b)
	if pb <= pc {
		c = b
	}
	if pa <= min(pb, pc) {
		c = a
	}
	return uint8(c)
}

func paeth3(cur, prev []byte) {
	a0, a1, a2 := int(cur[0]), int(cur[1]), int(cur[2])
	c0, c1, c2 := int(prev[0]), int(prev[1]), int(prev[2])
	for i := 3; i+3 <= len(cur) && i+3 <= len(prev); i += 3 {
		x, p := cur[i:i+3:i+3], prev[i:i+3:i+3]
		b0, b1, b2 := int(p[0]), int(p[1]), int(p[2])
		x[0] += paethPredict(a0, b0, c0)
		x[1] += paethPredict(a1, b1, c1)
		x[2] += paethPredict(a2, b2, c2)
		a0, a1, a2 = int(x[0]), int(x[1]), int(x[2])
		c0, c1, c2 = b0, b1, b2
	}
}

func paeth4(cur, prev []byte) {
	a0, a1, a2, a3 := int(cur[0]), int(cur[1]), int(cur[2]), int(cur[3])
	c0, c1, c2, c3 := int(prev[0]), int(prev[1]), int(prev[2]), int(prev[3])
	for i := 4; i+4 <= len(cur) && i+4 <= len(prev); i += 4 {
		x, p := cur[i:i+4:i+4], prev[i:i+4:i+4]
		b0, b1, b2, b3 := int(p[0]), int(p[1]), int(p[2]), int(p[3])
		x[0] += paethPredict(a0, b0, c0)
		x[1] += paethPredict(a1, b1, c1)
		x[2] += paethPredict(a2, b2, c2)
		x[3] += paethPredict(a3, b3, c3)
		a0, a1, a2, a3 = int(x[0]), int(x[1]), int(x[2]), int(x[3])
		c0, c1, c2, c3 = b0, b1, b2, b3
	}
}
