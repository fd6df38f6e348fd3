#!/usr/bin/env bash
# build-tools.sh DEST: builds the test tools that come from Go modules into
# DEST (.deps/tools), each once, from ONE wrapper module, tools/go.mod:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
#   kubelet, kubectl (k8s.io/kubernetes v1.37.2), etcd (v3.7.0),
#   keda-operator, keda-adapter (KEDA v2.21.0), helm (v3.21.4), grpcurl
#   (v1.9.4).
# One module means one version of each dependency (one k8s.io/* set, one
# gRPC, one OpenTelemetry), so a package that several tools import compiles
# once: about 235 MB of Go source instead of 337 MB for the tools built
# from a module each (docs/testing.md). Each group below is one `go build`
# of several commands, so that their links run beside each other's
# compiles. Two tools keep a module of their own, as their dependencies
# do not build with the versions here: Jaeger (scripts/build-jaeger.sh:
# its OpenTelemetry Collector) and Prometheus (scripts/install-tools.sh:
# the Collector's confmap wants gobwas/glob v0.2, KEDA v1.0).
set -euo pipefail
dest=$(realpath -m "${1:?usage: build-tools.sh DEST}")
mkdir -p "$dest"
cd "$(dirname "$0")/../tools"

# build NAMES... -- FLAGS... -- PKGS...: when any of NAMES is missing from
# DEST, builds PKGS (in that order: NAMES[i] is PKGS[i]'s binary) with
# FLAGS into a temporary folder, then moves each into place.
build() {
  local names=() flags=() pkgs=() missing=0
  while [ "$1" != -- ]; do names+=("$1"); shift; done; shift
  while [ "$1" != -- ]; do flags+=("$1"); shift; done; shift
  pkgs=("$@")
  for n in "${names[@]}"; do [ -x "$dest/$n" ] || missing=1; done
  [ "$missing" = 1 ] || return 0
  echo "build-tools: go build ${names[*]} (minutes the first time)" >&2
  local tmp
  tmp=$(mktemp -d "$dest/.build.XXXXXX")
  go build -trimpath "${flags[@]}" -o "$tmp/" "${pkgs[@]}" || { rm -rf "$tmp"; return 1; }
  # go build names each binary after its package's last element, or the
  # one before it when that is a major version (go.etcd.io/etcd/server/v3:
  # server).
  for i in "${!pkgs[@]}"; do
    local p=${pkgs[$i]}
    [[ ${p##*/} =~ ^v[0-9]+$ ]] && p=${p%/*}
    mv "$tmp/${p##*/}" "$dest/${names[$i]}"
  done
  rmdir "$tmp"
}

# Without version ldflags kubectl cannot parse the server's version.
k8sver="-X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1"
k8sver="$k8sver -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=v1.37.2"
build kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl etcd -- \
  -ldflags "-s -w $k8sver" -- \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3
build keda-operator keda-adapter -- \
  -ldflags "-s -w -X github.com/kedacore/keda/v2/version.Version=2.21.0" -- \
  github.com/kedacore/keda/v2/cmd/operator github.com/kedacore/keda/v2/cmd/adapter
build helm grpcurl -- \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v3.21.4 -X main.version=v1.9.4" -- \
  helm.sh/helm/v3/cmd/helm github.com/fullstorydev/grpcurl/cmd/grpcurl
