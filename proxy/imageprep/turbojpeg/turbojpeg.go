//go:build cgo && !nojpegturbo

package turbojpeg

/*
#cgo LDFLAGS: -l:libturbojpeg.a
#include <stdlib.h>
#include <turbojpeg.h>

// Guard the scan count of progressive files (a CPU bomb otherwise) and
// decode accurately, as PIL does: libjpeg's default islow IDCT and smooth
// chroma upsampling.
enum { bg_flags = TJFLAG_LIMITSCANS | TJFLAG_ACCURATEDCT };
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// Available is true: this build decodes with libjpeg-turbo.
const Available = true

// Decoder owns one TurboJPEG decompression handle.
type Decoder struct {
	h C.tjhandle
}

// NewDecoder returns a Decoder; Close frees it.
func NewDecoder() (*Decoder, error) {
	h := C.tjInitDecompress()
	if h == nil {
		return nil, fmt.Errorf("turbojpeg: cannot create a decompressor: %s", C.GoString(C.tjGetErrorStr2(nil)))
	}
	return &Decoder{h: h}, nil
}

// Close frees the handle. The Decoder is unusable afterwards.
func (d *Decoder) Close() {
	if d.h != nil {
		C.tjDestroy(d.h)
		d.h = nil
	}
}

// err turns the handle's last error into a Go error.
func (d *Decoder) err(op string) error {
	msg := C.GoString(C.tjGetErrorStr2(d.h))
	if C.tjGetErrorCode(d.h) == C.TJERR_WARNING {
		return fmt.Errorf("%w: %s: %s", ErrWarning, op, msg)
	}
	return fmt.Errorf("turbojpeg: %s: %s", op, msg)
}

// Header reads data's frame header.
func (d *Decoder) Header(data []byte) (Info, error) {
	if len(data) == 0 {
		return Info{}, errors.New("turbojpeg: empty input")
	}
	var w, h, sub, cs C.int
	rc := C.tjDecompressHeader3(d.h, (*C.uchar)(unsafe.Pointer(unsafe.SliceData(data))), C.ulong(len(data)), &w, &h, &sub, &cs)
	runtime.KeepAlive(data)
	if rc != 0 {
		return Info{}, d.err("header")
	}
	var c Colorspace
	switch cs {
	case C.TJCS_RGB:
		c = ColorRGB
	case C.TJCS_YCbCr:
		c = ColorYCbCr
	case C.TJCS_GRAY:
		c = ColorGray
	case C.TJCS_CMYK:
		c = ColorCMYK
	case C.TJCS_YCCK:
		c = ColorYCCK
	default:
		return Info{}, fmt.Errorf("turbojpeg: unknown colorspace %d", int(cs))
	}
	return Info{Width: int(w), Height: int(h), Colorspace: c}, nil
}

// Decode decodes data at 1/denom (1, 2, 4 or 8) as f into dst, which must
// hold at least w*h*f.Bytes() bytes for the ScaledSize w x h; it returns
// that size. Warnings are errors (ErrWarning).
func (d *Decoder) Decode(data []byte, denom int, f Format, dst []byte) (w, h int, err error) {
	if denom != 1 && denom != 2 && denom != 4 && denom != 8 {
		return 0, 0, fmt.Errorf("turbojpeg: scale 1/%d, want 1/1, 1/2, 1/4 or 1/8", denom)
	}
	info, err := d.Header(data)
	if err != nil {
		return 0, 0, err
	}
	if info.Width <= 0 || info.Height <= 0 {
		return 0, 0, fmt.Errorf("turbojpeg: the header says %dx%d pixels", info.Width, info.Height)
	}
	w, h = ScaledSize(info.Width, info.Height, denom)
	if len(dst) < w*h*f.Bytes() {
		return 0, 0, fmt.Errorf("turbojpeg: buffer of %d bytes for %dx%d pixels of %d bytes", len(dst), w, h, f.Bytes())
	}
	pf := [...]C.int{C.TJPF_RGB, C.TJPF_GRAY, C.TJPF_CMYK}[f]
	rc := C.tjDecompress2(d.h, (*C.uchar)(unsafe.Pointer(unsafe.SliceData(data))), C.ulong(len(data)),
		(*C.uchar)(unsafe.Pointer(unsafe.SliceData(dst))), C.int(w), C.int(w*f.Bytes()), C.int(h), pf, C.bg_flags)
	runtime.KeepAlive(data)
	runtime.KeepAlive(dst)
	if rc != 0 {
		err := d.err("decode")
		// libjpeg's warnings: a file cut short (its missing rows come
		// out gray) is an error, as it is for PIL ("image file is
		// truncated"); the others (extra bytes before a marker, a scan
		// ended early by a marker) leave a whole image, which PIL
		// accepts too.
		if errors.Is(err, ErrWarning) && !strings.Contains(err.Error(), "Premature end of JPEG file") {
			return w, h, nil
		}
		return 0, 0, err
	}
	return w, h, nil
}

// pool keeps idle Decoders; a cleanup frees the handle of one the pool
// drops.
var pool = sync.Pool{New: func() any {
	d, err := NewDecoder()
	if err != nil {
		return err
	}
	runtime.AddCleanup(d, func(h C.tjhandle) { C.tjDestroy(h) }, d.h)
	return d
}}

// Get returns a pooled Decoder; give it back with Put.
func Get() (*Decoder, error) {
	switch v := pool.Get().(type) {
	case *Decoder:
		return v, nil
	default:
		return nil, v.(error)
	}
}

// Put returns d to the pool.
func Put(d *Decoder) { pool.Put(d) }
