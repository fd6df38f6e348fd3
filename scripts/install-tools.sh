#!/usr/bin/env bash
# install-tools.sh: installs the system packages the project needs that a
# fresh machine may lack (Debian's apt, as root). Quiet when all are there.
set -euo pipefail
need=()
command -v npm >/dev/null || need+=(npm)
command -v git >/dev/null || need+=(git)
command -v curl >/dev/null || need+=(curl) # containers/test.sh talks to the pod with it
command -v promtool >/dev/null || need+=(prometheus) # the chart's tests run a real Prometheus
command -v chromium >/dev/null || need+=(chromium) # proxy/docs_browser_test.go drives Swagger UI in it
[ -f /usr/include/turbojpeg.h ] || need+=(libturbojpeg0-dev) # the proxy's JPEG decoder (cgo, static)
/usr/bin/python3 -c 'import PIL, numpy' 2>/dev/null || need+=(python3-pil python3-numpy) # the PIL reference (parity tests)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-tools: please install: ${need[*]}" >&2
    exit 1
  fi
  echo "install-tools: apt-get install ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# helm, built from its Go module (pinned), into .deps/tools.
tools=$(cd "$(dirname "$0")/.." && pwd)/.deps/tools
if [ ! -x "$tools/helm" ]; then
  echo "install-tools: go install helm.sh/helm/v3/cmd/helm@v3.22.0 (about 1.5 minutes)" >&2
  GOBIN="$tools" go install helm.sh/helm/v3/cmd/helm@v3.22.0
fi
