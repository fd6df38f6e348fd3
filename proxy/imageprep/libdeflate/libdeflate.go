//go:build cgo && !nolibdeflate

package libdeflate

/*
#cgo LDFLAGS: -l:libdeflate.a
#include <stdlib.h>
#include <libdeflate.h>

// bg_zlib inflates in[0:in_n] into exactly out[0:out_n]. It returns
// libdeflate's result (-1 when the decompressor cannot be allocated) and
// the input bytes the stream used in *used.
static int bg_zlib(const void *in, size_t in_n, void *out, size_t out_n, size_t *used) {
	struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
	if (d == NULL) return -1;
	int rc = libdeflate_zlib_decompress_ex(d, in, in_n, out, out_n, used, NULL);
	libdeflate_free_decompressor(d);
	return rc;
}
*/
import "C"

import (
	"errors"
	"unsafe"
)

// Available is true: this build inflates with libdeflate.
const Available = true

// Zlib inflates the zlib stream at the start of src into dst, which must be
// exactly the inflated size: a stream that inflates to fewer or more bytes
// is ErrCorrupt, as is one whose Adler-32 checksum does not match. It
// returns how many bytes of src the stream took (the rest is not read).
func Zlib(dst, src []byte) (used int, err error) {
	if len(dst) == 0 || len(src) == 0 {
		return 0, ErrCorrupt
	}
	var n C.size_t
	// dst and src hold no Go pointers, so C may read and write them for
	// the call's duration (the cgo pointer rules).
	rc := C.bg_zlib(unsafe.Pointer(&src[0]), C.size_t(len(src)), unsafe.Pointer(&dst[0]), C.size_t(len(dst)), &n)
	switch rc {
	case C.LIBDEFLATE_SUCCESS:
		return int(n), nil
	case -1:
		return 0, errors.New("libdeflate: cannot allocate a decompressor")
	}
	return 0, ErrCorrupt
}
