#!/usr/bin/env bash
# Run Berth's checks and tests: starts the engines the tests need (dockerd and a Podman
# API service, idempotent), then ruff, mypy and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM=offscreen
export CONTAINERS_CONF="$PWD/.ci/containers.conf"
bash .ci/services.sh start
ruff check .
mypy
python3 -m pytest -m "not arm64" "$@"
