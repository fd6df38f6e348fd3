// Package imageprep turns encoded images into model input tensors the way
// torchvision's classic ImageNet transform does on a PIL image:
// convert("RGB"), Resize(shorter side) with antialiased bilinear filtering,
// CenterCrop, ToTensor and Normalize, in CHW order.
//
// Tensor is the whole pipeline. JPEG goes through libjpeg-turbo where the
// build has it (package turbojpeg: cgo on, no nojpegturbo tag), the library
// PIL itself uses, with the same settings; a JPEG at least twice the resize
// target on its shorter side is decoded at 1/2, 1/4 or 1/8 in the DCT domain
// first, as PIL's draft() does (see ScaleDenom). Other formats, and JPEG in
// a build without libjpeg-turbo, go through Go's decoders.
//
// The resize is PIL's own fixed-point antialiased bilinear filter, computed
// only for the pixels inside the crop (resample.go): on the same decoded
// pixels the tensor equals PIL + torchvision's.
package imageprep

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	_ "image/gif" // register decoders
	_ "image/jpeg"
	_ "image/png"

	"github.com/batchgate/batchgate/proxy/imageprep/turbojpeg"
	_ "golang.org/x/image/webp"
)

// Version identifies the preprocessing; it is part of cache keys, so a
// change here must bump it.
const Version = 2

// Params describe the transform; they come from the runtime's handshake.
type Params struct {
	ResizeShorter int // shorter side after resizing, e.g. 256
	Height, Width int // center crop, e.g. 224x224
	Mean, Std     [3]float32
}

// Limits bound what Inspect accepts, and how Tensor decodes.
type Limits struct {
	// MaxPixels is the largest width*height decoded (decompression bombs
	// are refused from their header). Zero means DefaultMaxPixels.
	MaxPixels int
	// FullSizeJPEG turns DCT-domain scaling off: every JPEG is decoded at
	// full size, and the tensor equals PIL + torchvision's bit for bit,
	// at several times the cost on large photos (docs/performance.md).
	FullSizeJPEG bool
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
	s := getScratch()
	defer putScratch(s)
	b := img.Bounds()
	return resample(newRowReader(img), b.Dx(), b.Dy(), p, dst, s)
}

// Tensor decodes data, whose header Inspect returned as h, and writes the
// model input for p into dst (3*p.Height*p.Width values): decode, resize,
// crop, ToTensor and Normalize in one call, with pooled buffers. Errors wrap
// ErrCorrupt when the data cannot be decoded.
func Tensor(data []byte, h Header, p Params, dst []float32) error {
	return TensorAt(data, h, p, ScaleDenom(h, p), dst)
}

// TensorAt is Tensor with the DCT-domain scale chosen by the caller: denom 1
// is the exact path, whatever the size. The parity checks compare both.
// denom is ignored (1) for formats other than JPEG and in builds without
// libjpeg-turbo.
func TensorAt(data []byte, h Header, p Params, denom int, dst []float32) error {
	if len(dst) != 3*p.Height*p.Width {
		return fmt.Errorf("BUG: dst holds %d values, want %d", len(dst), 3*p.Height*p.Width)
	}
	s := getScratch()
	defer putScratch(s)
	if h.Format == "jpeg" && turbojpeg.Available {
		src, w, ht, err := decodeTurbo(data, h, denom, s)
		if err != nil {
			return err
		}
		return resample(src, w, ht, p, dst, s)
	}
	img, err := DecodeInspected(data, h)
	if err != nil {
		return err
	}
	b := img.Bounds()
	return resample(newRowReader(img), b.Dx(), b.Dy(), p, dst, s)
}

// JPEGDecoder names the JPEG decoder this build uses, for logs and
// /metrics: "libjpeg-turbo" or "go".
func JPEGDecoder() string {
	if turbojpeg.Available {
		return "libjpeg-turbo"
	}
	return "go"
}

// MinScaleDenom is the smallest DCT-domain downscale ScaleDenom picks: 2
// allows 1/2, 1/4 and 1/8; 4 only 1/4 and 1/8 (see docs/performance.md for
// the measurements behind the choice).
const MinScaleDenom = 2

// ScaleDenom is the DCT-domain scale (1/ScaleDenom) a JPEG is decoded at:
// the largest of 1/8, 1/4 and 1/2 (down to 1/MinScaleDenom) that keeps the
// shorter side at least p.ResizeShorter, the rule of PIL's draft(). It is 1
// for other formats, for smaller images, with Limits.FullSizeJPEG, and in
// builds without libjpeg-turbo.
func ScaleDenom(h Header, p Params) int {
	if h.Format != "jpeg" || !turbojpeg.Available || p.ResizeShorter <= 0 || h.fullSize {
		return 1
	}
	shorter := min(h.Width, h.Height)
	for d := 8; d >= MinScaleDenom; d /= 2 {
		if shorter/p.ResizeShorter >= d {
			return d
		}
	}
	return 1
}

// decodeTurbo decodes a JPEG with libjpeg-turbo at 1/denom into s.pix: RGB,
// gray for gray files, and inverted CMYK for 4-component files (as PIL
// reads them).
func decodeTurbo(data []byte, h Header, denom int, s *scratch) (*rowReader, int, int, error) {
	// A new handle for each image: a handle keeps state from the images
	// it read (see package turbojpeg), and one request must never change
	// another's answer.
	d, err := turbojpeg.NewDecoder()
	if err != nil {
		return nil, 0, 0, err
	}
	defer d.Close()
	f := turbojpeg.RGB
	switch h.components {
	case 1:
		f = turbojpeg.Gray
	case 4:
		f = turbojpeg.CMYK
	}
	w, ht := turbojpeg.ScaledSize(h.Width, h.Height, denom)
	pix := grow(&s.pix, w*ht*f.Bytes())
	gw, gh, err := d.Decode(data, denom, f, pix)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if gw != w || gh != ht {
		return nil, 0, 0, fmt.Errorf("%w: the header says %dx%d, libjpeg-turbo decoded %dx%d at 1/%d", ErrCorrupt, h.Width, h.Height, gw, gh, denom)
	}
	r := &rowReader{b: image.Rect(0, 0, w, ht)}
	switch f {
	case turbojpeg.Gray:
		r.gray = &image.Gray{Pix: pix, Stride: w, Rect: r.b}
	case turbojpeg.CMYK:
		r.cmyk, r.cstride, r.inv = pix, 4*w, true
	default:
		r.rgb = pix
	}
	return r, w, ht, nil
}
