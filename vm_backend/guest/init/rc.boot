#!/bin/sh
# Berth guest boot sequence: busybox init runs this as ::sysinit, so the
# console getty (::respawn) only starts once it has finished (ready or failed).
#
# Stages reported on the console, in order:
#   init (printed by the initramfs), network, datadisk, sshd, engine, agent, ready
set -u
# shellcheck source=vm_backend/guest/init/lib.sh
. /usr/lib/berth/init/lib.sh

# --------------------------------------------------------------------------
# Early system setup (still part of the "init" stage).
# --------------------------------------------------------------------------
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mkdir -p /run/lock /run/sshd "$BERTH_RUN/config" "$BERTH_LOG"

data_dev=/dev/vdb
engine_timeout=600
read -r cmdline < /proc/cmdline
# shellcheck disable=SC2086 # split the command line into words
for arg in $cmdline; do
    case "$arg" in
        berth.data=*) data_dev=${arg#berth.data=} ;;
        berth.engine_timeout=*) engine_timeout=${arg#berth.engine_timeout=} ;;
    esac
done
case "$engine_timeout" in
    ''|*[!0-9]*) engine_timeout=600 ;;
esac

chmod 0700 "$BERTH_RUN" "$BERTH_RUN/config"
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

# Drivers: no udev, so load what the virtual hardware needs. Virtio devices
# (net, rng, balloon, console, 9p, vsock ...) and, on arm64, device-tree
# platform devices (PL061 GPIO + gpio-keys power button) by modalias; evdev and
# the ACPI button for the power-button daemon; ext4 for the data disk; and what
# the engine's networking needs (the bridge with br_netfilter, nf_tables and the
# matches of the rules below), in this one modprobe run instead of one
# kernel-spawned modprobe each later (every process costs ~0.3 s under TCG).
{
    cat /sys/bus/virtio/devices/*/modalias
    grep -h '^of:' /sys/bus/platform/devices/*/modalias
} 2>/dev/null | sort -u > "$BERTH_RUN/modaliases"
xargs modprobe -qab evdev button ext4 br_netfilter nf_tables nft_chain_nat nft_compat \
    xt_conntrack xt_MASQUERADE < "$BERTH_RUN/modaliases" 2>/dev/null
# Bridged (same-network) container traffic never goes through iptables: dockerd runs
# with --iptables=false, so no rule of its own would accept it there (see "engine
# networking" below; br_netfilter is loaded now so this holds even if something
# loads it later).
for f in iptables ip6tables arptables; do
    [ -w "/proc/sys/net/bridge/bridge-nf-call-$f" ] && echo 0 > "/proc/sys/net/bridge/bridge-nf-call-$f"
done
echo 1 > /proc/sys/net/ipv4/ip_forward

# Per-VM configuration from QEMU fw_cfg: keep a root-only copy for the agent.
modprobe -q qemu_fw_cfg 2>/dev/null
if [ -d "$BERTH_FWCFG" ]; then
    for keydir in "$BERTH_FWCFG"/*; do
        [ -d "$keydir" ] || continue
        berth_fwcfg "${keydir##*/}" "$BERTH_RUN/config/${keydir##*/}" || true
    done
else
    berth_warn init "no-fw_cfg-config: using defaults (hostname berth, generated host key, no authorized key)"
fi

hostname=berth
if [ -s "$BERTH_RUN/config/hostname" ]; then
    want=$(tr -d ' \t\r\n' < "$BERTH_RUN/config/hostname")
    case "$want" in
        ''|*[!A-Za-z0-9.-]*|-*) berth_warn init "invalid-hostname: using berth" ;;
        *) hostname=$(printf '%s' "$want" | cut -c1-63) ;;
    esac
else
    berth_warn init "no-hostname-in-fw_cfg: using berth"
fi
printf '%s\n' "$hostname" > /etc/hostname
hostname "$hostname"

# ACPI power button (QMP system_powerdown) -> /etc/acpi/PWRF/00000080 -> poweroff.
busybox acpid -c /etc/acpi -l "$BERTH_LOG/acpid.log" -p /run/acpid.pid

# --------------------------------------------------------------------------
# network: QEMU user-mode networking (slirp) defaults.
# --------------------------------------------------------------------------
ip link set lo up
find_iface() {
    for n in /sys/class/net/*; do
        n=${n##*/}
        [ "$n" = lo ] && continue
        [ -e "/sys/class/net/$n/device" ] || continue
        printf '%s' "$n"
        return 0
    done
    return 1
}
berth_wait 10 find_iface || berth_fail network no-network-interface
iface=$(find_iface)
ip link set "$iface" up || berth_fail network "cannot-bring-up-$iface"
ip addr add 10.0.2.15/24 dev "$iface" || berth_fail network cannot-set-address
ip route add default via 10.0.2.2 dev "$iface" || berth_fail network cannot-set-route
printf 'nameserver 10.0.2.3\n' > /etc/resolv.conf
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    "$hostname" > /etc/hosts

