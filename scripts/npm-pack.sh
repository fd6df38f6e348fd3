#!/usr/bin/env bash
# npm-pack.sh PACKAGE VERSION SHA256 OUT: fetches the npm registry's tarball
# of PACKAGE@VERSION to OUT and checks it against the pinned SHA256. It uses
# `npm pack --ignore-scripts` (which never runs the package's install
# scripts), or curl from the registry where npm is missing (container build
# stages); either way the same bytes and the same check.
set -euo pipefail
pkg=${1:?usage: npm-pack.sh PACKAGE VERSION SHA256 OUT} version=${2:?} want=${3:?} out=${4:?}
name=${0##*/}
mkdir -p "$(dirname "$out")"
if command -v npm >/dev/null; then
  echo "$name: npm pack $pkg@$version" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent --ignore-scripts "$pkg@$version" >/dev/null)
  mv "$work/$pkg-$version.tgz" "$out"
elif command -v curl >/dev/null; then
  url="${NPM_REGISTRY:-https://registry.npmjs.org/}$pkg/-/$pkg-$version.tgz"
  echo "$name: npm not found; curl $url" >&2
  curl -fsSL -o "$out" "$url"
else
  echo "$name: npm or curl is needed (apt-get install npm)" >&2
  exit 1
fi
echo "$want  $out" | sha256sum -c --status || {
  echo "$name: $pkg@$version has sha256 $(sha256sum "$out" | cut -d' ' -f1), want $want" >&2
  rm -f "$out"
  exit 1
}
