#!/usr/bin/env bash
# jpeg-tags.sh: prints the go flag that picks the JPEG decoder. Nothing when
# libjpeg-turbo's header and static library are installed (Debian:
# libturbojpeg0-dev): the proxy decodes JPEG with it through cgo. Otherwise
# "-tags=nojpegturbo", Go's own decoder (about 3x slower on photos, see
# docs/performance.md), with a note on stderr.
cc=${CC:-cc}
if [ "${CGO_ENABLED:-1}" != 0 ] && echo '#include <turbojpeg.h>' | "$cc" -E - >/dev/null 2>&1 &&
  [ -f "$("$cc" -print-file-name=libturbojpeg.a)" ]; then
  exit 0
fi
echo "batchgate: libjpeg-turbo not found (apt-get install libturbojpeg0-dev): JPEG decodes with Go's slower decoder" >&2
echo "-tags=nojpegturbo"