# Engine networking: dockerd runs with --iptables=false (its ~50 iptables runs at
# start, plus ~20 per user network at every start, were most of the engine stage
# under TCG); these rules, loaded by one iptables-restore in the background, give
# every Docker network what dockerd's own rules gave it (docs/guest-image.md,
# "Engine networking"):
# * containers reach the outside, the host (10.0.2.2) and DNS (10.0.2.3) through
#   the VM's address (masquerade whatever leaves by the NIC from another address);
# * forwarding between two Docker networks, or into one from outside, is dropped
#   (Docker's isolation); replies to the containers' own connections pass;
# * published ports are served by dockerd's userland proxy on the VM's own
#   addresses (no DNAT), which is where Berth's port forwards connect anyway.
cat > "$BERTH_RUN/netfilter.rules" <<RULES
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o $iface ! -s 10.0.2.15/32 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o $iface -j ACCEPT
COMMIT
RULES
iptables-restore -w < "$BERTH_RUN/netfilter.rules" > "$BERTH_LOG/netfilter.log" 2>&1 &
netfilter_pid=$!
berth_stage network

# --------------------------------------------------------------------------
# datadisk: persistent ext4 on the second virtio disk, grown when enlarged.
# --------------------------------------------------------------------------
berth_wait 10 test -b "$data_dev" || berth_fail datadisk "no-data-disk:$data_dev"
fstype=$(blkid -p -o value -s TYPE "$data_dev" 2>/dev/null)
pttype=$(blkid -p -o value -s PTTYPE "$data_dev" 2>/dev/null)
if [ -z "$fstype" ] && [ -z "$pttype" ]; then
    berth_info datadisk "formatting-empty-disk $data_dev"
    mkfs.ext4 -q -F -L berth-data -m 0 -E lazy_itable_init=1,lazy_journal_init=1 "$data_dev" \
        > "$BERTH_LOG/mkfs.log" 2>&1 || berth_fail datadisk mkfs-failed "$BERTH_LOG/mkfs.log"
elif [ "$fstype" = ext4 ]; then
    e2fsck -p "$data_dev" > "$BERTH_LOG/fsck.log" 2>&1
    rc=$?
    # 0: clean, 1: errors corrected; anything else needs a human.
    [ "$rc" -le 1 ] || berth_fail datadisk "fsck-failed-rc$rc" "$BERTH_LOG/fsck.log"
else
    berth_fail datadisk "refusing-foreign-disk:type=${fstype:-none},pttype=${pttype:-none}"
fi
mount -t ext4 -o noatime "$data_dev" /mnt/data || berth_fail datadisk mount-failed
# Online grow; a no-op when the filesystem already fills the disk.
resize2fs "$data_dev" > "$BERTH_LOG/resize2fs.log" 2>&1 \
    || berth_warn datadisk "resize2fs-failed (see $BERTH_LOG/resize2fs.log)"
format_file=/mnt/data/.berth-data-format
if [ -f "$format_file" ]; then
    fmt=$(cat "$format_file")
    case "$fmt" in
        1) ;;
        *) umount /mnt/data; berth_fail datadisk "unsupported-data-disk-format:$fmt" ;;
    esac
else
    printf '1\n' > "$format_file"
fi
mkdir -p /mnt/data/docker /mnt/data/berth
chmod 0710 /mnt/data/docker
chmod 0700 /mnt/data/berth
mount --bind /mnt/data/docker /var/lib/docker || berth_fail datadisk bind-docker-failed
mount --bind /mnt/data/berth /var/lib/berth || berth_fail datadisk bind-berth-failed
berth_stage datadisk

# containerd starts now, in the background, so it initialises while the shares
# and sshd are set up; dockerd uses it instead of spawning (and, when slow, killing
# and restarting) a containerd of its own.
# shellcheck disable=SC3045 # dash (/bin/sh) supports ulimit -n
ulimit -n 1048576 2>/dev/null || true
setsid /usr/bin/containerd --config /etc/containerd/config.toml \
    < /dev/null > "$BERTH_LOG/containerd.log" 2>&1 &
containerd_pid=$!
echo "$containerd_pid" > "$BERTH_RUN/containerd.pid"

# Host folders shared over 9p, mounted before the engine so containers find them
# (a failed share is reported, never fatal: see vm_backend/guest/init/shares).
/usr/lib/berth/init/shares

