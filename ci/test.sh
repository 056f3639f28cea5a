#!/usr/bin/env bash
# Set up this host, then run the whole test suite: unit tests, ruff, mypy, integration tests, and
# the VM tier (builds the Debian and Ubuntu images and boots them under libvirt). Arguments go to
# pytest. The slowest tests and the total time are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash ci/bootstrap.sh
rc=0
.venv/bin/python -m pytest -v --durations=25 "$@" || rc=$?
echo "ci/test.sh: total $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s (pytest exit $rc)"
exit $rc
