#!/usr/bin/env python3
"""Split the matrix of 'imagefactory plan --format github' (stdin) into one matrix per stage.

GitHub Actions cannot order the jobs of one matrix, so ci/nightly/github-nightly.yml has one
matrix job per dependency stage (`build-stage-0`, `-1`, `-2`). This writes `stageN` (a matrix
JSON), `stageN_count` and `count` to $GITHUB_OUTPUT for N < STAGES, and fails when the plan is
deeper than the workflow (add a `build-stage-N` job, then raise STAGES).
"""

import json
import os
import sys

STAGES = 3

matrix = json.load(sys.stdin)
entries = matrix["include"]
deepest = max((e["stage"] for e in entries), default=0)
if deepest >= STAGES:
    sys.exit(f"the plan has {deepest + 1} stages but the workflow runs {STAGES}: add a "
             f"build-stage-{STAGES} job to ci/nightly/github-nightly.yml and raise STAGES in {sys.argv[0]}")
with open(os.environ["GITHUB_OUTPUT"], "a") as out:
    for n in range(STAGES):
        stage = [e for e in entries if e["stage"] == n]
        out.write(f"stage{n}={json.dumps({'include': stage}, separators=(',', ':'))}\n")
        out.write(f"stage{n}_count={len(stage)}\n")
    out.write(f"count={len(entries)}\n")
