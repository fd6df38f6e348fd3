#!/usr/bin/env bash
# fetch-swagger-ui.sh DEST_DIR: puts the few Swagger UI files that /docs
# serves into DEST_DIR (proxy/docs/swagger-ui, embedded by the proxy with
# go:embed), taken from the npm package swagger-ui-dist. The tarball comes
# through npm-pack.sh (npm pack without install scripts, or curl); the
# tarball and every extracted file are checked against pinned sha256s.
set -euo pipefail

VERSION=5.35.0
TARBALL_SHA256=1b8e891893404ea4c3558b6a87e2a3e494e7eedba41168c2ece5800a391a6ea6
# The files taken from package/ in the tarball, with their sha256s: the UI,
# its stylesheet, an icon, and the licence texts that must travel with them.
FILES=(
  "swagger-ui-bundle.js e6a898692f2d768e807c3ba4626068a69a2c5dd960dd6c76f3e4d3a3de180af2"
  "swagger-ui.css 5ed08757e53da3e026d6cbecc61fe5d43585c9560b302d534ad56692519a273d"
  "favicon-32x32.png 3ed612f41e050ca5e7000cad6f1cbe7e7da39f65fca99c02e99e6591056e5837"
  "LICENSE cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
  "NOTICE 0d20d1adef18aee3f40dd258172155521ce702ac445cb5f7b7d60ed32dad2fb2"
  "swagger-ui-bundle.js.LICENSE.txt 37eb6e7e59aed57b2c1acf076574b818ea07b74265717e0bd67b59e0baf9abbb"
)

dest=${1:?usage: fetch-swagger-ui.sh DEST_DIR}
# sums prints "SHA256  DIR/NAME" lines for sha256sum -c.
sums() {
  local f name sum
  for f in "${FILES[@]}"; do
    read -r name sum <<<"$f"
    echo "$sum  $dir/$name"
  done
}
dir=$dest
if sums | sha256sum -c --status 2>/dev/null; then
  exit 0
fi
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball="$work/swagger-ui-dist-$VERSION.tgz"
"$(dirname "$0")/npm-pack.sh" swagger-ui-dist "$VERSION" "$TARBALL_SHA256" "$tarball"
names=()
for f in "${FILES[@]}"; do
  read -r name _ <<<"$f"
  names+=("package/$name")
done
# -m: the files get the time of extraction, so make sees them as newer than
# this script.
tar -m -xzf "$tarball" -C "$work" "${names[@]}"
dir=$work/package
sums | sha256sum -c --quiet || {
  echo "fetch-swagger-ui: an extracted file has the wrong sha256" >&2
  exit 1
}
# Each file lands under a temporary name, then is renamed into place.
for f in "${FILES[@]}"; do
  read -r name _ <<<"$f"
  mv "$work/package/$name" "$dest/$name.tmp"
  mv "$dest/$name.tmp" "$dest/$name"
done
echo "fetch-swagger-ui: $dest (swagger-ui-dist $VERSION) ready" >&2
