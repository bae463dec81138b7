#!/usr/bin/env bash
# Set up Berth from this checkout on a fresh Debian 12 / Ubuntu 22.04+ machine (run as root
# or with sudo): the system packages (engines, QEMU, guest-image tools, Qt's runtime
# libraries), then Berth itself in editable mode with its test tools, then an engine.
#   --no-engine   don't start an engine (CI starts its own)
set -euo pipefail
cd "$(dirname "$0")/.."
start_engine=1
[ "${1:-}" = "--no-engine" ] && start_engine=0

export DEBIAN_FRONTEND=noninteractive
packages=(
  # engines Berth manages on Linux, and their runtime
  docker.io podman runc docker-compose
  # the helper VM: QEMU, images and the guest-image build (packaging/guest/README.md)
  qemu-system-x86 qemu-system-arm qemu-utils mmdebstrap debian-archive-keyring
  squashfs-tools e2fsprogs cpio gzip kmod busybox-static
  # arm64 guest builds on an amd64 host
  qemu-user-static binfmt-support arch-test
  # real SSH server for the transport tests; curl for service checks
  openssh-server openssh-client curl iproute2 util-linux
  # Qt (PySide6 wheels) runtime libraries and a font
  libgl1 libegl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libdbus-1-3 fonts-dejavu-core
  python3-pip python3-venv
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

if [ "$start_engine" = 1 ]; then
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl enable --now docker.service >/dev/null 2>&1 || true
  fi
  bash .ci/services.sh start
fi
echo "Berth is installed: run 'berth' (window) or 'berth --help' (command line)."
