package imageprep

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"

	"github.com/batchgate/batchgate/proxy/imageprep/libwebp"
	"github.com/batchgate/batchgate/proxy/imageprep/turbojpeg"
)

// Header is what Inspect learns from an image's header, before any pixel is
// decoded.
type Header struct {
	Format        string // "jpeg", "png", "gif" or "webp"
	Width, Height int
	// decodeBytes is the memory Go's decoder allocates for the image: the
	// decoded pixels in the form it returns them, and its working buffers
	// that grow with the image (progressive JPEG coefficients, interlaced
	// PNG passes and rows, WebP transforms, frame data and the Huffman
	// codes of a lossless bitstream, read from it). The fixed ones
	// are in goDecodeBytes. TestEstimateCoversDecode checks it against what
	// each decoder allocates.
	decodeBytes int64
	// direct is true when Preprocess reads the decoded image's pixels in
	// place; otherwise it converts the image to 8-bit NRGBA first.
	direct bool
	// JPEG only: color components (1, 3 or 4), samples of all components
	// in whole blocks, and progressive coding.
	components  int
	samples     int64
	progressive bool
	fullSize    bool // Limits.FullSizeJPEG
	// PNG only: the file's layout is the fast path's (png.go), which
	// takes fastBytes.
	fastPNG   bool
	fastBytes int64
	// WebP only: where the lossy frame (the "VP8 " chunk's payload)
	// lies in the file; vp8Len 0 for lossless WebP.
	vp8Off, vp8Len int
}

// MemoryBytes estimates the most memory that decoding and preprocessing the
// image with p take at once: the decoded image, the decoder's working
// buffers, a conversion to 8-bit RGBA where one is needed, and the resize
// buffers. The proxy reserves it from its decode budget before decoding.
func (h Header) MemoryBytes(p Params) int64 {
	n := h.goDecodeBytes()
	if h.fastPNG {
		// The fast path, or image/png when it declines the file.
		n = max(n, h.fastBytes)
	}
	width := int64(h.Width)
	if h.Format == "jpeg" && turbojpeg.Available {
		n = h.turboBytes(ScaleDenom(h, p)) + 64<<10
		width = int64((h.Width + 7) / 8 * 8)
	}
	if h.libwebp() {
		// The RGB pixels in Go, libwebp's state for the frame in C.
		n = 3*int64(h.Width)*int64(h.Height) + libwebp.MemoryBytes(h.Width, h.Width)
	}
	// Resize: the horizontal pass keeps up to every source row of the
	// crop, p.Width RGB bytes each, plus one converted source row and
	// the vertical pass's sums.
	return n + int64(h.Height)*int64(p.Width)*3 + width*3 + int64(p.Width)*12
}

// goDecodeBytes is the memory of decoding the image with Go's decoders and
// reading it for the resize: decodeBytes, a conversion to 8-bit NRGBA where
// the decoded type is not read in place, and 256 KiB for what does not grow
// with the image: the decoders' tables and buffers (18 KiB for JPEG, 33 for
// GIF, 50 for PNG), and the Huffman tables zlib makes for each deflate
// block of a PNG (100 to 150 KiB for photos, garbage as soon as made).
func (h Header) goDecodeBytes() int64 {
	n := h.decodeBytes
	if !h.direct {
		n += 4 * int64(h.Width) * int64(h.Height)
	}
	return n + 256<<10
}

// turboBytes is what libjpeg-turbo takes to decode the JPEG at 1/denom: the
// output pixels, the whole image's coefficients when progressive (2 bytes a
// sample, at full size whatever the scale), and its row buffers and tables.
func (h Header) turboBytes(denom int) int64 {
	w, ht := turbojpeg.ScaledSize(h.Width, h.Height, denom)
	bpp := int64(3)
	switch h.components {
	case 1:
		bpp = 1
	case 4:
		bpp = 4
	}
	n := int64(w) * int64(ht) * bpp
	if h.progressive {
		n += 2 * h.samples
	}
	// An MCU row of every component (up to 16 lines, 2 bytes a sample
	// while upsampling) and the decompressor's tables.
	return n + 64*int64(h.Width+16)*int64(h.components) + 256<<10
}

