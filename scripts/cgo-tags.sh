#!/usr/bin/env bash
# cgo-tags.sh: prints the go flag that picks the proxy's image decoders.
# Nothing when the three C libraries are installed with their headers and
# static libraries: libjpeg-turbo (Debian: libturbojpeg0-dev) for JPEG,
# libdeflate (libdeflate-dev) for the image data of PNG files and libwebp
# (libwebp-dev) for lossy WebP, each linked into the proxy through cgo. For
# each one missing, a build tag, with a note on stderr: nojpegturbo (Go's
# JPEG decoder, about 3x slower on photos), nolibdeflate (compress/zlib,
# about 2.5x slower) and nolibwebp (x/image/webp, about 3x slower and not
# PIL's colors; docs/performance.md).
cc=${CC:-cc}
# have HEADER LIBRARY: cgo is on and both are installed.
have() {
  [ "${CGO_ENABLED:-1}" != 0 ] && echo "#include <$1>" | "$cc" -E - >/dev/null 2>&1 &&
    [ -f "$("$cc" -print-file-name="$2")" ]
}
tags=()
if ! have turbojpeg.h libturbojpeg.a; then
  echo "batchgate: libjpeg-turbo not found (apt-get install libturbojpeg0-dev): JPEG decodes with Go's slower decoder" >&2
  tags+=(nojpegturbo)
fi
if ! have libdeflate.h libdeflate.a; then
  echo "batchgate: libdeflate not found (apt-get install libdeflate-dev): PNG inflates with Go's slower compress/zlib" >&2
  tags+=(nolibdeflate)
fi
if ! have webp/decode.h libwebp.a; then
  echo "batchgate: libwebp not found (apt-get install libwebp-dev): lossy WebP decodes with Go's slower x/image/webp" >&2
  tags+=(nolibwebp)
fi
[ ${#tags[@]} -eq 0 ] || (IFS=,; echo "-tags=${tags[*]}")
