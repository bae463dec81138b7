#!/usr/bin/env bash
# Run Berth's checks and tests: start the engines the tests need (dockerd and a Podman API
# service, idempotent), build the amd64 guest image if its recipe changed (cached: seconds
# when nothing changed, minutes from scratch), then ruff, mypy and pytest. Extra
# arguments go to pytest. BERTH_SKIP_VM=1 skips the guest build and the VM tests;
# BERTH_LONG_TESTS=1 adds the long real-VM tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM=offscreen
export CONTAINERS_CONF="$PWD/.ci/containers.conf"
bash .ci/services.sh start
ruff check .
mypy
# Real-VM tests with several boots each (marker "long": memory given back, reclaim,
# resize; and two more kill -9 rounds of the fsync test, which runs one by default) take ~11 min more: BERTH_LONG_TESTS=1 runs them too.
markers="not arm64"
if [ "${BERTH_LONG_TESTS:-0}" != 1 ]; then
  markers="$markers and not long"
fi
if [ "${BERTH_SKIP_VM:-0}" = 1 ]; then
  markers="$markers and not vm"
else
  bash packaging/guest/build.sh --arch amd64
fi
# --durations: the 25 slowest steps close the report, so a run that grows shows where.
python3 -m pytest -m "$markers" --durations=25 "$@"
