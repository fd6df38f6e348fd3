// Package imageprep turns encoded images into model input tensors the way
// torchvision's classic ImageNet transform does on a PIL image:
// convert("RGB"), Resize(shorter side) with antialiased bilinear filtering,
// CenterCrop, ToTensor and Normalize, in CHW order.
//
// The resize computes only the pixels inside the crop, with PIL's triangle
// filter whose support widens with the downscale factor (antialiasing), in
// float32 without PIL's 8-bit rounding between passes.
package imageprep

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	_ "image/gif" // register decoders
	_ "image/jpeg"
	_ "image/png"
	"math"

	_ "golang.org/x/image/webp"
)

// Version identifies the preprocessing; it is part of cache keys, so a
// change here must bump it.
const Version = 1

// Params describe the transform; they come from the runtime's handshake.
type Params struct {
	ResizeShorter int // shorter side after resizing, e.g. 256
	Height, Width int // center crop, e.g. 224x224
	Mean, Std     [3]float32
}

// Limits bound what Decode accepts.
type Limits struct {
	// MaxPixels is the largest width*height decoded (decompression bombs
	// are refused from their header). Zero means DefaultMaxPixels.
	MaxPixels int
}

var (
	// ErrFormat: not JPEG, PNG, GIF or WebP.
	ErrFormat = errors.New("unsupported image format: want JPEG, PNG, GIF or WebP")
	// ErrTooLarge: more pixels than Limits.MaxPixels.
	ErrTooLarge = errors.New("image has too many pixels")
	// ErrCorrupt: the header or the data cannot be decoded.
	ErrCorrupt = errors.New("corrupt image")
)

// DefaultMaxPixels is Limits.MaxPixels when zero.
const DefaultMaxPixels = 40_000_000

// Decode inspects the header (Inspect), then decodes the image. Errors wrap
// ErrFormat, ErrTooLarge or ErrCorrupt.
func Decode(data []byte, lim Limits) (image.Image, string, error) {
	h, err := Inspect(data, lim)
	if err != nil {
		return nil, "", err
	}
	img, err := DecodeInspected(data, h)
	return img, h.Format, err
}

// DecodeInspected decodes data, whose header Inspect returned as h. An image
// whose pixels disagree with its header is corrupt.
func DecodeInspected(data []byte, h Header) (image.Image, error) {
	img, format, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if b := img.Bounds(); format != h.Format || b.Dx() != h.Width || b.Dy() != h.Height {
		return nil, fmt.Errorf("%w: the %s header says %dx%d, the %s data %dx%d", ErrCorrupt, h.Format, h.Width, h.Height, format, b.Dx(), b.Dy())
	}
	return img, nil
}

