#!/usr/bin/env bash
# run.sh (`make run`): builds and starts the runtime and the proxy on the
# default model (downloaded, or generated when the model host is unreachable),
# with the socket in a temporary folder. It prints the URL only once /readyz
# answers 200, so the first request never meets a 503. Ctrl-C (or SIGTERM)
# stops both processes and removes the socket folder.
#
# PORT (default 9999) is the API; METRICS_PORT (default 9464, or the next
# free port above it when 9464 is taken) serves /metrics, and only it.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-9999}
say() { echo "batchgate: $*" >&2; }

# ready, alive, listening, build and metrics_port (scripts/lib-run.sh).
source scripts/lib-run.sh
metrics_port=$(metrics_port)
build
# MODEL_VARIANT: fp32 (default) or int8 (ResNet50 quantized; offline, the
# int8 twin of the generated model, calibrated with ONNX Runtime). The
# runtime checks that the model it loads is that variant.
export MODEL_VARIANT="${MODEL_VARIANT:-fp32}"
model=$(bin/runtime fetch-model -dir .deps/models -variant "$MODEL_VARIANT" \
  -ort-library "${ORT_LIBRARY:-$PWD/.deps/onnxruntime/libonnxruntime.so.1}")
sockdir=$(mktemp -d -t batchgate.XXXXXX)
export RUNTIME_SOCKET="$sockdir/runtime.sock" MODEL_PATH="$model" PORT="$port" METRICS_PORT="$metrics_port"
export ORT_LIBRARY="${ORT_LIBRARY:-$PWD/.deps/onnxruntime/libonnxruntime.so.1}"
export ORT_CACHE_DIR="${ORT_CACHE_DIR:-$PWD/.deps/ort-cache}"
export DRAIN_DELAY="${DRAIN_DELAY:-0s}"

pids=()
cleanup() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
  rm -rf "$sockdir"
  say "stopped; removed $sockdir"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

say "socket folder $sockdir"
bin/runtime serve &
pids+=($!)
bin/proxy &
pids+=($!)

say "warming up: loading $(basename "$model") and running every batch size once; the URL follows when it is ready"
start=$SECONDS
until ready; do
  if ! alive; then
    say "a process exited during start-up (see its log above); stopping"
    exit 1
  fi
  if (((SECONDS - start) % 5 == 0)) && ((SECONDS > start)) && [ "${last:-}" != $SECONDS ]; then
    last=$SECONDS
    say "still warming up ($((SECONDS - start)) s)"
  fi
  sleep 0.2
done
say "ready in $((SECONDS - start)) s: http://localhost:$port"
say "  try: curl -F file=@proxy/testdata/grace_hopper.jpg localhost:$port/predict"
say "  API docs: http://localhost:$port/docs    Ctrl-C stops both processes"
say "  metrics:  curl -s localhost:$metrics_port/metrics    (METRICS_PORT; not on the API port $port)"
case "$model" in
*generated*)
  say "NOTE: the model has GENERATED weights (the model host was unreachable): answers are well-formed but meaningless." ;;
esac
wait -n
say "a process exited; stopping the other"
exit 1
