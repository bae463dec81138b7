#!/bin/bash
# Build Berth's guest VM image from Debian packages.
#
# Outputs (in --out, default packaging/guest/out/<arch>/):
#   vmlinuz          the generic Debian kernel: on amd64 the uncompressed ELF vmlinux
#                    (booted through PVH), on arm64 the raw Image
#   initrd.img       busybox initramfs that mounts the squashfs root with a tmpfs overlay
#   rootfs.squashfs  read-only root filesystem (Debian minbase + docker.io + openssh ...)
#   manifest.json    version, arch, kernel version, sha256/size of each file, recipe hash
#
# See packaging/guest/README.md and docs/guest-image.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
initdir="$repo/vm_backend/guest/init"
agent="$repo/vm_backend/guest/agent.py"

arch=amd64
out=""
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/berth/guest-build"
suite=bookworm
mirror=http://deb.debian.org/debian
security_mirror=http://deb.debian.org/debian-security
force=0
refresh=0
squashfs_comp=zstd
squashfs_level=19

usage() {
    cat <<EOF
usage: $0 [--arch amd64|arm64] [--out DIR] [--cache-dir DIR] [--mirror URL]
          [--security-mirror URL] [--force] [--refresh]

  --arch ARCH        guest architecture (default: amd64)
  --out DIR          output directory (default: packaging/guest/out/ARCH)
  --cache-dir DIR    where the base root filesystem tarball is cached
                     (default: ~/.cache/berth/guest-build)
  --mirror URL       Debian mirror (default: $mirror)
  --security-mirror URL  Debian security mirror (default: $security_mirror)
  --force            rebuild the outputs even if the recipe is unchanged
  --refresh          also re-download packages (ignore the cached base tarball)
  --fast             quick squashfs compression (zstd level 3; bigger image) for
                     development iterations
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --cache-dir) cache_dir=${2:?--cache-dir needs a value}; shift 2 ;;
        --mirror) mirror=${2:?--mirror needs a value}; shift 2 ;;
        --security-mirror) security_mirror=${2:?--security-mirror needs a value}; shift 2 ;;
        --force) force=1; shift ;;
        --refresh) refresh=1; force=1; shift ;;
        --fast) squashfs_level=3; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "$arch" in
    amd64) initrd_modules=(virtio_pci virtio_blk squashfs overlay qemu_fw_cfg) ;;
    arm64) initrd_modules=(virtio_pci virtio_mmio virtio_blk squashfs overlay qemu_fw_cfg) ;;
    *) echo "build.sh: unsupported --arch: $arch (amd64 or arm64)" >&2; exit 2 ;;
esac

out=${out:-"$here/out/$arch"}

