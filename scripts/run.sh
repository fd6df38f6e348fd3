#!/usr/bin/env bash
# run.sh: builds and starts the runtime on the default model (downloaded, or
# generated when offline) with its socket in a temporary folder. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/runtime ./runtime
model=$(bin/runtime fetch-model -dir .deps/models)
sockdir=$(mktemp -d -t batchgate.XXXXXX)
export RUNTIME_SOCKET="$sockdir/runtime.sock" MODEL_PATH="$model"
export ORT_LIBRARY="${ORT_LIBRARY:-$PWD/.deps/onnxruntime/libonnxruntime.so.1}"
export ORT_CACHE_DIR="${ORT_CACHE_DIR:-$PWD/.deps/ort-cache}"
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait || true; rm -rf "$sockdir"; }
trap cleanup EXIT INT TERM
bin/runtime serve &
pids+=($!)
echo "runtime: model $model, socket $RUNTIME_SOCKET (Ctrl-C stops it)" >&2
wait -n
