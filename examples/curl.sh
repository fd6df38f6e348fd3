#!/usr/bin/env bash
# curl.sh [URL] [IMAGE]: the batchgate API from curl, one command per call.
#
#   examples/curl.sh http://localhost:9999
#
# URL defaults to http://localhost:9999, IMAGE to the bundled
# proxy/testdata/grace_hopper.jpg; MODEL (default resnet50) is the model name
# in the Open Inference Protocol routes. Every curl has -m (a time limit) and
# --fail-with-body: a 4xx/5xx prints the server's {"error": "..."} and stops
# the script with a non-zero status.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
url=${1:-http://localhost:9999}
url=${url%/}
img=${2:-$here/../proxy/testdata/grace_hopper.jpg}
model=${MODEL:-resnet50}

echo "# POST /predict, multipart field 'file' (as the FastAPI clients send it), top 3"
curl -sS --fail-with-body -m 30 -F "file=@$img" "$url/predict?top_k=3"
echo

echo "# POST /predict, the image itself as the body (any image/* content type; the format is read from the bytes)"
curl -sS --fail-with-body -m 30 -H 'Content-Type: image/jpeg' --data-binary "@$img" "$url/predict"
echo

echo "# Open Inference Protocol v2: a BYTES input holding the base64 image, top 3 as \"score:index:label\""
# The JSON goes through stdin (--data-binary @-): a large image's base64 would
# not fit on a command line.
printf '{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["%s"]}],"outputs":[{"name":"classification","parameters":{"classification":3}}]}' \
  "$(base64 <"$img" | tr -d '\n')" |
  curl -sS --fail-with-body -m 30 -H 'Content-Type: application/json' --data-binary @- "$url/v2/models/$model/infer"
echo

echo "# Open Inference Protocol v2: model metadata (inputs, outputs, model_sha256, max_batch_size)"
curl -sS --fail-with-body -m 10 "$url/v2/models/$model"
echo
