//go:build cgo && !nolibwebp

package libwebp

/*
#include <mcheck.h>
#include <stddef.h>
#include <stdint.h>

int bg_vp8(const uint8_t *in, size_t n, int fw, int fh, int ow, int oh, uint8_t *out, size_t out_n);

// bg_traced is bg_vp8 (libwebp.go) between mtrace() and muntrace(): with
// glibc's libc_malloc_debug.so preloaded and MALLOC_TRACE naming a file,
// every allocation and free of the decode is written there (otherwise
// mtrace does nothing). For TestMemoryBytes only.
static int bg_traced(const uint8_t *in, size_t n, int fw, int fh, int ow, int oh, uint8_t *out, size_t out_n) {
	mtrace();
	int st = bg_vp8(in, n, fw, fh, ow, oh, out, out_n);
	muntrace();
	return st;
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// traceC decodes frame (width x height) to outW x outH into dst, as
// DecodeVP8 does, with glibc's malloc trace on (see bg_traced).
func traceC(frame []byte, width, height, outW, outH int, dst []byte) error {
	rc := C.bg_traced((*C.uint8_t)(unsafe.Pointer(&frame[0])), C.size_t(len(frame)), C.int(width), C.int(height),
		C.int(outW), C.int(outH), (*C.uint8_t)(unsafe.Pointer(&dst[0])), C.size_t(len(dst)))
	if rc != 0 {
		return fmt.Errorf("libwebp: %s", status(int(rc)))
	}
	return nil
}