// Preprocess writes img, transformed as p says, into dst, which must hold
// 3*p.Height*p.Width values.
func Preprocess(img image.Image, p Params, dst []float32) error {
	if len(dst) != 3*p.Height*p.Width {
		return fmt.Errorf("BUG: dst holds %d values, want %d", len(dst), 3*p.Height*p.Width)
	}
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	// torchvision Resize(int): the shorter side becomes ResizeShorter,
	// the other keeps the aspect ratio, truncated.
	rw, rh := p.ResizeShorter, p.ResizeShorter
	if w <= h {
		rh = int(float64(p.ResizeShorter) * float64(h) / float64(w))
	} else {
		rw = int(float64(p.ResizeShorter) * float64(w) / float64(h))
	}
	if rw < p.Width || rh < p.Height {
		return fmt.Errorf("BUG: resize to %dx%d is smaller than the crop", rw, rh)
	}
	// CenterCrop: offsets rounded as torchvision does.
	left := int(math.Round(float64(rw-p.Width) / 2))
	top := int(math.Round(float64(rh-p.Height) / 2))

	xs := newTaps(w, rw, left, p.Width)
	ys := newTaps(h, rh, top, p.Height)
	src := newRowReader(img)

	// Horizontal pass over the source rows and columns the crop needs.
	y0 := ys.start[0]
	y1 := ys.start[p.Height-1] + ys.k
	x0 := xs.start[0]
	x1 := min(xs.start[p.Width-1]+xs.k, w)
	k := xs.k
	rowF := make([]float32, 3*(x1-x0+k)) // padded: taps may overrun with zero weights
	tmp := make([]float32, (y1-y0)*p.Width*3)
	for y := y0; y < min(y1, h); y++ {
		// Each source pixel feeds several taps: convert it to float once.
		src.row(y, x0, x1, rowF)
		out := tmp[(y-y0)*p.Width*3 : (y-y0+1)*p.Width*3]
		for x := range p.Width {
			s := 3 * (xs.start[x] - x0)
			px := rowF[s : s+3*k]
			var r, g, bl float32
			for j, wt := range xs.weights[x*k : (x+1)*k] {
				c := px[3*j : 3*j+3 : 3*j+3]
				r += wt * c[0]
				g += wt * c[1]
				bl += wt * c[2]
			}
			o := out[3*x : 3*x+3 : 3*x+3]
			o[0], o[1], o[2] = r, g, bl
		}
	}

	// Vertical pass, then ToTensor (/255) and Normalize, into CHW.
	plane := p.Height * p.Width
	var scale, shift [3]float32
	for c := range 3 {
		scale[c] = 1 / (255 * p.Std[c])
		shift[c] = -p.Mean[c] / p.Std[c]
	}
	acc := make([]float32, 3*p.Width)
	for y := range p.Height {
		clear(acc)
		for k, wt := range ys.weights[y*ys.k : (y+1)*ys.k] {
			sy := ys.start[y] + k - y0
			if wt == 0 || sy >= len(tmp)/(3*p.Width) {
				continue
			}
			row := tmp[sy*3*p.Width : (sy+1)*3*p.Width]
			for i, v := range row {
				acc[i] += wt * v
			}
		}
		r, g, bl := dst[y*p.Width:(y+1)*p.Width], dst[plane+y*p.Width:plane+(y+1)*p.Width], dst[2*plane+y*p.Width:2*plane+(y+1)*p.Width]
		for x := range p.Width {
			r[x] = acc[3*x]*scale[0] + shift[0]
			g[x] = acc[3*x+1]*scale[1] + shift[1]
			bl[x] = acc[3*x+2]*scale[2] + shift[2]
		}
	}
	return nil
}

// taps holds, for each output pixel i, a filter of k weights over the
// source pixels from start[i] (zero-padded to k).
type taps struct {
	k       int
	start   []int
	weights []float32
}

// newTaps returns PIL's antialiased bilinear filter for the count output
// pixels from first on, when in source pixels are resized to out.
func newTaps(in, out, first, count int) taps {
	scale := float64(in) / float64(out)
	filterScale := max(scale, 1)
	support := filterScale // the triangle filter's support is 1
	t := taps{k: int(math.Ceil(support))*2 + 1, start: make([]int, count)}
	t.weights = make([]float32, count*t.k)
	wf := make([]float64, t.k)
	for i := range count {
		center := (float64(first+i) + 0.5) * scale
		lo := max(int(center-support+0.5), 0)
		hi := min(int(center+support+0.5), in, lo+t.k)
		var sum float64
		clear(wf)
		for j := range hi - lo {
			x := math.Abs((float64(lo+j) - center + 0.5) / filterScale)
			if x < 1 {
				wf[j] = 1 - x
			}
			sum += wf[j]
		}
		t.start[i] = lo
		for j := range t.k {
			if sum > 0 {
				t.weights[i*t.k+j] = float32(wf[j] / sum)
			}
		}
	}
	return t
}

