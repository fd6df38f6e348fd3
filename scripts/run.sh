#!/usr/bin/env bash
# run.sh: builds and starts the runtime and the proxy on the default model
# (downloaded, or generated when offline), the socket in a temporary folder.
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/runtime ./runtime
go build -o bin/proxy ./proxy
model=$(bin/runtime fetch-model -dir .deps/models)
sockdir=$(mktemp -d -t batchgate.XXXXXX)
export RUNTIME_SOCKET="$sockdir/runtime.sock" MODEL_PATH="$model"
export ORT_LIBRARY="${ORT_LIBRARY:-$PWD/.deps/onnxruntime/libonnxruntime.so.1}"
export ORT_CACHE_DIR="${ORT_CACHE_DIR:-$PWD/.deps/ort-cache}"
export DRAIN_DELAY="${DRAIN_DELAY:-0s}"
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait || true; rm -rf "$sockdir"; }
trap cleanup EXIT INT TERM
bin/runtime serve &
pids+=($!)
bin/proxy &
pids+=($!)
echo "batchgate: http://localhost:${PORT:-9999}  (try: curl -F file=@photo.jpg localhost:${PORT:-9999}/predict; docs at /docs; Ctrl-C stops)" >&2
wait -n
