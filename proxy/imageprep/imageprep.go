// Package imageprep turns encoded images into model input tensors the way
// torchvision's classic ImageNet transform does on a PIL image:
// convert("RGB"), Resize(shorter side) with antialiased bilinear filtering,
// CenterCrop, ToTensor and Normalize, in CHW order.
//
// Tensor is the whole pipeline. JPEG goes through libjpeg-turbo where the
// build has it (package turbojpeg: cgo on, no nojpegturbo tag), the library
// PIL itself uses, with the same settings; a JPEG at least twice the resize
// target on its shorter side is decoded at 1/2, 1/4 or 1/8 in the DCT domain
// first, as PIL's draft() does (see ScaleDenom). 8-bit gray, RGB and RGBA
// PNGs take a fast path (png.go: libdeflate where the build has it, package
// libdeflate); image/png decides every other PNG and any file the fast path
// does not take. Other formats, and JPEG in a build without libjpeg-turbo,
// go through Go's decoders.
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

	"github.com/batchgate/batchgate/proxy/imageprep/libdeflate"
	"github.com/batchgate/batchgate/proxy/imageprep/libwebp"
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
	// MaxPixelsPerByte caps width*height per byte of the encoded image,
	// for images of more than SmallImagePixels: decoding costs memory and
	// CPU by the pixel, and this ties them to what the client sent (a
	// 46-byte lossless WebP can declare 36 million pixels). Zero means
	// DefaultMaxPixelsPerByte; negative turns the cap off.
	MaxPixelsPerByte int
	// FullSizeJPEG turns DCT-domain scaling off: every JPEG is decoded at
	// full size, and the tensor equals PIL + torchvision's bit for bit,
	// at several times the cost on large photos (docs/performance.md).
	FullSizeJPEG bool
}

var (
	// ErrFormat: not JPEG, PNG, GIF or WebP.
	ErrFormat = errors.New("unsupported image format: want JPEG, PNG, GIF or WebP")
	// ErrTooLarge: more pixels than Limits.MaxPixels, or than
	// Limits.MaxPixelsPerByte allows for the image's size in bytes
	// (ErrPixelsPerByte).
	ErrTooLarge = errors.New("image has too many pixels")
	// ErrPixelsPerByte: more pixels per byte than Limits.MaxPixelsPerByte;
	// it wraps ErrTooLarge.
	ErrPixelsPerByte = fmt.Errorf("%w for its size in bytes", ErrTooLarge)
	// ErrAnimatedWebP: a WebP of several frames (ErrFormat).
	ErrAnimatedWebP = fmt.Errorf("%w: animated WebP is not supported; send one frame as a still image", ErrFormat)
	// ErrCorrupt: the header or the data cannot be decoded.
	ErrCorrupt = errors.New("corrupt image")
)

// DefaultMaxPixels is Limits.MaxPixels when zero.
const DefaultMaxPixels = 40_000_000

// DefaultMaxPixelsPerByte is Limits.MaxPixelsPerByte when zero: 2048, twice
// the most deflate packs bytes (1032:1; a 12 MP gray PNG of one value at
// zlib's best is 1022 pixels a byte), so no PNG of 8 bits a sample or more
// is ever refused, nor any JPEG (every 8x8 block costs a bit or more: 512
// pixels a byte at most). Photos take 1 to 25 pixels a byte, text
// screenshots 15 to 31, near-blank 4K ones 250 to 550 as PNG, GIF or lossy
// WebP. Only codings that spend a fraction of a bit on a large uniform area
// go past it: lossless WebP (that near-blank screenshot: 7000; one color:
// unbounded), 1-bit PNG and GIF (up to about 8000 and 2500; one color at
// 12 MP: 1755 and 1148). For a classifier such an image loses nothing
// scaled down to SmallImagePixels, which always passes. Measured with
// libwebp, zlib and PIL (see TestPixelsPerByte).
const DefaultMaxPixelsPerByte = 2048

// SmallImagePixels: images of at most this many pixels (1 MiP) pass
// Limits.MaxPixelsPerByte whatever their size in bytes; decoding one costs
// at most about 7 MiB and 0.2 s of CPU.
const SmallImagePixels = 1 << 20

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
	return tensorAt(data, h, p, denom, dst, true)
}

// tensorAt is TensorAt; fastPNG false sends every PNG to image/png (the
// fast path's tests compare both).
func tensorAt(data []byte, h Header, p Params, denom int, dst []float32, fastPNG bool) error {
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
	if h.libwebp() {
		src, err := decodeVP8(data, h, s)
		if err != nil {
			return err
		}
		return resample(src, h.Width, h.Height, p, dst, s)
	}
	if fastPNG && h.fastPNG {
		if src, ok := decodePNGFast(data, h, s); ok {
			return resample(src, h.Width, h.Height, p, dst, s)
		}
		// Not for the fast path after all: its buffers go before
		// image/png allocates its own.
		s.pix, s.idat = nil, nil
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

// PNGInflater names what inflates the image data of PNG files on the fast
// path (png.go) in this build, for logs: "libdeflate" or "go".
func PNGInflater() string {
	if libdeflate.Available {
		return "libdeflate"
	}
	return "go"
}

// WebPDecoder names the decoder of lossy WebP in this build, for logs:
// "libwebp" or "go" (lossless WebP is always Go's).
func WebPDecoder() string {
	if libwebp.Available {
		return "libwebp"
	}
	return "go"
}

// libwebp is true when the image is a lossy WebP that this build decodes
// with libwebp.
func (h Header) libwebp() bool {
	return h.Format == "webp" && h.vp8Len > 0 && libwebp.Available
}

// decodeVP8 decodes a lossy WebP's frame with libwebp into s.pix as RGB, at
// full size: PIL's pixels, bit for bit. An alpha plane, which PIL's
// convert("RGB") drops, is not decoded.
func decodeVP8(data []byte, h Header, s *scratch) (*rowReader, error) {
	pix := grow(&s.pix, 3*h.Width*h.Height)
	if err := libwebp.DecodeVP8(data[h.vp8Off:h.vp8Off+h.vp8Len], h.Width, h.Height, h.Width, h.Height, pix); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	r := &rowReader{b: image.Rect(0, 0, h.Width, h.Height)}
	r.rgb, r.rstride = pix, 3*h.Width
	return r, nil
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
		r.rgb, r.rstride = pix, 3*w
	}
	return r, w, ht, nil
}
