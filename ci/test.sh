#!/usr/bin/env bash
# Set up this host, then run the whole test suite: unit tests, ruff, mypy, integration tests, and
# the VM tier (builds the Ubuntu images and boots them under libvirt). Arguments go to pytest (one
# run, in the foreground). Without arguments the VM tier and everything else run side by side:
# the VM tier spends most of its time waiting on guests, mirrors and Packer, and the rest needs
# no VM; the VM tier itself is two chains of builds side by side (below). The other runs'
# output follows the first's. The slowest tests and the total time are printed at the end.
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
t() { timeout -s INT -k 60 "$limit" .venv/bin/python -m pytest -p no:cacheprovider -v --durations=15 "$@"; }
# The VM tier is two build chains in two pytest sessions side by side (each session builds a
# recipe once for the tests that read it): a chain's host-side steps (mmdebstrap, OpenSCAP,
# compression, one-clone boots) leave a core idle that the other chain's guests use. Balanced by
# measured time: rke2-node + ubuntu-22.04 | debian-12 (+ Packer on its base) + ubuntu-24.04.
# (pytest-xdist's loadgroup would do this in one session, but it cannot group under pytest 9.)
rest_rc=0 a_rc=0 b_rc=0
t -m "not vm" > "$logs/rest.log" 2>&1 &
rest=$!
t -m vm tests/vm/test_debian_base.py tests/vm/test_packer.py tests/vm/test_ubuntu_base.py -k "not 22.04" \
  > "$logs/vm-b.log" 2>&1 &
vm_b=$!
t -m vm tests/vm/test_rke2_node.py tests/vm/test_ubuntu_base.py -k "not 24.04" || a_rc=$?
echo "ci/test.sh: VM chain rke2-node + ubuntu-22.04 done after $(elapsed) (pytest exit $a_rc)"
wait "$vm_b" || b_rc=$?
echo "=== VM chain debian-12 + Packer + ubuntu-24.04 (run beside it) ==="
cat "$logs/vm-b.log"
echo "ci/test.sh: VM chain debian-12 + Packer + ubuntu-24.04 done (pytest exit $b_rc)"
wait "$rest" || rest_rc=$?
echo "=== everything but the VM tier (run beside it) ==="
cat "$logs/rest.log"
echo "ci/test.sh: total $(elapsed) (VM chains exit $a_rc and $b_rc, the rest exit $rest_rc)"
[ "$a_rc" -eq 0 ] && [ "$b_rc" -eq 0 ] && [ "$rest_rc" -eq 0 ]
