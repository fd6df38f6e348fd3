// Package turbojpeg is a small cgo wrapper over libjpeg-turbo's TurboJPEG API
// (Debian: libturbojpeg0-dev), linked statically from libturbojpeg.a: read a
// JPEG header, and decode from memory straight into a caller's buffer as RGB,
// gray or CMYK, optionally scaled by 1/2, 1/4 or 1/8 in the DCT domain.
//
// It is built when cgo is on and the nojpegturbo build tag is off; then
// Available is true. Otherwise every function returns ErrUnavailable and
// package imageprep decodes JPEG with Go's image/jpeg.
//
// A Decoder is one TurboJPEG handle: use it from one goroutine at a time,
// and for one image only. A handle carries state from one image to the
// next: libjpeg keeps the quantization and Huffman tables it has read, so an
// image that lacks its own would decode with another's, and libjpeg-turbo
// 2.1 leaves a handle half-way through a header after a failed read, so
// that every later image on it fails. Sharing handles between requests
// would let one client's upload change another's answer; a new handle costs
// about 0.6 µs against a decode's milliseconds (BenchmarkNewDecoder).
package turbojpeg

import "errors"

// Format is the pixel layout Decode writes.
type Format int

const (
	RGB  Format = iota // 3 bytes a pixel, R G B
	Gray               // 1 byte a pixel
	CMYK               // 4 bytes a pixel, as stored in the file (Adobe files store it inverted)
)

// Bytes is the size of one pixel in f.
func (f Format) Bytes() int { return [...]int{3, 1, 4}[f] }

// Colorspace is the JPEG's color space, from its header.
type Colorspace int

const (
	ColorRGB Colorspace = iota
	ColorYCbCr
	ColorGray
	ColorCMYK
	ColorYCCK
)

// Info is what a JPEG header says.
type Info struct {
	Width, Height int
	Colorspace    Colorspace
}

// ErrUnavailable: the package was built without libjpeg-turbo.
var ErrUnavailable = errors.New("turbojpeg: built without libjpeg-turbo (cgo off or the nojpegturbo tag)")

// ErrWarning wraps the libjpeg warning Decode treats as an error: a file
// cut short ("Premature end of JPEG file"), so a truncated upload never
// yields a partly gray image. Other warnings (extra bytes before a marker)
// leave a whole image and are not errors, as in PIL.
var ErrWarning = errors.New("turbojpeg: warning")

// ScaledSize is the size Decode writes for a w x h image at 1/denom:
// libjpeg rounds up.
func ScaledSize(w, h, denom int) (int, int) {
	return (w + denom - 1) / denom, (h + denom - 1) / denom
}