// Inspect reads the image's header: the format (ErrFormat), the size and the
// pixel budgets (ErrTooLarge), and what decoding will cost. It decodes no
// pixel data. Errors wrap ErrFormat, ErrTooLarge or ErrCorrupt.
//
// Decoding's CPU is bounded here, by refusal, not by a deadline: every
// decoder's time grows with the pixels it decodes (Go's lossless WebP and
// PNG decoders are the slowest, up to about 200 ns a pixel on a 2-core VM),
// and a decode cannot be stopped once started: Go's decoders take no
// context, a goroutine cannot be killed, and a deadline on the reader
// would not fire (a lossless WebP of one color decodes 36 million pixels
// from its 46 bytes, reading none while it does). So the pixels are
// capped, absolutely (MaxPixels) and per byte sent (MaxPixelsPerByte), and
// a GIF costs only its first frame, the only one image/gif.Decode reads.
func Inspect(data []byte, lim Limits) (Header, error) {
	if lim.MaxPixels == 0 {
		lim.MaxPixels = DefaultMaxPixels
	}
	if lim.MaxPixelsPerByte == 0 {
		lim.MaxPixelsPerByte = DefaultMaxPixelsPerByte
	}
	var h Header
	var err error
	switch {
	case bytes.HasPrefix(data, []byte("\xff\xd8\xff")): // SOI and a marker, as PIL identifies JPEG
		h, err = inspectJPEG(data)
	case bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")):
		h, err = inspectPNG(data)
	case bytes.HasPrefix(data, []byte("GIF87a")), bytes.HasPrefix(data, []byte("GIF89a")):
		h, err = inspectGIF(data)
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		h, err = inspectWebP(data)
	default:
		return Header{}, ErrFormat
	}
	if errors.Is(err, ErrFormat) {
		return Header{}, err
	}
	if err != nil {
		return Header{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if h.Width <= 0 || h.Height <= 0 {
		return Header{}, fmt.Errorf("%w: %dx%d pixels", ErrCorrupt, h.Width, h.Height)
	}
	px := int64(h.Width) * int64(h.Height)
	if px > int64(lim.MaxPixels) {
		return Header{}, fmt.Errorf("%w: %dx%d, limit %d pixels", ErrTooLarge, h.Width, h.Height, lim.MaxPixels)
	}
	if lim.MaxPixelsPerByte > 0 && px > SmallImagePixels && px > int64(lim.MaxPixelsPerByte)*int64(len(data)) {
		return Header{}, fmt.Errorf("%w: %dx%d pixels in %d bytes (%d a byte), over the cap of %d pixels a byte for images of more than %d pixels: "+
			"send it scaled down or less compressed, or raise the server's MAX_PIXELS_PER_BYTE",
			ErrPixelsPerByte, h.Width, h.Height, len(data), px/int64(max(len(data), 1)), lim.MaxPixelsPerByte, SmallImagePixels)
	}
	h.fullSize = lim.FullSizeJPEG
	return h, nil
}

// inspectJPEG walks the markers up to the frame header (SOFn).
func inspectJPEG(data []byte) (Header, error) {
	p := 2
	jfif := false
	for {
		// The next marker as libjpeg (and Go's decoder) finds it: stray
		// bytes are skipped (libjpeg warns), and so are any number of
		// 0xff fill bytes; 0xff 0x00 is stray too.
		for p < len(data) && data[p] != 0xff {
			p++
		}
		for p+1 < len(data) && data[p+1] == 0xff {
			p++
		}
		if p+4 > len(data) {
			return Header{}, errors.New("jpeg: no frame header")
		}
		marker := data[p+1]
		if marker == 0x00 || marker == 0xd8 || marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7) {
			p += 2 // no length
			continue
		}
		n := int(binary.BigEndian.Uint16(data[p+2:]))
		if n < 2 || p+2+n > len(data) {
			return Header{}, errors.New("jpeg: bad segment length")
		}
		seg := data[p+4 : p+2+n]
		p += 2 + n
		switch marker {
		case 0xe0:
			jfif = jfif || bytes.HasPrefix(seg, []byte("JFIF\x00"))
		case 0xc0, 0xc1, 0xc2: // baseline, extended, progressive (what Go decodes)
			h, err := jpegFrame(seg, marker == 0xc2)
			// Go's decoder converts a 3-component image it takes for
			// RGB to RGBA: one without JFIF whose components are named
			// R, G, B or that has an Adobe segment (transform 0).
			if err == nil && h.components == 3 && !jfif &&
				(string([]byte{seg[6], seg[9], seg[12]}) == "RGB" || bytes.Contains(data, []byte("Adobe"))) {
				h.decodeBytes += 4 * int64(h.Width) * int64(h.Height)
			}
			return h, err
		case 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf:
			return Header{}, errors.New("jpeg: unsupported coding (lossless, hierarchical or arithmetic)")
		case 0xd9, 0xda:
			return Header{}, errors.New("jpeg: no frame header before the scan")
		}
	}
}

// jpegFrame reads a SOF segment: size, components and their sampling.
func jpegFrame(seg []byte, progressive bool) (Header, error) {
	if len(seg) < 6 {
		return Header{}, errors.New("jpeg: short frame header")
	}
	h := Header{Format: "jpeg", Height: int(binary.BigEndian.Uint16(seg[1:])), Width: int(binary.BigEndian.Uint16(seg[3:]))}
	nc := int(seg[5])
	if (nc != 1 && nc != 3 && nc != 4) || len(seg) < 6+3*nc {
		return Header{}, fmt.Errorf("jpeg: %d components", nc)
	}
	hmax, vmax := 1, 1
	for i := range nc {
		hv := seg[6+3*i+1]
		hmax, vmax = max(hmax, int(hv>>4)), max(vmax, int(hv&15))
	}
	// Go's decoder allocates whole 8x8 blocks per component (MCU rounded),
	// one byte a sample; progressive images also keep every block's
	// coefficients (64 int32) until the end.
	mcuW, mcuH := (h.Width+8*hmax-1)/(8*hmax), (h.Height+8*vmax-1)/(8*vmax)
	var samples int64
	for i := range nc {
		hv := seg[6+3*i+1]
		hi, vi := int64(max(hv>>4, 1)), int64(max(hv&15, 1))
		samples += int64(mcuW) * 8 * hi * int64(mcuH) * 8 * vi
	}
	h.decodeBytes = samples
	h.components, h.samples, h.progressive = nc, samples, progressive
	if nc == 4 { // CMYK or YCCK: converted to 4 bytes a pixel
		h.decodeBytes += 4 * int64(h.Width) * int64(h.Height)
	}
	if progressive {
		h.decodeBytes += 4 * samples
	}
	h.direct = true // gray, YCbCr and CMYK are read in place
	return h, nil
}

// inspectPNG reads IHDR, and the chunks before the image data for tRNS,
// which changes the decoded type.
func inspectPNG(data []byte) (Header, error) {
	p := 8
	if p+8+13 > len(data) || string(data[p+4:p+8]) != "IHDR" || binary.BigEndian.Uint32(data[p:]) != 13 {
		return Header{}, errors.New("png: no IHDR")
	}
	ihdr := data[p+8 : p+8+13]
	w, ht := binary.BigEndian.Uint32(ihdr), binary.BigEndian.Uint32(ihdr[4:])
	if w > 1<<30 || ht > 1<<30 {
		return Header{}, errors.New("png: dimensions out of range")
	}
	h := Header{Format: "png", Width: int(w), Height: int(ht)}
	depth, ctype, interlaced := ihdr[8], ihdr[9], ihdr[12] == 1
	trns, plte := false, false
	for p += 8 + 13 + 4; p+8 <= len(data); {
		n := int64(binary.BigEndian.Uint32(data[p:]))
		typ := string(data[p+4 : p+8])
		if typ == "IDAT" || typ == "IEND" {
			break
		}
		trns = trns || typ == "tRNS"
		plte = plte || typ == "PLTE"
		if n > int64(len(data)) {
			break
		}
		p += 12 + int(n)
	}
	// Bytes a pixel of the image Go's png decoder returns.
	var bpp int64
	switch {
	case ctype == 3: // paletted, transparency in the palette
		bpp = 1
	case ctype == 0 && !trns: // gray
		bpp = int64(max(depth/8, 1))
	case depth == 16: // RGBA64 or NRGBA64
		bpp = 8
	default: // RGBA, NRGBA, gray with tRNS as NRGBA
		bpp = 4
	}
	px := int64(h.Width) * int64(h.Height)
	h.decodeBytes = bpp * px
	// The decoder's current and previous rows, as stored: the samples of
	// a pixel (one for gray and paletted, 2 for gray with alpha, 3 for
	// RGB, 4 for RGBA) at depth bits each, and the filter byte.
	samples := int64(map[byte]int{0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype])
	rows := 2 * (1 + (samples*int64(depth)*int64(h.Width)+7)/8)
	if interlaced {
		// Each pass is decoded into an image of its own, then merged:
		// the passes add up to the image again, and their rows (2
		// each) to 5.5 of the image's.
		h.decodeBytes *= 2
		rows *= 3
	}
	h.decodeBytes += rows
	// Read in place: 8-bit gray, paletted, RGBA and NRGBA.
	h.direct = depth <= 8
	if bpp, ok := fastPNGLayout(depth, ctype, ihdr[12]); ok && !trns && !plte {
		h.fastPNG, h.fastBytes = true, pngFastBytes(h.Width, h.Height, bpp, len(data))
	}
	return h, nil
}

// inspectOther uses the standard decoders' header parsing for GIF and WebP:
// the format and the size.
func inspectOther(data []byte, format string) (Header, error) {
	cfg, got, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return Header{}, err
	}
	if got != format {
		return Header{}, fmt.Errorf("%s header decoded as %s", format, got)
	}
	return Header{Format: format, Width: cfg.Width, Height: cfg.Height, direct: true}, nil
}

