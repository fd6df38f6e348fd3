#!/usr/bin/env bash
# run-ab.sh (`make run-ab`): two model versions side by side behind one
# proxy, with a 90/10 canary (docs/versions.md). Version v1 is the fp32
# model, v2 the int8 variant (`runtime fetch-model -variant int8`; where
# that fails, a copy of the fp32 model). Each runs in its own runtime, on
# its own socket; the proxy reads routing.yaml from the socket folder and
# reloads it when it changes: edit it while this runs to move the split.
# Ctrl-C stops everything and removes the folder. PORT (default 9999) is the
# API, METRICS_PORT (default 9464, or the next free port above it) /metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-9999}
say() { echo "batchgate: $*" >&2; }

# ready, alive, listening, build and metrics_port (scripts/lib-run.sh).
source scripts/lib-run.sh
metrics_port=$(metrics_port)
build
export ORT_LIBRARY="${ORT_LIBRARY:-$PWD/.deps/onnxruntime/libonnxruntime.so.1}"
export ORT_CACHE_DIR="${ORT_CACHE_DIR:-$PWD/.deps/ort-cache}"
fp32=$(bin/runtime fetch-model -dir .deps/models -variant fp32 -ort-library "$ORT_LIBRARY")
v2variant=int8
if ! int8=$(bin/runtime fetch-model -dir .deps/models -variant int8 -ort-library "$ORT_LIBRARY"); then
  say "no int8 model: v2 is a copy of the fp32 model"
  int8=.deps/models/ab-copy-$(basename "$fp32")
  cp "$fp32" "$int8"
  v2variant=fp32
fi
dir=$(mktemp -d -t batchgate-ab.XXXXXX)
cat >"$dir/routing.yaml" <<YAML
# Edit me: the proxy applies a valid change within 2 s and logs a bad one.
models:
  - name: resnet50
    versions:
      - {name: v1, socket: $dir/v1.sock, variant: fp32, weight: 90}
      - name: v2
        socket: $dir/v2.sock
        variant: $v2variant
        weight: 10
        rollback: {window: 60s, min_requests: 20, max_error_rate: 0.05}
YAML

pids=()
cleanup() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
  rm -rf "$dir"
  say "stopped; removed $dir"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

RUNTIME_SOCKET="$dir/v1.sock" MODEL_PATH="$fp32" MODEL_VARIANT=fp32 bin/runtime serve &
pids+=($!)
RUNTIME_SOCKET="$dir/v2.sock" MODEL_PATH="$int8" MODEL_VARIANT=$v2variant bin/runtime serve &
pids+=($!)
ROUTING_FILE="$dir/routing.yaml" PORT="$port" METRICS_PORT="$metrics_port" DRAIN_DELAY="${DRAIN_DELAY:-0s}" bin/proxy &
pids+=($!)

say "warming up two runtimes; the URL follows when the proxy is ready"
start=$SECONDS
until ready; do
  alive || { say "a process exited during start-up (see its log above); stopping"; exit 1; }
  sleep 0.2
done
say "ready in $((SECONDS - start)) s: http://localhost:$port, v1 (fp32) 90%, v2 ($v2variant) 10%"
say "  split:    for i in \$(seq 20); do curl -s -F file=@proxy/testdata/grace_hopper.jpg localhost:$port/predict | grep -o '\"model_version\":\"v[12]\"'; done | sort | uniq -c"
say "  explicit: curl -H 'X-Model-Version: v2' -F file=@proxy/testdata/grace_hopper.jpg localhost:$port/predict"
say "  versions: curl localhost:$port/v2/models/resnet50"
say "  metrics:  curl -s localhost:$metrics_port/metrics | grep inference_version_    (METRICS_PORT; not on the API port)"
say "  routing:  $dir/routing.yaml (edit the weights; reloaded within 2 s)"
wait -n
say "a process exited; stopping the others"
exit 1
