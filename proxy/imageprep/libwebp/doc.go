// Package libwebp is a small cgo wrapper over libwebp's decoder (Debian:
// libwebp-dev), linked statically from libwebp.a: it decodes a lossy VP8
// bitstream (the payload of a WebP file's "VP8 " chunk) from memory straight
// into a caller's buffer as RGB, at the frame's size or scaled down by
// libwebp's area-averaging rescaler. PIL decodes WebP with the same library,
// so at full size the pixels are PIL's, bit for bit. Package imageprep uses
// it for lossy WebP (docs/performance.md); lossless WebP (VP8L) stays with
// golang.org/x/image/webp, whose memory imageprep sizes from the bitstream.
//
// It is built when cgo is on and the nolibwebp build tag is off; then
// Available is true. Otherwise DecodeVP8 returns ErrUnavailable and
// imageprep decodes lossy WebP with x/image/webp.
//
// DecodeVP8 never writes beyond dst: libwebp is given its size and fails
// when the output would not fit. Given the VP8 frame alone, libwebp never
// sees an alpha plane, so the memory it allocates in C is the decoder's
// state for one frame: at most MemoryBytes, which grows with the width only
// (a few rows of macroblocks), not with the image. No state passes from one
// call to the next.
package libwebp

import "errors"

// ErrUnavailable: this build has no libwebp.
var ErrUnavailable = errors.New("libwebp: not in this build (cgo off or the nolibwebp tag)")

// ErrCorrupt: the data is not a whole lossy VP8 frame of the expected size.
var ErrCorrupt = errors.New("libwebp: corrupt or truncated VP8 data")

// MemoryBytes bounds what libwebp allocates in C to decode a lossy frame
// of the given width, at any output size: per column of 16-pixel
// macroblocks, the intra modes, top samples, coefficients and a cache of
// 36 rows of samples (about 2 KB), and per pixel of output width the
// fancy upsampler's or the rescaler's rows (about 40 bytes), plus the
// fixed part. TestMemoryBytes measures it with glibc's allocator.
func MemoryBytes(width, outWidth int) int64 {
	return 2560*int64((width+15)/16) + 64*int64(outWidth) + 64<<10
}