// inspectGIF: image/gif.Decode decodes the first frame only, into a
// paletted image of the frame's size (inside the logical screen, the
// image's size), and twice over when it is interlaced (the rows are
// reordered into a new image). Its LZW decoder and palettes are fixed
// costs.
func inspectGIF(data []byte) (Header, error) {
	h, err := inspectOther(data, "gif")
	if err != nil {
		return Header{}, err
	}
	px := int64(h.Width) * int64(h.Height)
	h.decodeBytes = 2 * px // where the first frame cannot be found
	if fw, fh, interlaced, ok := gifFirstFrame(data, h.Width, h.Height); ok {
		h.decodeBytes = int64(fw) * int64(fh)
		if interlaced {
			h.decodeBytes *= 2
		}
	}
	return h, nil
}

// gifFirstFrame finds the first image descriptor as image/gif reads the
// blocks before it, and returns the frame's size and interlacing; ok is
// false where the walk stops before it, or the frame is not inside the
// width x height screen (image/gif refuses it before allocating).
func gifFirstFrame(data []byte, width, height int) (w, h int, interlaced, ok bool) {
	p := 13
	if len(data) < p {
		return 0, 0, false, false
	}
	if flags := data[10]; flags&0x80 != 0 { // global color table
		p += 3 << (flags&7 + 1)
	}
	for p < len(data) {
		switch data[p] {
		case 0x21: // extension: as image/gif's readExtension skips it
			if p+2 > len(data) {
				return 0, 0, false, false
			}
			label := data[p+1]
			p += 2
			switch label {
			case 0xf9: // graphic control: fixed size, no sub-blocks
				p += 6
				continue
			case 0x01: // plain text: 13 bytes, then sub-blocks
				p += 13
			case 0xfe: // comment: sub-blocks
			case 0xff: // application: a sized block, then sub-blocks
				if p >= len(data) {
					return 0, 0, false, false
				}
				p += 1 + int(data[p])
			default:
				return 0, 0, false, false
			}
			for p < len(data) && data[p] != 0 {
				p += 1 + int(data[p])
			}
			p++
		case 0x2c: // image descriptor
			if p+10 > len(data) {
				return 0, 0, false, false
			}
			d := data[p+1:]
			left, top := int(binary.LittleEndian.Uint16(d)), int(binary.LittleEndian.Uint16(d[2:]))
			w, h = int(binary.LittleEndian.Uint16(d[4:])), int(binary.LittleEndian.Uint16(d[6:]))
			if left+w > width || top+h > height {
				return 0, 0, false, false
			}
			return w, h, d[8]&0x40 != 0, true
		default:
			return 0, 0, false, false
		}
	}
	return 0, 0, false, false
}

