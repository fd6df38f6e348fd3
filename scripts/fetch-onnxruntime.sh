#!/usr/bin/env bash
# fetch-onnxruntime.sh DEST_DIR: puts ONNX Runtime's shared library at
# DEST_DIR/libonnxruntime.so.1, taken from the npm package onnxruntime-node.
# The tarball is fetched with `npm pack` (which never runs install scripts),
# or, where npm is missing (container build stages), downloaded from the
# npm registry with curl; either way the tarball and the library are checked
# against the same pinned sha256s.
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
if command -v npm >/dev/null; then
  echo "fetch-onnxruntime: npm pack onnxruntime-node@$VERSION (about 110 MB)" >&2
  (cd "$work" && npm pack --silent --ignore-scripts "onnxruntime-node@$VERSION" >/dev/null)
elif command -v curl >/dev/null; then
  registry=${NPM_REGISTRY:-https://registry.npmjs.org/}
  echo "fetch-onnxruntime: npm not found; curl ${registry}onnxruntime-node/-/onnxruntime-node-$VERSION.tgz" >&2
  curl -fsSL -o "$tarball" "${registry}onnxruntime-node/-/onnxruntime-node-$VERSION.tgz"
else
  echo "fetch-onnxruntime: npm or curl is needed (apt-get install npm)" >&2
  exit 1
fi
echo "$TARBALL_SHA256  $tarball" | sha256sum -c --status || {
  echo "fetch-onnxruntime: $tarball has sha256 $(sha256sum "$tarball" | cut -d' ' -f1), want $TARBALL_SHA256" >&2
  exit 1
}
tar -xzf "$tarball" -C "$work" "$LIB_PATH_IN_TARBALL"
echo "$LIB_SHA256  $work/$LIB_PATH_IN_TARBALL" | sha256sum -c --status || {
  echo "fetch-onnxruntime: extracted library has the wrong sha256" >&2
  exit 1
}
mv "$work/$LIB_PATH_IN_TARBALL" "$lib.tmp"
mv "$lib.tmp" "$lib"
echo "fetch-onnxruntime: $lib (ONNX Runtime $VERSION) ready" >&2
