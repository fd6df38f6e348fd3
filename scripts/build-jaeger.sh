#!/usr/bin/env bash
# build-jaeger.sh DEST: builds Jaeger's all-in-one binary
# (github.com/jaegertracing/jaeger/cmd/jaeger v1.75.0: Jaeger v2, built on
# the OpenTelemetry Collector), pinned by the wrapper module
# internal/jaegertest/jaegertool, into DEST/jaeger for the trace tests
# (internal/jaegertest). The first build took 16.5 minutes on 2 busy cores
# (10 CPU-minutes) and gives an 85 MB binary; it is kept and reused.
set -euo pipefail
dest=$(realpath -m "${1:?usage: build-jaeger.sh DEST}")
mkdir -p "$dest"
cd "$(dirname "$0")/../internal/jaegertest/jaegertool"
# Without this the binary reports an empty version.
ver="-X github.com/jaegertracing/jaeger/internal/version.latestVersion=v1.75.0"
if [ ! -x "$dest/jaeger" ]; then
  echo "build-jaeger: go build github.com/jaegertracing/jaeger/cmd/jaeger (minutes)" >&2
  go build -trimpath -ldflags "-s -w $ver" -o "$dest/jaeger.tmp" github.com/jaegertracing/jaeger/cmd/jaeger
  mv "$dest/jaeger.tmp" "$dest/jaeger"
fi
