// Package libdeflate is a small cgo wrapper over libdeflate (Debian:
// libdeflate-dev), linked statically from libdeflate.a: it inflates a whole
// zlib stream from memory into a buffer of exactly the expected size, about
// 3 to 4 times faster than compress/zlib. Package imageprep uses it for the
// image data of PNG files (docs/performance.md).
//
// It is built when cgo is on and the nolibdeflate build tag is off; then
// Available is true. Otherwise Zlib returns ErrUnavailable and imageprep
// inflates with compress/zlib.
//
// Zlib never writes beyond dst and never reads beyond src: libdeflate takes
// both sizes and fails (ErrCorrupt) when the stream needs more of either. A
// decompressor is allocated and freed in each call (a few KiB of C memory,
// about a microsecond), so no state passes from one request's data to
// another's.
package libdeflate

import "errors"

// ErrUnavailable: this build has no libdeflate.
var ErrUnavailable = errors.New("libdeflate: not in this build (cgo off or the nolibdeflate tag)")

// ErrCorrupt: the stream is not valid zlib, its checksum does not match, or
// it does not inflate to exactly len(dst) bytes.
var ErrCorrupt = errors.New("libdeflate: corrupt zlib stream, or not the expected size")
