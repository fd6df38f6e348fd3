#!/usr/bin/env bash
# containers/test.sh: builds both images from the real Dockerfiles on local
# base images (Debian bookworm made by mmdebstrap, no registry), runs them as
# a pod with `podman kube play`, classifies an image through the proxy on a
# loopback port, reads /metrics on the proxy's metrics port (METRICS_PORT, a
# second loopback port; a 404 on the API port), and tears everything down.
# Prints the image sizes and the pod's time from `kube play` to ready.
#
# containers/test.sh --build-only: installs, makes the bases and builds the
# two images (localhost/batchgate-{proxy,runtime}:test), then stops: the
# real-node chart test (helm/realnode_test.go) imports them into its node.
set -euo pipefail
build_only=0
[ "${1:-}" = --build-only ] && build_only=1
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=$PWD/containers/containers.conf
images=.deps/images
pass=0 fail=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi
}

# Checked by package, not by command: podman installed without its
# recommended packages has no catatonit, and `podman kube play` then cannot
# build its pause image (exec: "catatonit": executable file not found).
# podman runs rootful with runc (containers.conf); conmon is a dependency of
# podman but listed so a broken install is repaired; uidmap and
# containernetworking-plugins are what podman's recommended/dependency set
# brings for the builds; curl and python3 are used below.
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
need=()
for p in podman runc conmon catatonit uidmap containernetworking-plugins mmdebstrap curl python3; do
  installed "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "containers: apt-get install ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Local bases: no registry. The Go base carries this machine's Go toolchain
# and CA bundle (module downloads go through the same TLS setup as the host).
mkdir -p "$images"
path='ENV PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
if ! podman image exists localhost/debian:bookworm; then
  [ -f "$images/debian-bookworm.tar" ] || mmdebstrap --quiet --variant=minbase bookworm "$images/debian-bookworm.tar"
  podman import -q --change "$path" "$images/debian-bookworm.tar" localhost/debian:bookworm >/dev/null
fi
# libturbojpeg0-dev, libdeflate-dev and libwebp-dev: the proxy links
# libjpeg-turbo, libdeflate and libwebp statically. The "-4" names a base
# with the three, so an older local base is not reused.
gover=$(go env GOVERSION)-4
if ! podman image exists "localhost/golang:$gover-bookworm"; then
  [ -f "$images/golang-$gover.tar" ] || mmdebstrap --quiet --variant=minbase \
    --include=ca-certificates,curl,gcc,libc6-dev,libturbojpeg0-dev,libdeflate-dev,libwebp-dev \
    bookworm "$images/golang-$gover.tar" --customize-hook="copy-in $(go env GOROOT) /usr/local" \
    --customize-hook='copy-in /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs'
  podman import -q --change "$path" "$images/golang-$gover.tar" "localhost/golang:$gover-bookworm" >/dev/null
fi

build=(podman build -q --network=host --build-arg "GO_IMAGE=localhost/golang:$gover-bookworm")
start=$(date +%s)
"${build[@]}" -f Dockerfile.proxy -t localhost/batchgate-proxy:test . >/dev/null
"${build[@]}" --build-arg BASE_IMAGE=localhost/debian:bookworm --build-arg MODEL_SOURCE=generated \
  -f Dockerfile.runtime -t localhost/batchgate-runtime:test . >/dev/null
echo "containers: images built in $(( $(date +%s) - start ))s"
[ $build_only = 1 ] && exit 0
proxy_mb=$(podman image inspect localhost/batchgate-proxy:test --format '{{.Size}}' | awk '{printf "%.1f", $1/1e6}')
runtime_mb=$(podman image inspect localhost/batchgate-runtime:test --format '{{.Size}}' | awk '{printf "%.1f", $1/1e6}')
echo "containers: proxy image $proxy_mb MB, runtime image $runtime_mb MB"
check "proxy image at most 25 MB" awk "BEGIN{exit !($proxy_mb <= 25)}"
check "proxy image runs as non-root" test "$(podman image inspect localhost/batchgate-proxy:test --format '{{.Config.User}}')" = 65532:65532
check "runtime image runs as non-root" test "$(podman image inspect localhost/batchgate-runtime:test --format '{{.Config.User}}')" = 65532:65532

# Two free loopback ports, both bound until chosen so they differ: the API
# (PORT) and /metrics (METRICS_PORT; its default 9464 may be taken here).
read -r port mport < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')
pod=$(mktemp --suffix=.yaml)
sed -e "s/@PORT@/$port/g" -e "s/@METRICS_PORT@/$mport/g" containers/pod.yaml > "$pod"
cleanup() { podman kube down "$pod" >/dev/null 2>&1 || true; rm -f "$pod"; }
trap cleanup EXIT
podman pod rm -f batchgate-test >/dev/null 2>&1 || true # left by an interrupted run
t0=$(date +%s.%N)
podman kube play --build=false "$pod" >/dev/null
ready=0
for _ in $(seq 1 600); do # at most 60 s
  if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then ready=1; break; fi
  sleep 0.1
done
t1=$(date +%s.%N)
check "pod ready" test $ready = 1
echo "containers: kube play to ready in $(awk "BEGIN{printf \"%.1f\", $t1-$t0}")s"
if [ $ready = 1 ]; then
  out=$(curl -s -F file=@proxy/testdata/grace_hopper.jpg "http://127.0.0.1:$port/predict?top_k=3")
  echo "containers: /predict -> ${out:0:160}..."
  check "classification through the pod" grep -q '"predictions":\[{"label"' <<<"$out"
  check "generated weights reported" grep -q '"generated_weights":true' <<<"$out"
  metrics=$(curl -s "http://127.0.0.1:$mport/metrics")
  check "metrics: one request counted" grep -q 'inference_requests_total{route="/predict",code="200"} 1' <<<"$metrics"
  check "metrics: runtime connected" grep -q '^inference_runtime_connected 1' <<<"$metrics"
  check "metrics: 404 on the API port" \
    test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/metrics")" = 404
  check "runtime runs as uid 65532" test "$(podman exec batchgate-test-runtime id -u)" = 65532
  check "runtime root filesystem read-only" bash -c "! podman exec batchgate-test-runtime touch /usr/x 2>/dev/null"
  check "socket in the shared emptyDir" podman exec batchgate-test-runtime test -S /sock/runtime.sock
  check "proxy decodes JPEG with libjpeg-turbo (static)" bash -c \
    "podman logs batchgate-test-proxy 2>&1 | grep -q '\"jpeg_decoder\":\"libjpeg-turbo\"'"
  check "proxy inflates PNG with libdeflate (static)" bash -c \
    "podman logs batchgate-test-proxy 2>&1 | grep -q '\"png_inflater\":\"libdeflate\"'"
  check "proxy decodes lossy WebP with libwebp (static)" bash -c \
    "podman logs batchgate-test-proxy 2>&1 | grep -q '\"webp_decoder\":\"libwebp\"'"
fi
cleanup
trap - EXIT
check "pod removed" bash -c "! podman pod exists batchgate-test"
echo "containers: $pass passed, $fail failed"
[ "$fail" = 0 ]
