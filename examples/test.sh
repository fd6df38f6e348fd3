#!/usr/bin/env bash
# test.sh URL: runs every example in examples/ against the batchgate server at
# URL and checks what it prints. One "ok   NAME" or "FAIL NAME" line per
# check; exits non-zero if any failed. scripts/smoke-make-run.sh calls it once
# `make run` is ready.
#
# Every request is bounded by the example's own time limit (curl -m, urllib
# and http.Client timeouts), and every example by `timeout`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
url=${1:?usage: examples/test.sh URL}
url=${url%/}
img=$root/proxy/testdata/grace_hopper.jpg
img2=$root/proxy/testdata/small.png

tmp=$(mktemp -d -t batchgate-examples.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { # bad NAME WHY: the failure and the end of what the example printed
  fail=$((fail + 1))
  echo "FAIL $1: $2"
  sed 's/^/     | /' "$tmp/out" | tail -15
}
# run NAME SECONDS CMD...: runs CMD with its output in $tmp/out; false (and a
# FAIL line) if it exits non-zero.
run() {
  local name=$1 secs=$2 rc=0
  shift 2
  (cd "$root" && timeout "$secs" "$@") >"$tmp/out" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    bad "$name" "exit status $rc$([ "$rc" = 124 ] && echo " (over ${secs} s)")"
    return 1
  fi
}
count() { grep -cE "$1" "$tmp/out" || true; } # lines of $tmp/out matching ERE $1

# The model's name, for the /v2 routes (MODEL_NAME may have renamed it).
model=$(curl -s -m 30 -F "file=@$img" "$url/predict" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["model"])' 2>/dev/null) || model=resnet50

# curl.sh: four calls, each must answer 2xx (--fail-with-body stops it otherwise).
if run curl.sh 60 env MODEL="$model" "$here/curl.sh" "$url" "$img"; then
  n_pred=$(count '"predictions":\[')
  n_cls=$(grep -oE '"-?[0-9.]+:[0-9]+:[^"]+"' "$tmp/out" | wc -l)
  if [ "$n_pred" = 2 ] && [ "$n_cls" = 3 ] && grep -q '"platform":"onnxruntime_onnx"' "$tmp/out"; then
    ok curl.sh
  else
    bad curl.sh "want 2 /predict answers, 3 score:index:label strings and the model metadata; got $n_pred, $n_cls"
  fi
fi

# predict.py: 5 predictions from /predict and 5 parsed classifications from /v2.
if run python/predict.py 60 python3 "$here/python/predict.py" --url "$url" --model "$model" "$img"; then
  n_p=$(count '^  [0-9]+\. .* p=[0-9.]+  class_id=[0-9]+$')
  n_s=$(count '^  [0-9]+\. .* score=-?[0-9.]+  index=[0-9]+$')
  if [ "$n_p" = 5 ] && [ "$n_s" = 5 ]; then
    ok python/predict.py
  else
    bad python/predict.py "want 5 predictions and 5 classifications, got $n_p and $n_s"
  fi
fi

# predict.py on a file that is not an image: the server's JSON error, exit 1.
printf 'not an image' >"$tmp/not-an-image.txt"
rc=0
(cd "$root" && timeout 60 python3 "$here/python/predict.py" --url "$url" --model "$model" "$tmp/not-an-image.txt") >"$tmp/out" 2>&1 || rc=$?
if [ "$rc" = 1 ] && grep -q 'HTTP 415: {"error":' "$tmp/out"; then
  ok "python/predict.py reports a 415 and exits 1"
else
  bad "python/predict.py reports a 415 and exits 1" "exit status $rc"
fi

# oip-binary: two images in one binary-data request, 5 lines each.
if run go/oip-binary 120 go run ./examples/go/oip-binary -url "$url" -model "$model" "$img" "$img2"; then
  n=$(count '^  -?[0-9.]+:[0-9]+:.+$')
  heads=$(count '^/.*\.(jpg|png) \(.*\):$')
  if [ "$n" = 10 ] && [ "$heads" = 2 ]; then
    ok go/oip-binary
  else
    bad go/oip-binary "want 2 images with 5 score:index:label lines each, got $heads images and $n lines"
  fi
fi

echo "examples: $pass passed, $fail failed"
[ "$fail" = 0 ]