// inspectWebP walks the RIFF chunks as golang.org/x/image/webp decodes
// them, up to the image chunk it decodes, and sums what each allocates:
// an alpha plane (ALPH, raw or itself lossless-coded), then the lossy
// (VP8) or lossless (VP8L) image; a lossless bitstream's Huffman codes
// are sized by reading it up to its pixels (vp8lCodeBytes), and one it
// finds malformed there, which the decoder would fail on, is refused. A
// VP8X chunk only declares the canvas:
// its size is the image's, but what it holds decides the cost. An
// animated WebP (frames in ANMF chunks) is refused: x/image/webp decodes
// no frame of it. So is a VP8 or ALPH chunk cut short, which the decoder
// would read whole into memory (up to 128 MiB from its declared length)
// before failing.
func inspectWebP(data []byte) (Header, error) {
	h, err := inspectOther(data, "webp")
	if err != nil {
		return Header{}, err
	}
	w, ht := int64(h.Width), int64(h.Height)
	px := w * ht
	var animated, wantAlpha, seenVP8X, alpha bool
	// As x/image/riff reads the chunks: the RIFF size bounds them, and
	// an odd-sized chunk is followed by a padding byte.
	total := int64(binary.LittleEndian.Uint32(data[4:])) - 4
chunks:
	for p, pad := 12, int64(0); ; {
		if pad == 1 {
			if total == 0 {
				break
			}
			total, p = total-1, p+1
		}
		if total < 8 || p+8 > len(data) {
			break
		}
		total -= 8
		id, n := string(data[p:p+4]), int64(binary.LittleEndian.Uint32(data[p+4:]))
		if n > total {
			break
		}
		body := data[p+8:]
		cut := int64(len(body)) < n
		if !cut {
			body = body[:n]
		}
		switch id {
		case "VP8X":
			if seenVP8X || n != 10 || cut {
				break chunks // the decoder stops here, as below
			}
			seenVP8X = true
			wantAlpha, animated = body[0]&0x10 != 0, body[0]&0x02 != 0
		case "ALPH":
			if !wantAlpha {
				break chunks
			}
			wantAlpha = false
			if cut {
				return Header{}, errors.New("webp: ALPH chunk cut short")
			}
			switch {
			case n == 0:
			case body[0]&3 == 0: // raw
				h.decodeBytes += px
			case body[0]&3 == 1: // lossless: an NRGBA image, its green copied out
				codes, err := vp8lAlphaCodeBytes(body[1:], h.Width, h.Height)
				if err != nil {
					return Header{}, fmt.Errorf("webp: ALPH chunk: %w", err)
				}
				h.decodeBytes += vp8lBytes(w, ht) + codes + px
			}
			alpha = true
		case "VP8 ":
			if wantAlpha { // VP8X promised an ALPH chunk first
				break chunks
			}
			if cut {
				return Header{}, errors.New("webp: VP8 chunk cut short")
			}
			h.decodeBytes += vp8Bytes(w, ht, n)
			h.direct = !alpha // with alpha, NYCbCrA: converted to NRGBA
			h.vp8Off, h.vp8Len = p+8, int(n)
			return h, nil
		case "VP8L":
			// x/image/webp decodes what the chunk holds of the file,
			// and checks its size against a VP8X chunk's.
			vw, vh, codes, err := vp8lCodeBytes(body)
			if err != nil {
				return Header{}, fmt.Errorf("webp: VP8L chunk: %w", err)
			}
			if vw != h.Width || vh != h.Height {
				return Header{}, fmt.Errorf("webp: VP8L image of %dx%d in a %dx%d canvas", vw, vh, h.Width, h.Height)
			}
			h.decodeBytes += vp8lBytes(w, ht) + codes
			return h, nil
		}
		total -= n
		p += 8 + int(n)
		pad = n & 1
	}
	if animated {
		return Header{}, ErrAnimatedWebP
	}
	return Header{}, errors.New("webp: no image chunk the decoder can read")
}

