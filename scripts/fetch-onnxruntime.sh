#!/usr/bin/env bash
# fetch-onnxruntime.sh DEST_DIR: puts ONNX Runtime's shared library at
# DEST_DIR/libonnxruntime.so.1, taken from the npm package onnxruntime-node.
# The tarball comes through npm-pack.sh (npm pack without install scripts,
# or curl where npm is missing); the tarball and the library are checked
# against pinned sha256s.
set -euo pipefail

VERSION=1.30.0
TARBALL_SHA256=6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75
LIB_PATH_IN_TARBALL=package/bin/napi-v6/linux/x64/libonnxruntime.so.1
LIB_SHA256=ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23

dest=${1:?usage: fetch-onnxruntime.sh DEST_DIR}
lib="$dest/libonnxruntime.so.1"
if [ -f "$lib" ] && echo "$LIB_SHA256  $lib" | sha256sum -c --status; then
  exit 0
fi
if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "fetch-onnxruntime: only linux/x86_64 is pinned here; set ORT_LIBRARY to your own libonnxruntime.so" >&2
  exit 1
fi
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball="$work/onnxruntime-node-$VERSION.tgz"
echo "fetch-onnxruntime: onnxruntime-node@$VERSION is about 110 MB" >&2
"$(dirname "$0")/npm-pack.sh" onnxruntime-node "$VERSION" "$TARBALL_SHA256" "$tarball"
tar -xzf "$tarball" -C "$work" "$LIB_PATH_IN_TARBALL"
echo "$LIB_SHA256  $work/$LIB_PATH_IN_TARBALL" | sha256sum -c --status || {
  echo "fetch-onnxruntime: extracted library has the wrong sha256" >&2
  exit 1
}
mv "$work/$LIB_PATH_IN_TARBALL" "$lib.tmp"
mv "$lib.tmp" "$lib"
echo "fetch-onnxruntime: $lib (ONNX Runtime $VERSION) ready" >&2