// rowReader copies spans of source rows as packed 8-bit RGB, like PIL's
// convert("RGB"): alpha is dropped, not composited. It reads the decoders'
// usual types in place; others are converted to NRGBA first (Header.direct
// says which, for the memory estimate).
type rowReader struct {
	b       image.Rectangle
	ycc     *image.YCbCr
	gray    *image.Gray
	cmyk    *image.CMYK
	indexed *image.Paletted
	palette [256][3]uint8
	pix     []uint8 // 4 bytes a pixel (NRGBA, or opaque RGBA)
	strid   int
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
		r.cmyk = m
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
		r.pix, r.strid = m.Pix[m.PixOffset(b.Min.X, b.Min.Y):], m.Stride
		return r
	case *image.RGBA:
		if opaque(m) {
			r.pix, r.strid = m.Pix[m.PixOffset(b.Min.X, b.Min.Y):], m.Stride
			return r
		}
	}
	// Everything else (paletted GIFs, gray, 16-bit PNGs) through
	// non-premultiplied RGBA, so alpha is dropped as PIL does.
	dst := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(dst, dst.Bounds(), img, b.Min, draw.Src)
	r.pix, r.strid = dst.Pix, dst.Stride
	return r
}

// row writes pixels x0..x1 of row y (relative to the bounds) to out as
// RGB float32 values in [0, 255].
func (r *rowReader) row(y, x0, x1 int, out []float32) {
	out = out[:3*(x1-x0)]
	switch {
	case r.gray != nil:
		m := r.gray
		for i, v := range m.Pix[y*m.Stride+x0 : y*m.Stride+x1] {
			f := float32(v)
			out[3*i], out[3*i+1], out[3*i+2] = f, f, f
		}
		return
	case r.cmyk != nil:
		m := r.cmyk
		src := m.Pix[y*m.Stride+4*x0 : y*m.Stride+4*x1]
		for i := range x1 - x0 {
			p := src[4*i : 4*i+4 : 4*i+4]
			cr, cg, cb := color.CMYKToRGB(p[0], p[1], p[2], p[3])
			out[3*i], out[3*i+1], out[3*i+2] = float32(cr), float32(cg), float32(cb)
		}
		return
	case r.indexed != nil:
		m := r.indexed
		for i, idx := range m.Pix[y*m.Stride+x0 : y*m.Stride+x1] {
			// An index beyond the palette reads as black, as
			// Paletted.At's zero color does.
			c := r.palette[idx]
			if int(idx) >= len(m.Palette) {
				c = [3]uint8{}
			}
			out[3*i], out[3*i+1], out[3*i+2] = float32(c[0]), float32(c[1]), float32(c[2])
		}
		return
	}
	if r.pix != nil {
		src := r.pix[y*r.strid+4*x0 : y*r.strid+4*x1]
		for i := range x1 - x0 {
			p, o := src[4*i:4*i+3:4*i+3], out[3*i:3*i+3:3*i+3]
			o[0], o[1], o[2] = float32(p[0]), float32(p[1]), float32(p[2])
		}
		return
	}
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
			ycbcr(lum, cb[ci], cr[ci], out[3*i:3*i+3:3*i+3])
		}
	case image.YCbCrSubsampleRatio444:
		cb, cr := m.Cb[y*m.CStride+x0:], m.Cr[y*m.CStride+x0:]
		for i, lum := range yy {
			ycbcr(lum, cb[i], cr[i], out[3*i:3*i+3:3*i+3])
		}
	default:
		for i, lum := range yy {
			ci := m.COffset(r.b.Min.X+x0+i, r.b.Min.Y+y)
			ycbcr(lum, m.Cb[ci], m.Cr[ci], out[3*i:3*i+3:3*i+3])
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

// ycbcr writes color.YCbCrToRGB's result (same fixed-point arithmetic,
// same rounding and clamping) to o as floats.
func ycbcr(y, cb, cr uint8, o []float32) {
	yy1 := int32(y) * 0x10101
	cb1 := int32(cb) - 128
	cr1 := int32(cr) - 128
	o[0] = clamp(yy1 + 91881*cr1)
	o[1] = clamp(yy1 - 22554*cb1 - 46802*cr1)
	o[2] = clamp(yy1 + 116130*cb1)
}

func clamp(v int32) float32 {
	return float32(min(max(v, 0), 0xffffff) >> 16)
}
