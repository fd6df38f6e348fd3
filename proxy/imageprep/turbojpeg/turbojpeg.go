//go:build cgo && !nojpegturbo

package turbojpeg

/*
#cgo LDFLAGS: -l:libturbojpeg.a
#include <stdio.h>
#include <stdlib.h>
#include <turbojpeg.h>

// Guard the scan count of progressive files (a CPU bomb otherwise) and
// decode accurately, as PIL does: libjpeg's default islow IDCT and smooth
// chroma upsampling.
enum { bg_flags = TJFLAG_LIMITSCANS | TJFLAG_ACCURATEDCT };

// TurboJPEG 2.1 formats libjpeg's messages into a thread-local buffer that
// tjGetErrorStr2 reads on the calling thread. Between two cgo calls a
// goroutine may move to another thread and read that thread's last message,
// so each call below copies its failure in the same C call.
typedef struct {
	int code;      // TJERR_WARNING or TJERR_FATAL
	char msg[200]; // JMSG_LENGTH_MAX
} bg_status;

static void bg_fail(tjhandle h, bg_status *st) {
	st->code = tjGetErrorCode(h);
	snprintf(st->msg, sizeof st->msg, "%s", tjGetErrorStr2(h));
}

static tjhandle bg_init(bg_status *st) {
	tjhandle h = tjInitDecompress();
	if (h == NULL) bg_fail(NULL, st);
	return h;
}

static int bg_header(tjhandle h, const unsigned char *buf, unsigned long size,
		int *w, int *ht, int *cs, bg_status *st) {
	int sub;
	int rc = tjDecompressHeader3(h, buf, size, w, ht, &sub, cs);
	if (rc != 0) bg_fail(h, st);
	return rc;
}

static int bg_decompress(tjhandle h, const unsigned char *buf, unsigned long size,
		unsigned char *dst, int w, int pitch, int ht, int pf, bg_status *st) {
	int rc = tjDecompress2(h, buf, size, dst, w, pitch, ht, pf, bg_flags);
	if (rc != 0) bg_fail(h, st);
	return rc;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"unsafe"
)

// Available is true: this build decodes with libjpeg-turbo.
const Available = true

// Decoder owns one TurboJPEG decompression handle; use one per image (see
// the package comment).
type Decoder struct {
	h C.tjhandle
}

// NewDecoder returns a Decoder for one image; Close frees it.
func NewDecoder() (*Decoder, error) {
	var st C.bg_status
	h := C.bg_init(&st)
	if h == nil {
		return nil, fmt.Errorf("turbojpeg: cannot create a decompressor: %s", C.GoString(&st.msg[0]))
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

// failed judges a failed call on data: nil when libjpeg only warned and
// data is whole, which leaves a whole image (PIL accepts those too: extra
// bytes before a marker, a scan ended early by a marker), ErrWarning when
// data is cut short (its missing rows would come out gray; PIL says "image
// file is truncated"), and an error otherwise.
//
// TurboJPEG reports a call's first warning, or its error when one followed,
// and flags both as TJERR_WARNING once anything warned: the text tells an
// error from a warning, and a warning about the cut can hide behind an
// earlier one, so reachesEOI decides that.
func failed(op string, st *C.bg_status, data []byte) error {
	msg := C.GoString(&st.msg[0])
	switch {
	case st.code != C.TJERR_WARNING || !isWarning(msg):
		return fmt.Errorf("turbojpeg: %s: %s", op, msg)
	case strings.HasPrefix(msg, jpegEOF) || !reachesEOI(data):
		return fmt.Errorf("%w: %s: %s", ErrWarning, op, jpegEOF)
	}
	return nil
}

// jpegEOF is libjpeg's warning for data that ends before its EOI marker.
const jpegEOF = "Premature end of JPEG file"

// isWarning tells libjpeg's warnings (the JWRN_ messages of libjpeg-turbo
// 2.1's jerror.h) from its errors. No error message starts like these.
func isWarning(msg string) bool {
	for _, w := range [...]string{
		"Corrupt JPEG data: ", // extraneous bytes, end of data segment, bad Huffman or arithmetic code, RST expected, bad ICC marker
		jpegEOF,
		"Unknown Adobe color transform code ",
		"Inconsistent progression sequence for component ",
		"Warning: unknown JFIF revision number ",
		"Invalid SOS parameters for sequential JPEG",
		"Application transferred too many scanlines",
	} {
		if strings.HasPrefix(msg, w) {
			return true
		}
	}
	return false
}

// Header reads data's frame header. libjpeg's warnings are not errors
// unless data is cut short (see Decode).
func (d *Decoder) Header(data []byte) (Info, error) {
	if len(data) == 0 {
		return Info{}, errors.New("turbojpeg: empty input")
	}
	var w, h, cs C.int
	var st C.bg_status
	rc := C.bg_header(d.h, (*C.uchar)(unsafe.Pointer(unsafe.SliceData(data))), C.ulong(len(data)), &w, &h, &cs, &st)
	runtime.KeepAlive(data)
	if rc != 0 {
		if err := failed("header", &st, data); err != nil {
			return Info{}, err
		}
	}
	if w <= 0 || h <= 0 {
		// A tables-only datastream: libjpeg reads its tables and
		// reports success with no frame.
		return Info{}, errors.New("turbojpeg: header: no image in the data (tables only?)")
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
// that size. libjpeg's warnings are not errors, as in PIL, except a file
// cut short (ErrWarning); an error after a warning is an error.
func (d *Decoder) Decode(data []byte, denom int, f Format, dst []byte) (w, h int, err error) {
	if denom != 1 && denom != 2 && denom != 4 && denom != 8 {
		return 0, 0, fmt.Errorf("turbojpeg: scale 1/%d, want 1/1, 1/2, 1/4 or 1/8", denom)
	}
	info, err := d.Header(data) // a size of at least 1x1, or an error
	if err != nil {
		return 0, 0, err
	}
	w, h = ScaledSize(info.Width, info.Height, denom)
	if len(dst) < w*h*f.Bytes() {
		return 0, 0, fmt.Errorf("turbojpeg: buffer of %d bytes for %dx%d pixels of %d bytes", len(dst), w, h, f.Bytes())
	}
	pf := [...]C.int{C.TJPF_RGB, C.TJPF_GRAY, C.TJPF_CMYK}[f]
	var st C.bg_status
	rc := C.bg_decompress(d.h, (*C.uchar)(unsafe.Pointer(unsafe.SliceData(data))), C.ulong(len(data)),
		(*C.uchar)(unsafe.Pointer(unsafe.SliceData(dst))), C.int(w), C.int(w*f.Bytes()), C.int(h), pf, &st)
	runtime.KeepAlive(data)
	runtime.KeepAlive(dst)
	if rc != 0 {
		if err := failed("decode", &st, data); err != nil {
			return 0, 0, err
		}
	}
	return w, h, nil
}