log() { printf '[build.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (mmdebstrap --mode=root, device nodes in the initramfs)"
fi
for tool in mmdebstrap mksquashfs cpio gzip sha256sum depmod python3 dpkg-deb apt-get; do
    command -v "$tool" >/dev/null || die "missing host tool: $tool (see packaging/guest/README.md)"
done

# ---------------------------------------------------------------------------
# Recipe hash: everything that determines the outputs.
# ---------------------------------------------------------------------------
recipe_files=("$here/build.sh" "$here/fetch-kernel.sh" "$here/packages.txt"
              "$here/prune-modules.txt")
while IFS= read -r -d '' f; do recipe_files+=("$f"); done \
    < <(find "$initdir" -type f -print0 | sort -z)
if [[ -f "$agent" ]]; then recipe_files+=("$agent"); fi

recipe_hash=$(
    {
        printf 'arch=%s suite=%s comp=%s/%s\n' "$arch" "$suite" "$squashfs_comp" "$squashfs_level"
        for f in "${recipe_files[@]}"; do
            printf '%s\n' "${f#"$repo"/}"
            sha256sum < "$f"
        done
    } | sha256sum | cut -c1-64
)

manifest="$out/manifest.json"

# Returns 0 when $out holds a complete build of this exact recipe.
outputs_intact() {
    [[ -f "$manifest" ]] || return 1
    python3 - "$out" "$recipe_hash" <<'PY'
import hashlib, json, os, sys
out, want = sys.argv[1], sys.argv[2]
try:
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
except (OSError, ValueError):
    sys.exit(1)
if m.get("recipe_hash") != want:
    sys.exit(1)
for name, info in m.get("files", {}).items():
    path = os.path.join(out, name)
    try:
        if os.path.getsize(path) != info["size"]:
            sys.exit(1)
    except OSError:
        sys.exit(1)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != info["sha256"]:
        sys.exit(1)
sys.exit(0 if {"vmlinuz", "initrd.img", "rootfs.squashfs"} <= set(m.get("files", {})) else 1)
PY
}

if [[ $force -eq 0 ]] && outputs_intact; then
    log "up to date: $out (recipe ${recipe_hash:0:12})"
    exit 0
fi

# ---------------------------------------------------------------------------
# Foreign architecture support (arm64 on an amd64 host): qemu-user + binfmt.
# ---------------------------------------------------------------------------
host_arch=$(dpkg --print-architecture)
if [[ "$arch" != "$host_arch" ]]; then
    if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc (needed to build a foreign-arch root)"
    fi
    if command -v update-binfmts >/dev/null; then
        update-binfmts --enable >/dev/null 2>&1 || true
    fi
    if command -v arch-test >/dev/null && ! arch-test "$arch" >/dev/null 2>&1; then
        die "cannot run $arch binaries: install qemu-user-static and binfmt-support"
    fi
fi

# ---------------------------------------------------------------------------
# Stage 1: the base root filesystem tarball (cached; only Debian packages).
# ---------------------------------------------------------------------------
mkdir -p "$cache_dir"
mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/packages.txt" | grep -v '^$')
[[ ${#packages[@]} -gt 0 ]] || die "packages.txt lists no packages"
include=$(IFS=,; echo "${packages[*]}")

dpkg_opts=(
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/bash-completion/*'
    --dpkgopt='path-exclude=/usr/share/zsh/*'
)
base_key=$(
    {
        printf '%s\n' "$arch" "$suite" "$mirror" "$security_mirror" "$include" "${dpkg_opts[@]}"
        sha256sum < "$here/fetch-kernel.sh"
    } | sha256sum | cut -c1-16
)
base_tar="$cache_dir/base-$suite-$arch-$base_key.tar"

if [[ $refresh -eq 1 || ! -s "$base_tar" ]]; then
    log "creating base root filesystem for $arch with mmdebstrap (this downloads packages)"
    rm -f "$base_tar.tmp"
    # The hook gets its inputs from the environment (mmdebstrap keeps it), so no
    # path is ever spliced into the hook's shell text.
    # shellcheck disable=SC2016 # $1 and the variables expand in the hook's shell
    BERTH_FETCH_KERNEL="$here/fetch-kernel.sh" BERTH_ARCH="$arch" mmdebstrap \
        --mode=root --variant=minbase --arch="$arch" --format=tar \
        --aptopt='APT::Install-Recommends "false"' \
        --aptopt='Acquire::Retries "3"' \
        "${dpkg_opts[@]}" \
        --include="$include" \
        --customize-hook='"$BERTH_FETCH_KERNEL" "$1" "$BERTH_ARCH"' \
        "$suite" "$base_tar.tmp" \
        "deb $mirror $suite main" \
        "deb $mirror $suite-updates main" \
        "deb $security_mirror $suite-security main"
    mv "$base_tar.tmp" "$base_tar"
    # Drop older base tarballs for this suite/arch.
    find "$cache_dir" -maxdepth 1 -name "base-$suite-$arch-*.tar" ! -name "${base_tar##*/}" -delete
else
    log "using cached base root filesystem $base_tar"
fi

# ---------------------------------------------------------------------------
# Stage 2: customise a copy of the root filesystem.
# ---------------------------------------------------------------------------
work=$(mktemp -d "$cache_dir/work-$arch.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
root="$work/root"
mkdir -p "$root"
log "unpacking base root filesystem"
tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$base_tar"

mapfile -t kvers < <(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
[[ ${#kvers[@]} -eq 1 ]] || die "expected exactly one kernel in the base root, found: ${kvers[*]:-none}"
kver=${kvers[0]}
moddir="$root/lib/modules/$kver"
log "kernel $kver"

mkdir -p "$work/out"
kconfig="$root/boot/config-$kver"
if [[ "$arch" == amd64 ]] && grep -q '^CONFIG_PVH=y' "$kconfig"; then
    # Ship the ELF vmlinux from inside the xz bzImage: QEMU boots it through its PVH
    # entry point, which skips the in-guest xz decompression (under TCG, QEMU start ->
    # kernel banner 1.0-2.1 s instead of 11-21 s on the loaded CI machine). 66 MB
    # instead of 8 MB. QEMU's x86 loader takes an ELF the same way for every
    # accelerator; measured under TCG only.
    python3 - "$root/boot/vmlinuz-$kver" "$work/out/vmlinuz" <<'PY'
import lzma
import sys

data = open(sys.argv[1], "rb").read()
start = data.find(b"\xfd7zXZ\x00")
if start < 0:
    sys.exit("build.sh: the amd64 kernel is not an xz-compressed bzImage")
elf = lzma.LZMADecompressor().decompress(data[start:])
if not elf.startswith(b"\x7fELF"):
    sys.exit("build.sh: no ELF vmlinux inside the bzImage")
with open(sys.argv[2], "wb") as out:
    out.write(elf)
PY
else
    cp "$root/boot/vmlinuz-$kver" "$work/out/vmlinuz"
fi
grep -q '^CONFIG_SQUASHFS_ZSTD=y' "$kconfig" \
    || die "kernel $kver lacks CONFIG_SQUASHFS_ZSTD=y (the root is zstd-compressed)"
rm -rf "${root:?}/boot/"*

# Prune kernel modules a virtual machine never needs, then re-index.
while IFS= read -r sub; do
    sub=${sub%%#*}
    sub=${sub//[[:space:]]/}
    [[ -n "$sub" ]] || continue
    rm -rf "${moddir:?}/kernel/$sub"
done < "$here/prune-modules.txt"
depmod -b "$root" "$kver"

# Berth's init and configuration.
install -d -m 0755 "$root/usr/lib/berth/init"
for f in "$initdir"/*; do
    install -m 0755 "$f" "$root/usr/lib/berth/init/"
done
install -m 0644 "$initdir/inittab" "$root/etc/inittab"
ln -sf /bin/busybox "$root/sbin/init"
for cmd in poweroff reboot halt; do
    ln -sf /bin/busybox "$root/usr/sbin/$cmd"
done
install -d -m 0755 "$root/etc/acpi/PWRF"
install -m 0755 "$initdir/power-button" "$root/etc/acpi/PWRF/00000080"
install -m 0644 "$initdir/containerd.toml" "$root/etc/containerd/config.toml"
install -d -m 0755 "$root/etc/ssh/sshd_config.d"
install -m 0644 "$initdir/sshd_config" "$root/etc/ssh/sshd_config.d/berth.conf"
# Host keys generated by openssh-server's postinst would be shared by every VM:
# the per-VM key comes from the host at boot.
rm -f "$root"/etc/ssh/ssh_host_*
# Root has no password; login is by SSH key or on the VM's own serial console.
sed -i 's/^root:[^:]*:/root:*:/' "$root/etc/shadow"
printf 'berth\n' > "$root/etc/hostname"
: > "$root/etc/machine-id"
install -d -m 0755 "$root/mnt/data" "$root/var/lib/docker" "$root/var/lib/berth" \
    "$root/media/root-ro" "$root/media/root-rw"
if [[ -f "$agent" ]]; then
    install -m 0644 "$agent" "$root/usr/lib/berth/agent.py"
    log "included guest agent $agent"
else
    log "no guest agent at $agent: image built without it"
fi
rm -rf "${root:?}"/var/cache/apt/* "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/log/*.log \
    "${root:?}"/tmp/* "${root:?}"/var/tmp/*
image_version="$(date -u +%Y%m%d)-${recipe_hash:0:12}"
printf '%s\n' "$image_version" > "$root/etc/berth-image-version"

# ---------------------------------------------------------------------------
# Stage 3: the initramfs (busybox from the target root + the root-mount modules).
# ---------------------------------------------------------------------------
log "building initramfs"
ird="$work/initramfs"
mkdir -p "$ird"/{bin,dev,proc,sys,lower,rw,newroot,etc,lib/modules}
install -m 0755 "$root/bin/busybox" "$ird/bin/busybox"
ln -s busybox "$ird/bin/sh"
mknod -m 0600 "$ird/dev/console" c 5 1
mknod -m 0666 "$ird/dev/null" c 1 3
install -m 0755 "$initdir/initramfs-init" "$ird/init"

# Resolve module dependencies from modules.dep; emit a load order (deps first).
declare -A mod_path=() seen=()
while IFS=: read -r path _; do
    name=${path##*/}
    name=${name%%.ko*}
    mod_path[${name//-/_}]=$path
done < "$moddir/modules.dep"
declare -A builtin=()
while IFS= read -r path; do
    name=${path##*/}
    name=${name%%.ko*}
    builtin[${name//-/_}]=1
done < "$moddir/modules.builtin"
load_order=()
resolve() {
    local name=${1//-/_} path deps dep
    [[ -z "${seen[$name]:-}" ]] || return 0
    seen[$name]=1
    if [[ -n "${builtin[$name]:-}" ]]; then return 0; fi
    path=${mod_path[$name]:-}
    [[ -n "$path" ]] || die "kernel module $name not found in $kver"
    deps=$(grep -m1 "^$path:" "$moddir/modules.dep" | cut -d: -f2)
    for dep in $deps; do
        dep=${dep##*/}
        resolve "${dep%%.ko*}"
    done
    load_order+=("$path")
}
for m in "${initrd_modules[@]}"; do resolve "$m"; done
: > "$ird/etc/modules"
for path in "${load_order[@]}"; do
    base=${path##*/}
    case "$base" in
        *.ko) cp "$moddir/$path" "$ird/lib/modules/$base" ;;
        *.ko.xz) xz -dc "$moddir/$path" > "$ird/lib/modules/${base%.xz}" ;;
        *.ko.zst) zstd -qdc "$moddir/$path" > "$ird/lib/modules/${base%.zst}" ;;
        *.ko.gz) gzip -dc "$moddir/$path" > "$ird/lib/modules/${base%.gz}" ;;
        *) die "unknown module format: $path" ;;
    esac
    base=${base%.xz}; base=${base%.zst}; base=${base%.gz}
    printf '%s\n' "$base" >> "$ird/etc/modules"
done
log "initramfs modules: $(tr '\n' ' ' < "$ird/etc/modules")"
(cd "$ird" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null --create --format=newc --quiet --owner=0:0 | gzip -9n) > "$work/out/initrd.img"

# ---------------------------------------------------------------------------
# Stage 4: the squashfs root.
# ---------------------------------------------------------------------------
log "creating rootfs.squashfs ($squashfs_comp)"
comp_opts=(-comp "$squashfs_comp")
if [[ "$squashfs_comp" == zstd ]]; then comp_opts+=(-Xcompression-level "$squashfs_level"); fi
mksquashfs "$root" "$work/out/rootfs.squashfs" -noappend -quiet -no-progress \
    -b 1M "${comp_opts[@]}" -xattrs >&2

# ---------------------------------------------------------------------------
# Stage 5: manifest, then move the outputs into place.
# ---------------------------------------------------------------------------
mkdir -p "$out"
python3 - "$work/out" "$image_version" "$arch" "$kver" "$recipe_hash" "$suite" <<'PY'
import hashlib, json, os, sys
outdir, version, arch, kver, recipe, suite = sys.argv[1:7]
files = {}
for name in ("vmlinuz", "initrd.img", "rootfs.squashfs"):
    path = os.path.join(outdir, name)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    files[name] = {"sha256": h.hexdigest(), "size": os.path.getsize(path)}
manifest = {
    "version": version,
    "arch": arch,
    "kernel_version": kver,
    "debian_suite": suite,
    "files": files,
    "data_disk_format": 1,
    "recipe_hash": recipe,
}
with open(os.path.join(outdir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write("\n")
PY
rm -f "$manifest"
for name in vmlinuz initrd.img rootfs.squashfs manifest.json; do
    mv -f "$work/out/$name" "$out/$name"
done
log "done: $out"
du -b "$out"/* >&2