// vp8Bytes is what x/image/vp8 allocates to decode a w x h lossy frame of n
// bytes: YCbCr 4:2:0 in whole 16x16 macroblocks (384 bytes each), 4 bytes
// of loop-filter parameters a macroblock, and the frame's data, read into
// memory whole.
func vp8Bytes(w, h, n int64) int64 {
	return 388*((w+15)/16)*((h+15)/16) + n
}

// vp8lBytes is what x/image/vp8l allocates to decode a w x h lossless
// image, whatever transforms the file uses: the NRGBA result (4 bytes a
// pixel); the color-indexing transform's packed indices (up to 2 bytes a
// pixel, for 3 to 16 colors), alive while they are unpacked into it; and
// the predictor, cross-color and Huffman-group images, 4 bytes for each
// tile of 4x4 pixels or more. Real files take 4.1 to 5 bytes a pixel.
//
// The Huffman codes, which the file sizes, not the header (up to 2600
// groups of five codes, each group up to 82 KB), are counted apart:
// vp8lCodeBytes reads them from the bitstream (vp8l.go).
func vp8lBytes(w, h int64) int64 {
	tiles := ((w + 3) / 4) * ((h + 3) / 4)
	return 4*w*h + 4*((w+1)/2)*h + 3*4*tiles
}
