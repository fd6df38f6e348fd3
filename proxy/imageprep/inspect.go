package imageprep

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"

	"github.com/batchgate/batchgate/proxy/imageprep/turbojpeg"
)

// Header is what Inspect learns from an image's header, before any pixel is
// decoded.
type Header struct {
	Format        string // "jpeg", "png", "gif" or "webp"
	Width, Height int
	// decodeBytes estimates the memory of the decoded image in the form
	// Go's decoder produces it, with the decoder's working buffers
	// (progressive JPEG coefficients, interlaced PNG passes).
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
}

// MemoryBytes estimates the most memory that decoding and preprocessing the
// image with p take at once: the decoded image, the decoder's working
// buffers, a conversion to 8-bit RGBA where one is needed, and the resize
// buffers. The proxy reserves it from its decode budget before decoding.
func (h Header) MemoryBytes(p Params) int64 {
	px := int64(h.Width) * int64(h.Height)
	n := h.decodeBytes
	width := int64(h.Width)
	if h.Format == "jpeg" && turbojpeg.Available {
		n = h.turboBytes(ScaleDenom(h, p))
		width = int64((h.Width + 7) / 8 * 8)
	}
	if !h.direct {
		n += 4 * px
	}
	// Resize: the horizontal pass keeps up to every source row of the
	// crop, p.Width RGB bytes each, plus one converted source row and
	// the vertical pass's sums.
	n += int64(h.Height)*int64(p.Width)*3 + width*3 + int64(p.Width)*12
	return n + 64<<10
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
// pixel budget (ErrTooLarge), and what decoding will cost. It decodes no
// pixel data. Errors wrap ErrFormat, ErrTooLarge or ErrCorrupt.
func Inspect(data []byte, lim Limits) (Header, error) {
	if lim.MaxPixels == 0 {
		lim.MaxPixels = DefaultMaxPixels
	}
	var h Header
	var err error
	switch {
	case bytes.HasPrefix(data, []byte("\xff\xd8\xff")): // SOI and a marker, as PIL identifies JPEG
		h, err = inspectJPEG(data)
	case bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")):
		h, err = inspectPNG(data)
	case bytes.HasPrefix(data, []byte("GIF87a")), bytes.HasPrefix(data, []byte("GIF89a")):
		h, err = inspectOther(data, "gif")
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		h, err = inspectOther(data, "webp")
	default:
		return Header{}, ErrFormat
	}
	if err != nil {
		return Header{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if h.Width <= 0 || h.Height <= 0 {
		return Header{}, fmt.Errorf("%w: %dx%d pixels", ErrCorrupt, h.Width, h.Height)
	}
	if int64(h.Width)*int64(h.Height) > int64(lim.MaxPixels) {
		return Header{}, fmt.Errorf("%w: %dx%d, limit %d pixels", ErrTooLarge, h.Width, h.Height, lim.MaxPixels)
	}
	h.fullSize = lim.FullSizeJPEG
	return h, nil
}

// inspectJPEG walks the markers up to the frame header (SOFn).
func inspectJPEG(data []byte) (Header, error) {
	p := 2
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
		case 0xc0, 0xc1, 0xc2: // baseline, extended, progressive (what Go decodes)
			return jpegFrame(seg, marker == 0xc2)
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
	trns := false
	for p += 8 + 13 + 4; p+8 <= len(data); {
		n := int64(binary.BigEndian.Uint32(data[p:]))
		typ := string(data[p+4 : p+8])
		if typ == "IDAT" || typ == "IEND" {
			break
		}
		trns = trns || typ == "tRNS"
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
	if interlaced {
		h.decodeBytes *= 2 // each pass is decoded apart, then merged
	}
	// Read in place: 8-bit gray, paletted, RGBA and NRGBA.
	h.direct = depth <= 8
	return h, nil
}

// inspectOther uses the standard decoders' header parsing for GIF and WebP.
func inspectOther(data []byte, format string) (Header, error) {
	cfg, got, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return Header{}, err
	}
	if got != format {
		return Header{}, fmt.Errorf("%s header decoded as %s", format, got)
	}
	h := Header{Format: format, Width: cfg.Width, Height: cfg.Height, direct: true}
	px := int64(cfg.Width) * int64(cfg.Height)
	switch {
	case format == "gif": // the first frame, paletted
		h.decodeBytes = px
	case cfg.ColorModel == color.NRGBAModel: // lossless: pixels plus the transform buffers
		h.decodeBytes = 8 * px
	case cfg.ColorModel == color.NYCbCrAModel: // lossy with alpha
		h.decodeBytes, h.direct = 3*px, false
	default: // lossy: YCbCr 4:2:0
		h.decodeBytes = 2 * px
	}
	return h, nil
}
