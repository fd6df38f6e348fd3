#!/usr/bin/env bash
# build-k8s-tools.sh DEST: builds kube-apiserver, kube-controller-manager,
# kubectl, and for the real-node tests (internal/kubenode) kube-scheduler,
# kube-proxy and kubelet (k8s.io/kubernetes v1.37.2), etcd (go.etcd.io/etcd/server/v3
# v3.7.0), pinned by the wrapper module helm/k8stools, and KEDA's operator and
# metrics adapter (github.com/kedacore/keda/v2 v2.21.0), pinned by the wrapper
# module helm/kedatools, into DEST for the chart's API-server and control-loop
# tests. About 25 minutes the first time on 2 cores (see
# docs/autoscaling-tests.md); each binary is kept and reused.
set -euo pipefail
dest=$(realpath -m "${1:?usage: build-k8s-tools.sh DEST}")
mkdir -p "$dest"
cd "$(dirname "$0")/../helm/k8stools"
# Without version ldflags kubectl cannot parse the server's version.
ver="-X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1"
ver="$ver -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=v1.37.2"
for t in kube-apiserver:k8s.io/kubernetes/cmd/kube-apiserver kubectl:k8s.io/kubernetes/cmd/kubectl etcd:go.etcd.io/etcd/server/v3 \
  kube-controller-manager:k8s.io/kubernetes/cmd/kube-controller-manager \
  kube-scheduler:k8s.io/kubernetes/cmd/kube-scheduler kube-proxy:k8s.io/kubernetes/cmd/kube-proxy \
  kubelet:k8s.io/kubernetes/cmd/kubelet; do
  name=${t%%:*} pkg=${t#*:}
  if [ ! -x "$dest/$name" ]; then
    echo "build-k8s-tools: go build $pkg (minutes)" >&2
    go build -trimpath -ldflags "-s -w $ver" -o "$dest/$name.tmp" "$pkg"
    mv "$dest/$name.tmp" "$dest/$name"
  fi
done
# KEDA has its own k8s.io versions (v0.36.x): a module of its own.
cd ../kedatools
ver="-X github.com/kedacore/keda/v2/version.Version=2.21.0"
for t in keda-operator:github.com/kedacore/keda/v2/cmd/operator keda-adapter:github.com/kedacore/keda/v2/cmd/adapter; do
  name=${t%%:*} pkg=${t#*:}
  if [ ! -x "$dest/$name" ]; then
    echo "build-k8s-tools: go build $pkg (minutes)" >&2
    go build -trimpath -ldflags "-s -w $ver" -o "$dest/$name.tmp" "$pkg"
    mv "$dest/$name.tmp" "$dest/$name"
  fi
done
