#!/bin/bash
# mmdebstrap customize hook: unpack the generic Debian kernel package into the
# chroot WITHOUT running its maintainer scripts (so no initramfs generator is
# needed inside the image). Runs on the build host with the chroot's apt
# configuration, which also works for a foreign architecture.
#
# usage: fetch-kernel.sh CHROOT_DIR ARCH
set -euo pipefail

root=$1
arch=$2

if [[ -z "${MMDEBSTRAP_APT_CONFIG:-}" ]]; then
    echo "fetch-kernel.sh: must run as an mmdebstrap hook" >&2
    exit 1
fi
export APT_CONFIG=$MMDEBSTRAP_APT_CONFIG

meta="linux-image-${arch}"
# The meta package depends on exactly one versioned image package.
pkg=$(apt-cache depends "$meta" | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
if [[ -z "$pkg" ]]; then
    echo "fetch-kernel.sh: cannot resolve the kernel package behind $meta" >&2
    exit 1
fi

tmp=$(mktemp -d)
chmod 0755 "$tmp"  # apt downloads as the _apt user
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q "$pkg:$arch")
deb=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n1)
# Unpack like dpkg would: keep the merged-/usr symlinks (/lib -> usr/lib) intact.
dpkg-deb --fsys-tarfile "$deb" | tar -C "$root" --keep-directory-symlink -xf -
echo "fetch-kernel.sh: unpacked $pkg"
