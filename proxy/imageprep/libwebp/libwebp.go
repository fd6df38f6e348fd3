//go:build cgo && !nolibwebp

package libwebp

/*
#cgo LDFLAGS: -l:libwebp.a -lm
#include <stdlib.h>
#include <webp/decode.h>

// bg_vp8 decodes the lossy VP8 frame in[0:n], which must be fw x fh, into
// out as RGB rows of ow x oh (scaled by libwebp's rescaler when smaller).
// It returns libwebp's status, or -1 when the frame is not lossy or not
// of that size, -2 when the decoder cannot be set up. Not static:
// measure.go's test helper calls it too.
int bg_vp8(const uint8_t *in, size_t n, int fw, int fh, int ow, int oh, uint8_t *out, size_t out_n) {
	WebPDecoderConfig c;
	if (!WebPInitDecoderConfig(&c)) return -2;
	VP8StatusCode st = WebPGetFeatures(in, n, &c.input);
	if (st != VP8_STATUS_OK) return st;
	// format 1: lossy. A bare VP8 frame has no alpha and no animation.
	if (c.input.format != 1 || c.input.has_alpha || c.input.has_animation ||
	    c.input.width != fw || c.input.height != fh) return -1;
	if (ow != fw || oh != fh) {
		c.options.use_scaling = 1;
		c.options.scaled_width = ow;
		c.options.scaled_height = oh;
	}
	c.output.colorspace = MODE_RGB;
	c.output.is_external_memory = 1;
	c.output.u.RGBA.rgba = out;
	c.output.u.RGBA.stride = 3 * ow;
	c.output.u.RGBA.size = out_n;
	st = WebPDecode(in, n, &c);
	WebPFreeDecBuffer(&c.output); // frees nothing of external memory
	return st;
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// Available is true: this build decodes lossy WebP with libwebp.
const Available = true

// DecodeVP8 decodes frame, a lossy VP8 bitstream of width x height pixels
// (a WebP file's "VP8 " chunk payload, without the chunk header), into dst
// as RGB, 3 bytes a pixel, rows of outW pixels: at full size when outW x
// outH is the frame's size, else scaled down by libwebp's rescaler (an
// area average). dst must hold at least 3*outW*outH bytes. A frame of
// another size, a lossless or cut one, is ErrCorrupt.
func DecodeVP8(frame []byte, width, height, outW, outH int, dst []byte) error {
	if outW < 1 || outH < 1 || outW > width || outH > height {
		return fmt.Errorf("BUG: libwebp: cannot decode %dx%d to %dx%d", width, height, outW, outH)
	}
	if len(dst) < 3*outW*outH {
		return fmt.Errorf("BUG: libwebp: %d bytes for %dx%d RGB", len(dst), outW, outH)
	}
	if len(frame) == 0 {
		return ErrCorrupt
	}
	// frame and dst hold no Go pointers, so C may read and write them for
	// the call's duration (the cgo pointer rules).
	rc := C.bg_vp8((*C.uint8_t)(unsafe.Pointer(&frame[0])), C.size_t(len(frame)), C.int(width), C.int(height),
		C.int(outW), C.int(outH), (*C.uint8_t)(unsafe.Pointer(&dst[0])), C.size_t(len(dst)))
	switch rc {
	case C.VP8_STATUS_OK:
		return nil
	case C.VP8_STATUS_OUT_OF_MEMORY:
		return fmt.Errorf("libwebp: out of memory decoding %dx%d", width, height)
	case -2:
		return fmt.Errorf("libwebp: cannot set up a decoder (version mismatch)")
	case -1:
		return fmt.Errorf("%w: not a lossy %dx%d frame", ErrCorrupt, width, height)
	}
	return fmt.Errorf("%w (%s)", ErrCorrupt, status(int(rc)))
}

// status names libwebp's VP8StatusCode.
func status(rc int) string {
	names := [...]string{"ok", "out of memory", "invalid parameter", "bitstream error",
		"unsupported feature", "suspended", "user abort", "not enough data"}
	if rc >= 0 && rc < len(names) {
		return names[rc]
	}
	return fmt.Sprintf("status %d", rc)
}
