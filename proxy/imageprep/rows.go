package imageprep

import (
	"image"
	"image/color"
	"image/draw"
)

// rowReader hands out spans of source rows as 8-bit RGB (3 bytes a pixel)
// or, for gray images, 8-bit gray (1 byte), like PIL's convert("RGB"):
// alpha is dropped, not composited. It reads the decoders' usual types in
// place; others are converted to NRGBA first (Header.direct says which, for
// the memory estimate).
type rowReader struct {
	b       image.Rectangle
	rgb     []byte // packed RGB (libjpeg-turbo's output, PNG's rows)...
	rstride int    // ...rstride bytes a row
	gray    *image.Gray
	cmyk    []byte // 4 bytes a pixel, stride 4*width...
	cstride int
	inv     bool // ...as stored in an Adobe JPEG: inverted, as PIL reads it ("CMYK;I")
	ycc     *image.YCbCr
	indexed *image.Paletted
	palette [256][3]uint8
	pix     []uint8 // 4 bytes a pixel (NRGBA, or opaque RGBA)
	stride  int
}

func newRowReader(img image.Image) *rowReader {
	b := img.Bounds()
	r := &rowReader{b: b}
	switch m := img.(type) {
	case *image.YCbCr:
		r.ycc = m
		return r
	case *image.Gray:
		r.gray = m
		return r
	case *image.CMYK:
		r.cmyk, r.cstride = m.Pix[m.PixOffset(b.Min.X, b.Min.Y):], m.Stride
		return r
	case *image.Paletted:
		// As draw.Draw into NRGBA would: each entry through NRGBAModel.
		for i, c := range m.Palette[:min(len(m.Palette), 256)] {
			n := color.NRGBAModel.Convert(c).(color.NRGBA)
			r.palette[i] = [3]uint8{n.R, n.G, n.B}
		}
		r.indexed = m
		return r
	case *image.NRGBA:
		r.pix, r.stride = m.Pix[m.PixOffset(b.Min.X, b.Min.Y):], m.Stride
		return r
	case *image.RGBA:
		if opaque(m) {
			r.pix, r.stride = m.Pix[m.PixOffset(b.Min.X, b.Min.Y):], m.Stride
			return r
		}
	}
	// Everything else (gray with alpha, 16-bit PNGs, WebP with alpha)
	// through non-premultiplied RGBA, so alpha is dropped as PIL does.
	dst := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(dst, dst.Bounds(), img, b.Min, draw.Src)
	r.pix, r.stride = dst.Pix, dst.Stride
	return r
}

// channels is the bytes a pixel of row's output: 1 for gray, else 3.
func (r *rowReader) channels() int {
	if r.gray != nil {
		return 1
	}
	return 3
}

// row returns pixels x0..x1 of row y (relative to the bounds), in place
// when the layout allows, else converted into *buf.
func (r *rowReader) row(y, x0, x1 int, buf *[]byte) []byte {
	switch {
	case r.rgb != nil:
		return r.rgb[y*r.rstride+3*x0 : y*r.rstride+3*x1]
	case r.gray != nil:
		m := r.gray
		return m.Pix[y*m.Stride+x0 : y*m.Stride+x1]
	}
	out := grow(buf, 3*(x1-x0))
	switch {
	case r.cmyk != nil:
		src := r.cmyk[y*r.cstride+4*x0 : y*r.cstride+4*x1]
		var inv uint8
		if r.inv {
			inv = 0xff
		}
		for i := range x1 - x0 {
			p, o := src[4*i:4*i+4:4*i+4], out[3*i:3*i+3:3*i+3]
			nk := 255 - int32(p[3]^inv)
			o[0] = cmyk(p[0]^inv, nk)
			o[1] = cmyk(p[1]^inv, nk)
			o[2] = cmyk(p[2]^inv, nk)
		}
	case r.indexed != nil:
		m := r.indexed
		for i, idx := range m.Pix[y*m.Stride+x0 : y*m.Stride+x1] {
			// An index beyond the palette reads as black, as
			// Paletted.At's zero color does.
			c := r.palette[idx]
			if int(idx) >= len(m.Palette) {
				c = [3]uint8{}
			}
			copy(out[3*i:3*i+3], c[:])
		}
	case r.pix != nil:
		src := r.pix[y*r.stride+4*x0 : y*r.stride+4*x1]
		for i := range x1 - x0 {
			p, o := src[4*i:4*i+3:4*i+3], out[3*i:3*i+3:3*i+3]
			o[0], o[1], o[2] = p[0], p[1], p[2]
		}
	default:
		r.yccRow(y, x0, x1, out)
	}
	return out
}

// cmyk is PIL's cmyk2rgb for one channel: nk - c*nk/255, rounded as its
// MULDIV255 does.
func cmyk(c uint8, nk int32) uint8 {
	t := int32(c)*nk + 128
	return uint8(min(max(nk-((t>>8)+t)>>8, 0), 255))
}

func (r *rowReader) yccRow(y, x0, x1 int, out []byte) {
	m := r.ycc
	yy := m.Y[y*m.YStride+x0 : y*m.YStride+x1]
	switch m.SubsampleRatio {
	case image.YCbCrSubsampleRatio420, image.YCbCrSubsampleRatio422:
		cy := y
		if m.SubsampleRatio == image.YCbCrSubsampleRatio420 {
			cy = (y+r.b.Min.Y)/2 - r.b.Min.Y/2
		}
		cb, cr := m.Cb[cy*m.CStride:], m.Cr[cy*m.CStride:]
		cx0 := r.b.Min.X / 2
		for i, lum := range yy {
			ci := (x0+i+r.b.Min.X)/2 - cx0
			o := out[3*i : 3*i+3 : 3*i+3]
			o[0], o[1], o[2] = color.YCbCrToRGB(lum, cb[ci], cr[ci])
		}
	case image.YCbCrSubsampleRatio444:
		cb, cr := m.Cb[y*m.CStride+x0:], m.Cr[y*m.CStride+x0:]
		for i, lum := range yy {
			o := out[3*i : 3*i+3 : 3*i+3]
			o[0], o[1], o[2] = color.YCbCrToRGB(lum, cb[i], cr[i])
		}
	default:
		for i, lum := range yy {
			ci := m.COffset(r.b.Min.X+x0+i, r.b.Min.Y+y)
			o := out[3*i : 3*i+3 : 3*i+3]
			o[0], o[1], o[2] = color.YCbCrToRGB(lum, m.Cb[ci], m.Cr[ci])
		}
	}
}

func opaque(m *image.RGBA) bool {
	for i := 3; i < len(m.Pix); i += 4 {
		if m.Pix[i] != 0xff {
			return false
		}
	}
	return true
}
