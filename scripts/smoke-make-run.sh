#!/usr/bin/env bash
# smoke-make-run.sh (`make smoke`, part of `make test`): the README's first
# command, run as a user runs it, from the working tree.
#
#   1. `make run` on a free port and a free metrics port (METRICS_PORT), in
#      its own process group (as in a terminal);
#   2. once it prints the URL, /readyz must already answer 200;
#   3. curl -F file=@proxy/testdata/grace_hopper.jpg /predict, and check the JSON;
#   4. /metrics answers on the metrics port and counts that request, and is
#      a 404 on the API port;
#   5. the examples in examples/ run against the same server;
#   6. SIGINT to the process group (Ctrl-C): runtime and proxy must be gone,
#      the socket folder removed and both ports released.
#
# Every wait is bounded. A regression of `make run` fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp -t smoke-make-run.XXXXXX.log)
pass=0 fail=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

freeport() { # freeport [NOT]: a free port in 20000-39999, other than NOT
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    [ "$p" != "${1:-}" ] && ! listening "$p" && { echo "$p"; return; }
  done
  echo "smoke: no free port found" >&2
  return 1
}
port=$(freeport)
# The proxy's /metrics port: never its default 9464, which a developer's
# own proxy may hold.
mport=$(freeport "$port")

# make run leads its own process group and session, as a job in a terminal
# does, so SIGINT to the group is what Ctrl-C sends. A background job of a
# script starts with SIGINT ignored, and bash cannot trap a signal ignored on
# entry: the wrapper restores the default disposition a terminal would give.
PORT=$port METRICS_PORT=$mport python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.setsid()
os.execvp(sys.argv[1], sys.argv[1:])' make --no-print-directory run >"$log" 2>&1 &
pgid=$!
finish() {
  kill -KILL -- "-$pgid" 2>/dev/null || true
  echo "smoke: make run's output is in $log"
}
trap finish EXIT

# Cold caches mean Go builds and the model generation: allow 10 minutes.
start=$SECONDS
until grep -q "batchgate: ready in" "$log"; do
  if ! kill -0 "$pgid" 2>/dev/null; then
    echo "smoke: make run exited before it was ready:" >&2
    tail -30 "$log" >&2
    exit 1
  fi
  if ((SECONDS - start > 600)); then
    echo "smoke: make run not ready after 600 s" >&2
    tail -30 "$log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "smoke: make run ready after $((SECONDS - start)) s on port $port (metrics on $mport)"
url="http://127.0.0.1:$port"
murl="http://127.0.0.1:$mport"
sockdir=$(sed -n 's/^batchgate: socket folder //p' "$log" | head -1)

check "warming-up message before the URL" grep -q "batchgate: warming up" "$log"
check "/readyz is 200 as soon as the URL is printed" \
  test "$(curl -s -m 10 -o /dev/null -w '%{http_code}' "$url/readyz")" = 200
check "socket folder exists while running" test -S "$sockdir/runtime.sock"

body=$(curl -s -m 60 -F file=@proxy/testdata/grace_hopper.jpg "$url/predict")
check "curl -F file=@grace_hopper.jpg gives 5 predictions" python3 -c '
import json, sys
r = json.loads(sys.argv[1])
p = r["predictions"]
assert len(p) == 5, p
assert all(isinstance(x["label"], str) and 0 <= x["probability"] <= 1 for x in p), p
assert abs(sum(x["probability"] for x in p)) <= 1.0001
assert r["model"] == "resnet50" and len(r["model_sha256"]) == 64, r
' "$body"
if grep -q "resnet50-v1-generated" "$log"; then
  check "generated weights are flagged in the answer" python3 -c '
import json, sys
r = json.loads(sys.argv[1])
assert r["generated_weights"] is True and "meaningless" in r["warning"], r
' "$body"
fi

check "make run prints where /metrics is" grep -q "batchgate:   metrics:  curl -s localhost:$mport/metrics" "$log"
metrics=$(curl -s -m 10 "$murl/metrics")
check "/metrics answers on the metrics port" grep -q '^inference_runtime_connected 1$' <<<"$metrics"
check "/metrics counts the /predict" grep -q '^inference_requests_total{route="/predict",code="200"} 1$' <<<"$metrics"
check "/metrics is 404 on the API port" \
  test "$(curl -s -m 10 -o /dev/null -w '%{http_code}' "$url/metrics")" = 404
check "the API port's 404 names METRICS_PORT" bash -c 'curl -s -m 10 "$1/metrics" | grep -q METRICS_PORT' _ "$url"
check "the metrics port serves nothing else" \
  test "$(curl -s -m 10 -o /dev/null -w '%{http_code}' "$murl/predict")" = 404

if [ -x examples/test.sh ]; then
  if examples/test.sh "$url"; then check "examples/test.sh" true; else check "examples/test.sh" false; fi
fi

# Ctrl-C.
procs=$(ps -o pid=,comm= -g "$pgid")
check "runtime and proxy run in make run's process group" \
  bash -c 'grep -q " runtime$" <<<"$1" && grep -q " proxy$" <<<"$1"' _ "$procs"
kill -INT -- "-$pgid"
gone=false
for _ in $(seq 300); do # 60 s
  if [ -z "$(ps -o pid= -g "$pgid")" ]; then gone=true; break; fi
  sleep 0.2
done
check "SIGINT stops make, runtime and proxy" $gone
check "make run says it stopped and cleaned up" grep -q "batchgate: stopped; removed $sockdir" "$log"
check "socket folder removed" test ! -e "$sockdir"
check "port released" bash -c '! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null' _ "$port"
check "metrics port released" bash -c '! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null' _ "$mport"

echo "smoke: $pass passed, $fail failed"
[ "$fail" = 0 ]
