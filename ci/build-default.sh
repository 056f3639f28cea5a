#!/usr/bin/env bash
# Set up this host, then build the default image (debian-12-base): mmdebstrap, seal, qcow2, boot two
# clones under libvirt, run the hygiene and recipe suites, store it in the local image store.
# Extra arguments go to `imagefactory` before the command, e.g. --workdir DIR or --json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/bootstrap.sh
exec .venv/bin/imagefactory "$@" build debian-12-base