# The agent (when the image ships it) starts now too: Python's start-up under TCG takes
# seconds, which overlap sshd and dockerd instead of following them. It retries the
# engine's socket until dockerd answers. agent-supervise restarts it whenever it exits.
if [ -f /usr/lib/berth/agent.py ]; then
    setsid /usr/lib/berth/init/agent-supervise < /dev/null > /dev/null 2>&1 &
    echo $! > "$BERTH_RUN/agent-supervise.pid"
fi

# --------------------------------------------------------------------------
# sshd: key-only root login; host key generated by the host, given via fw_cfg.
# --------------------------------------------------------------------------
hostkey=/etc/ssh/ssh_host_ed25519_key
rm -f "$hostkey" "$hostkey.pub"
if [ -s "$BERTH_RUN/config/ssh_host_ed25519_key" ]; then
    (umask 077 && tr -d '\r' < "$BERTH_RUN/config/ssh_host_ed25519_key" > "$hostkey")
    if ! ssh-keygen -y -f "$hostkey" > "$hostkey.pub" 2>/dev/null; then
        berth_fail sshd invalid-ssh_host_ed25519_key
    fi
else
    berth_warn sshd "no-host-key-in-fw_cfg: generating an unpinned one"
    ssh-keygen -q -t ed25519 -N '' -f "$hostkey" || berth_fail sshd cannot-generate-host-key
fi
install -d -m 0700 /root/.ssh
if [ -s "$BERTH_RUN/config/authorized_keys" ]; then
    (umask 077 && tr -d '\r' < "$BERTH_RUN/config/authorized_keys" > /root/.ssh/authorized_keys)
else
    berth_warn sshd "no-authorized_keys-in-fw_cfg: ssh login impossible"
    : > /root/.ssh/authorized_keys
    chmod 0600 /root/.ssh/authorized_keys
fi
# sshd checks its configuration and binds port 22 before it daemonises (exiting
# non-zero on any error), so it accepts connections from here on.
/usr/sbin/sshd -E "$BERTH_LOG/sshd.log" || berth_fail sshd sshd-failed "$BERTH_LOG/sshd.log"
berth_stage sshd

# --------------------------------------------------------------------------
# engine: dockerd on the unix socket only (never TCP).
# --host-gateway-ip: `--add-host host.docker.internal:host-gateway` (compose:
# extra_hosts) resolves to QEMU's user-net gateway 10.0.2.2, which is the host's
# loopback (docs/diagnose.md), not the VM's own docker0.
# --------------------------------------------------------------------------
n=0
until [ -S /run/containerd/containerd.sock ]; do
    kill -0 "$containerd_pid" 2>/dev/null \
        || berth_fail engine containerd-exited "$BERTH_LOG/containerd.log"
    n=$((n + 1))
    [ "$n" -lt $((engine_timeout * 5)) ] \
        || berth_fail engine "containerd-timeout-${engine_timeout}s" "$BERTH_LOG/containerd.log"
    sleep 0.2
done
wait "$netfilter_pid" || berth_fail engine netfilter-rules-failed "$BERTH_LOG/netfilter.log"
setsid /usr/sbin/dockerd -H unix:///var/run/docker.sock --data-root /var/lib/docker \
    --containerd /run/containerd/containerd.sock \
    --exec-root /run/docker --pidfile /run/docker.pid \
    --log-driver json-file --log-opt max-size=10m --log-opt max-file=3 \
    --host-gateway-ip 10.0.2.2 --iptables=false \
    < /dev/null > "$BERTH_LOG/dockerd.log" 2>&1 &
echo $! > "$BERTH_RUN/dockerd.pid"
# One process waits for the API, with no process per try (see engine-ping).
/usr/lib/berth/init/engine-ping --wait "$engine_timeout" --pid "$BERTH_RUN/dockerd.pid"
case $? in
    0) ;;
    2) berth_fail engine dockerd-exited "$BERTH_LOG/dockerd.log" ;;
    3) berth_fail engine "timeout-${engine_timeout}s" "$BERTH_LOG/dockerd.log" ;;
    *) berth_fail engine engine-ping-failed "$BERTH_LOG/dockerd.log" ;;
esac
berth_stage engine

# --------------------------------------------------------------------------
# agent: Berth's guest agent, when the image ships one.
# --------------------------------------------------------------------------
# Started before sshd (above); the stage is reported once its socket
# (/run/berth/agent.sock, 0600 in this 0700 dir) exists. A slow or failing agent
# is reported but does not fail the boot: berthd keeps trying to reach it, and
# the engine works without it.
if [ -f /usr/lib/berth/agent.py ]; then
    berth_wait 120 test -S "$BERTH_RUN/agent.sock" \
        || berth_warn agent "agent-socket-missing: see $BERTH_LOG/agent.log"
else
    berth_info agent "not-installed"
fi
berth_stage agent

berth_stage ready
exit 0
