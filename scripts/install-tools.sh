#!/usr/bin/env bash
# install-tools.sh: installs the system packages the project needs that a
# fresh machine may lack (Debian's apt, as root). Quiet when all are there.
set -euo pipefail
need=()
command -v npm >/dev/null || need+=(npm)
command -v git >/dev/null || need+=(git)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-tools: please install: ${need[*]}" >&2
    exit 1
  fi
  echo "install-tools: apt-get install ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
