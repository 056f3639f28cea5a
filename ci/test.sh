#!/usr/bin/env bash
# Set up this host, then run the whole test suite: unit tests, ruff, mypy, integration tests, and
# the VM tier (builds the Ubuntu images and boots them under libvirt). Arguments go to pytest (one
# run, in the foreground). Without arguments the VM tier and everything else run side by side:
# the VM tier spends most of its time waiting on guests, mirrors and Packer, and the rest needs
# no VM; the second run's output follows the first's. The slowest tests and the total time are
# printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash ci/bootstrap.sh
elapsed() { echo "$(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"; }

if [ $# -gt 0 ]; then
  rc=0
  .venv/bin/python -m pytest -v --durations=25 "$@" || rc=$?
  echo "ci/test.sh: total $(elapsed) (pytest exit $rc)"
  exit $rc
fi

# CI stops a run after 90 min and prints nothing of it: stop pytest (SIGINT, as Ctrl-C) a little
# before that, so its summary and the slowest tests still reach the log.
limit=${IMAGEFACTORY_CI_LIMIT:-84m}
logs=$(mktemp -d /tmp/imagefactory-ci-XXXXXX)
trap 'rm -rf "$logs"' EXIT
rest_rc=0
timeout -s INT -k 60 "$limit" .venv/bin/python -m pytest -p no:cacheprovider -v --durations=15 -m "not vm" > "$logs/rest.log" 2>&1 &
rest=$!
vm_rc=0
timeout -s INT -k 60 "$limit" .venv/bin/python -m pytest -v --durations=15 -m vm || vm_rc=$?
echo "ci/test.sh: VM tier done after $(elapsed) (pytest exit $vm_rc)"
wait "$rest" || rest_rc=$?
echo "=== everything but the VM tier (run beside it) ==="
cat "$logs/rest.log"
echo "ci/test.sh: total $(elapsed) (VM tier exit $vm_rc, the rest exit $rest_rc)"
[ "$vm_rc" -eq 0 ] && [ "$rest_rc" -eq 0 ]
