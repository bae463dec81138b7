#!/usr/bin/env bash
# Start (or stop) the engines the tests need: dockerd on /var/run/docker.sock and a Podman
# API service on /run/podman/podman.sock, then import the local busybox test image into
# both (no registry is reachable). Idempotent: a running service is left alone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=/run/berth-ci
mkdir -p "$state"
export CONTAINERS_CONF="$here/containers.conf"
TEST_IMAGE=${BERTH_TEST_IMAGE:-berth-test/busybox:latest}

wait_for() {  # wait_for SOCKET SECONDS
  for _ in $(seq 1 $(( $2 * 10 ))); do
    curl -sf --unix-socket "$1" http://x/_ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "service on $1 did not answer within $2 s" >&2
  return 1
}

make_rootfs_tar() {
  local dir; dir=$(mktemp -d)
  mkdir -p "$dir/rootfs/bin" "$dir/rootfs/tmp" "$dir/rootfs/etc" "$dir/rootfs/root" "$dir/rootfs/www"
  cp /bin/busybox "$dir/rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$dir/rootfs/bin/$a"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$dir/rootfs/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/bin/false' >> "$dir/rootfs/etc/passwd"
  echo 'root:x:0:' > "$dir/rootfs/etc/group"
  echo '<h1>berth test</h1>' > "$dir/rootfs/www/index.html"
  tar -C "$dir/rootfs" -cf "$dir/rootfs.tar" .
  echo "$dir/rootfs.tar"
}

start() {
  if ! curl -sf --unix-socket /var/run/docker.sock http://x/_ping >/dev/null 2>&1; then
    nohup dockerd --host unix:///var/run/docker.sock >"$state/dockerd.log" 2>&1 &
    echo $! > "$state/dockerd.pid"
    wait_for /var/run/docker.sock 60
  fi
  if ! curl -sf --unix-socket /run/podman/podman.sock http://x/_ping >/dev/null 2>&1; then
    mkdir -p /run/podman
    nohup podman system service --time=0 unix:///run/podman/podman.sock >"$state/podman.log" 2>&1 &
    echo $! > "$state/podman.pid"
    wait_for /run/podman/podman.sock 60
  fi
  local tar; tar=$(make_rootfs_tar)
  docker image inspect "$TEST_IMAGE" >/dev/null 2>&1 ||
    docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' "$tar" "$TEST_IMAGE" >/dev/null
  podman image exists "$TEST_IMAGE" ||
    podman import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' "$tar" "$TEST_IMAGE" >/dev/null
  rm -rf "$(dirname "$tar")"
  echo "engines ready: docker=/var/run/docker.sock podman=/run/podman/podman.sock image=$TEST_IMAGE"
}

stop() {
  for s in podman dockerd; do
    if [ -f "$state/$s.pid" ]; then
      kill "$(cat "$state/$s.pid")" 2>/dev/null || true
      rm -f "$state/$s.pid"
    fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
