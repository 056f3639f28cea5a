#!/usr/bin/env bash
# One nightly build job (GitLab child pipeline job `build:RECIPE`, GitHub matrix entry): set up
# this host, write the catalogue credentials from the CI secrets, then build RECIPE only if its
# build key differs from the newest published one ('build --if-changed'). The job's lock is the
# one the plan job updated (passed as an artifact), so the build uses exactly the planned inputs.
# The run summary goes to stdout, nightly-out/RECIPE.json and nightly-out/RECIPE/{summary.json,
# summary.md,junit.xml} (job artifacts; GitLab reads the JUnit as a test report).
#
#   bash ci/nightly-build.sh RECIPE
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:?usage: ci/nightly-build.sh RECIPE}

bash ci/bootstrap.sh
# shellcheck source=ci/nightly/store-credentials.sh
source ci/nightly/store-credentials.sh   # sourced: it unsets the secret variables afterwards

mkdir -p nightly-out
# NIGHTLY_PROMOTE=1: images whose boot tests and STIG gate passed go to 'stable' as well.
promote=()
if [ "${NIGHTLY_PROMOTE:-}" = 1 ]; then promote=(--promote-on-green); fi
.venv/bin/imagefactory --json build "$recipe" --if-changed "${promote[@]}" --summary "nightly-out/$recipe" \
    | tee "nightly-out/$recipe.json"
