#!/usr/bin/env bash
# Build the Linux bundle and the .deb:  sudo bash packaging/linux/build.sh
#   -> build/linux/bundle/berth/          the PyInstaller onedir bundle (berth, berthd, _internal/)
#   -> dist/berth_<version>_<arch>.deb     /opt/berth + /usr/bin links, .desktop, icons, metainfo
#
# Needs root only to apt-get the build tools and the Qt xcb libraries PyInstaller must find
# (skipped when they are already installed). The guest image for the host's arch must be
# built first (bash packaging/guest/build.sh --arch amd64); its manifest is checked.
#
# Environment:
#   BERTH_GUEST_ARCHES   guest images to carry (default: the host's; "amd64 arm64" for both)
#   BERTH_GUEST_OUT      where the guest images are (default packaging/guest/out)
#   BERTH_BUILD_DIR      work folder (default build/linux); BERTH_DIST_DIR (default dist)
#   BERTH_SKIP_APT=1     don't apt-get (the tools and libraries are known to be there)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${BERTH_BUILD_DIR:-$ROOT/build/linux}
DIST=${BERTH_DIST_DIR:-$ROOT/dist}
start=$(date +%s)

# The Qt xcb platform plugin links these; PyInstaller copies them into the bundle only if
# they are installed here. appstream validates the metainfo; dpkg-dev has dpkg-deb.
build_packages=(dpkg-dev appstream desktop-file-utils binutils
  libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0
  libxcb-xinerama0 libxcb-xkb1 libxcb-randr0 libxcb-cursor0 libxkbcommon-x11-0
  libfontconfig1 libdbus-1-3 libegl1 libgl1)
if [ "${BERTH_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${build_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "run as root to install: ${missing[*]}" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
python3 -c "import PyInstaller, PySide6, docker, paramiko, qemu.qmp" 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check -e '.[packaging]'

version=$(python3 packaging/build.py version)
arch=$(dpkg --print-architecture)
echo "== icons"
python3 packaging/build.py icons >/dev/null

echo "== bundle (PyInstaller)"
rm -rf "$BUILD"
mkdir -p "$BUILD" "$DIST"
python3 -m PyInstaller --noconfirm --log-level WARN --distpath "$BUILD/bundle" \
  --workpath "$BUILD/work" packaging/linux/berth.spec
bundle=$BUILD/bundle/berth
"$bundle/berth" --version

echo "== .deb"
root=$BUILD/deb
rm -rf "$root"
mkdir -p "$root/DEBIAN" "$root/opt" "$root/usr/bin" "$root/usr/share/applications" \
  "$root/usr/share/metainfo" "$root/usr/share/doc/berth"
cp -a "$bundle" "$root/opt/berth"
ln -s ../../opt/berth/berth "$root/usr/bin/berth"
ln -s ../../opt/berth/berthd "$root/usr/bin/berthd"
cp packaging/linux/io.github.berth.Berth.desktop "$root/usr/share/applications/"
sed -e "s/@VERSION@/$version/" -e "s/@DATE@/$(date -u +%F)/" \
  packaging/linux/io.github.berth.Berth.metainfo.xml \
  >"$root/usr/share/metainfo/io.github.berth.Berth.metainfo.xml"
mkdir -p "$root/usr/share/icons"
cp -a assets/icons/hicolor "$root/usr/share/icons/"
cat >"$root/usr/share/doc/berth/copyright" <<EOF
Berth $version — Apache-2.0. The bundle carries Python, PySide6/Qt (LGPLv3), docker-py,
paramiko and the other dependencies listed in pyproject.toml, and a Debian guest image
whose packages keep their own licences (packaging/guest/packages.txt).
EOF
desktop-file-validate "$root/usr/share/applications/io.github.berth.Berth.desktop"
appstreamcli validate --no-net "$root/usr/share/metainfo/io.github.berth.Berth.metainfo.xml"

depends=$(python3 packaging/build.py deb-depends "$root/opt/berth")
size_kib=$(du -sk "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: berth
Version: $version
Architecture: $arch
Maintainer: The Berth authors <berth@localhost>
Installed-Size: $size_kib
Depends: $depends, fontconfig-config
Recommends: qemu-system-x86 | qemu-system-arm, qemu-utils, docker.io | podman
Section: admin
Priority: optional
Description: desktop container manager with a QEMU helper VM
 Berth manages containers, images, volumes, networks and compose projects of the
 local Docker or Podman engine, and can run Linux containers in a small Debian
 helper VM under QEMU (the guest image is included).
EOF
deb=$DIST/berth_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zzstd -z9 --build "$root" "$deb" >/dev/null
echo "Depends: $depends"
echo "bundle $(du -sh "$bundle" | cut -f1), .deb $(du -h "$deb" | cut -f1): $deb"
echo "built in $(( $(date +%s) - start )) s"
