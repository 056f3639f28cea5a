#!/usr/bin/env bash
# Set up this host, then run the whole test suite: unit tests, ruff, mypy, integration tests, and
# the VM tier (builds debian-12-base once and boots it under libvirt). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/bootstrap.sh
exec .venv/bin/python -m pytest -v --durations=15 "$@"
