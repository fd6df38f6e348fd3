#!/usr/bin/env bash
# install-tools.sh: installs the system packages the project needs that a
# fresh machine may lack (Debian's apt, as root). Quiet when all are there.
set -euo pipefail
need=()
# Checked by package (dpkg), not by the presence of one command: a package
# installed without what it needs is not enough. npm is the exception: any
# npm can `npm pack` (scripts/npm-pack.sh), whatever installed it.
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
command -v npm >/dev/null || need+=(npm)
# git; curl (containers/test.sh talks to the pod with it); prometheus (the
# chart's tests run a real Prometheus and promtool); chromium
# (proxy/gateway/docs_browser_test.go drives Swagger UI in it);
# libturbojpeg0-dev, libdeflate-dev and libwebp-dev (the proxy's JPEG
# decoder, PNG inflater and lossy WebP decoder, cgo, static); python3-pil and
# python3-numpy (the PIL reference of the parity tests). The real-node tests
# (internal/kubenode, helm/realnode_test.go): containerd, runc and the CNI
# plugins from Debian bookworm (containerd 1.6.20, runc 1.1.5, plugins
# 1.1.1), iptables for kube-proxy and the CNI bridge, and gcc with glibc's
# static libraries for the pause image. protobuf-compiler: protoc, which
# regenerates proxy/oipgrpc/inferencepb (go generate; its test checks the
# checked-in code is current). python3-grpcio and python3-grpc-tools: the
# gRPC test's Python client (proxy/gateway/grpcclients_test.go generates its
# stubs with grpc_tools.protoc and runs examples/python/grpc_client.py).
for p in git curl prometheus chromium libturbojpeg0-dev libdeflate-dev libwebp-dev python3-pil python3-numpy \
  containerd runc containernetworking-plugins iptables gcc libc6-dev protobuf-compiler \
  python3-grpcio python3-grpc-tools; do
  installed "$p" || need+=("$p")
done
# While apt works, download the Go modules that the tool builds (below,
# scripts/build-tools.sh, scripts/build-jaeger.sh) compile: on a cold machine
# about 1.5 minutes of downloads that otherwise sit between their compiles.
# Best effort (each build downloads what is still missing), only while a tool
# is missing, and waited for below.
root=$(cd "$(dirname "$0")/.." && pwd)
tools=$root/.deps/tools
# Prometheus's pin and build tags, for the prefetch and the build below.
prom_mod=github.com/prometheus/prometheus prom_ver=v0.316.0 prom_tags=remove_all_sd,enable_kubernetes_sd
prefetch=
if [ ! -x "$tools/prometheus-k8s" ] || [ ! -x "$tools/keda-operator" ] || [ ! -x "$tools/jaeger" ]; then
  # setsid: a process group of its own, so that the kill below reaches go.
  setsid bash -c '
    cd "$1/tools" && go list -deps tool >/dev/null
    cd "$1/internal/jaegertest/jaegertool" && go list -deps github.com/jaegertracing/jaeger/cmd/jaeger >/dev/null
    prom=$(go mod download -json "$2@$3" | sed -n "s/^\t\"Dir\": \"\(.*\)\",\$/\1/p")
    cd "$prom" && GOWORK=off go list -deps -tags "$4" ./cmd/prometheus >/dev/null
  ' _ "$root" "$prom_mod" "$prom_ver" "$prom_tags" >/dev/null 2>&1 &
  prefetch=$!
  trap 'kill -- -"$prefetch" 2>/dev/null' EXIT
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-tools: please install: ${need[*]}" >&2
    exit 1
  fi
  echo "install-tools: apt-get install ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -n "$prefetch" ]; then
  # At most 5 minutes more; then the builds download the rest themselves.
  for _ in $(seq 300); do kill -0 "$prefetch" 2>/dev/null || break; sleep 1; done
  kill -- -"$prefetch" 2>/dev/null || true
  wait "$prefetch" 2>/dev/null || true
  trap - EXIT
fi

# The Kubernetes binaries, etcd, KEDA, helm and grpcurl: scripts/build-tools.sh,
# from one module (tools/go.mod). Prometheus keeps its own (below).

mkdir -p "$tools"
# Prometheus with Kubernetes service discovery, built from its Go module
# (pinned; v0.316.0 is Prometheus 3.16.0) with that discovery alone
# (-tags remove_all_sd,enable_kubernetes_sd), into .deps/tools as
# prometheus-k8s: the real-node autoscaling test (helm/realnode_autoscale_test.go)
# has it discover the chart's pods by their prometheus.io annotations, as
# users run it. Debian's Prometheus (2.42, the other chart tests') is built
# without Kubernetes discovery. Not in tools/go.mod: its OpenTelemetry
# Collector packages want gobwas/glob v0.2, and KEDA there v1.0.
if [ ! -x "$tools/prometheus-k8s" ]; then
  echo "install-tools: go install $prom_mod/cmd/prometheus@$prom_ver (about 3 minutes)" >&2
  bin=$(mktemp -d)
  GOBIN="$bin" go install -trimpath -tags "$prom_tags" \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=3.16.0" \
    "$prom_mod/cmd/prometheus@$prom_ver"
  mv "$bin/prometheus" "$tools/prometheus-k8s"
  rmdir "$bin"
fi
