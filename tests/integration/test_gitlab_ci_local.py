"""The nightly GitLab pipeline (`ci/nightly/gitlab-ci.yml`) run by a real CI engine: gitlab-ci-local
(from npm, `ci/bootstrap.sh` installs it under `.ci-tools/`; shell executor) runs the `plan` job as
a schedule would, then the child pipeline file that job wrote - gitlab-ci-local has no `trigger:`
child pipelines, so the file is run with it directly - against a loopback mirror (upstream
stand-ins, `offline_upstreams`) and a local catalogue.

The workspace is a git repository holding what the jobs use: `ci/`, `pyproject.toml`, a copy of
the recipes pointed at the mirror, and this checkout's `.venv` and `.ci-tools` (so the jobs'
`ci/bootstrap.sh` finds everything installed and returns at once)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagefactory.buildkey import build_key_of
from imagefactory.catalogue import signing, trust
from imagefactory.catalogue.publish import publish
from imagefactory.catalogue.stores import LocalDirStore
from imagefactory.recipes.load import RecipeBook
from tests.conftest import RECIPES, require_root
from tests.integration.test_artifacts import offline_upstreams
from tests.publishing import fake_build
from tests.standins.mirror import ReleaseMirror, upstream_bases

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GITLAB_CI_LOCAL = REPO / ".ci-tools/node_modules/.bin/gitlab-ci-local"
RECIPE = "debian-12-base"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    require_root()  # the jobs run ci/bootstrap.sh, as on a runner
    if not GITLAB_CI_LOCAL.exists():
        raise AssertionError(f"{GITLAB_CI_LOCAL} is missing: run ci/bootstrap.sh (it installs "
                             "gitlab-ci-local)")
    ws = tmp_path / "repo"
    ws.mkdir()
    shutil.copytree(REPO / "ci", ws / "ci")
    shutil.copy(REPO / "pyproject.toml", ws / "pyproject.toml")
    (ws / ".venv").symlink_to(REPO / ".venv")
    (ws / ".ci-tools").symlink_to(REPO / ".ci-tools")
    shutil.copytree(RECIPES, ws / "recipes")
    (ws / "recipes/imagefactory.lock").unlink(missing_ok=True)
    with ReleaseMirror(tmp_path / "mirror") as mirror:
        offline_upstreams(ws / "recipes", tmp_path / "mirror", mirror.url)
        private, public = signing.generate(tmp_path / "keys", "nightly")
        config = tmp_path / "imagefactory.yaml"
        config.write_text(yaml.safe_dump({
            "upstream": upstream_bases(mirror.url),
            "stores": {"cat": {"type": "local", "path": str(tmp_path / "catalogue")}}, "default_store": "cat",
            # the key file the plan job's store-credentials.sh installs from NIGHTLY_SIGNING_KEY
            "signing": {"public_key": str(public), "private_key": str(tmp_path / "run/signing.key")}}))
        git = ["git", "-C", str(ws), "-c", "user.name=ci", "-c", "user.email=ci@example.invalid"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        for k, v in (("user.name", "ci"), ("user.email", "ci@example.invalid")):
            subprocess.run([*git, "config", k, v], check=True)
        # gitlab-ci-local derives CI_PROJECT_* from the remote; nothing is fetched from it
        subprocess.run([*git, "remote", "add", "origin", "https://gitlab.example.invalid/edge/imagefactory.git"],
                       check=True)
        (ws / ".gitignore").write_text(".venv\n.ci-tools\n.gitlab-ci-local/\n")
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "site"], check=True)
        key = signing.load_private_key(str(private))
        assert isinstance(key, Ed25519PrivateKey)
        yield {"ws": ws, "config": config, "tmp": tmp_path, "key": key, "mirror": mirror, "private": private}


def gcl(site: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEFACTORY_", "CI_", "GITLAB_"))}
    env["HOME"] = str(site["tmp"] / "home")  # gitlab-ci-local's own state and variables files
    return subprocess.run(
        [str(GITLAB_CI_LOCAL), "--variable", f"IMAGEFACTORY_CONFIG={site['config']}",
         "--variable", f"IMAGEFACTORY_WORKDIR={site['tmp'] / 'work'}", *args],
        capture_output=True, text=True, env=env, cwd=site["ws"], timeout=600)


def publish_with_key(site: dict[str, Any], build_key: dict[str, Any] | None, version: str) -> None:
    """A published RECIPE image whose manifest carries `build_key` (what an earlier nightly left;
    None: an image published before build keys)."""
    d = fake_build(site["tmp"] / "builds", name=RECIPE, version=version, size=4096)
    if build_key is not None:
        m = json.loads((d / "manifest.json").read_text())
        m["build_key"] = build_key
        (d / "manifest.json").write_text(json.dumps(m))
    store = LocalDirStore("cat", site["tmp"] / "catalogue")
    store.prepare()
    publish(d, store, site["key"], site["key"].public_key())


def test_plan_job_then_the_child_pipeline_it_wrote(site: dict[str, Any]) -> None:
    ws = site["ws"]
    # What an earlier nightly left: RECIPE published without a build key, so the plan rebuilds it.
    publish_with_key(site, None, "20261130.000000-0000")
    store = LocalDirStore("cat", site["tmp"] / "catalogue")
    before = trust.status(store)["timestamp"]["version"]
    r = gcl(site, "--file", "ci/nightly/gitlab-ci.yml", "--variable", "CI_PIPELINE_SOURCE=schedule",
            "--ignore-predefined-vars", "CI_PIPELINE_SOURCE", "--variable", f"NIGHTLY_RECIPES={RECIPE}",
            "--variable", f"NIGHTLY_SIGNING_KEY={site['private']}",
            "--variable", f"IMAGEFACTORY_SIGNING_KEY_FILE={site['tmp'] / 'run/signing.key'}", "plan")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "PASS  plan" in r.stdout
    # the plan job signed the catalogue's nightly TUF timestamp (nothing else changed)
    assert trust.status(store)["timestamp"]["version"] == before + 1
    doc = yaml.safe_load((ws / "child.yml").read_text())
    assert list(doc) == ["include", "stages", f"build:{RECIPE}"], doc
    job = doc[f"build:{RECIPE}"]
    assert job["script"] == [f"bash ci/nightly-build.sh {RECIPE}"]
    assert {"pipeline": "$PARENT_PIPELINE_ID", "job": "plan"} in job["needs"]
    # the plan job's lock update wrote the lock the child's jobs build with
    lock = json.loads((ws / "recipes/imagefactory.lock").read_text())
    assert RECIPE in lock["recipes"]

    # Meanwhile the image was built from exactly these inputs (another runner): the child's build
    # job runs the real ci/nightly-build.sh, whose `build --if-changed` finds it current.
    publish_with_key(site, build_key_of(RecipeBook(ws / "recipes").load(RECIPE)), "20261206.000000-1111")
    r = gcl(site, "--file", "child.yml", f"build:{RECIPE}")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert f"PASS  build:{RECIPE}" in r.stdout
    summary = json.loads((ws / f"nightly-out/{RECIPE}.json").read_text())
    assert summary["counts"] == {"built": 0, "skipped": 1, "failed": 0}, summary


def test_github_plan_step_refreshes_the_timestamp(site: dict[str, Any]) -> None:
    """GitHub Actions cannot run here: the workflow's own `configuration` and `updates, lock,
    plan` scripts run under bash with what the runner would give them (its /run/imagefactory is
    a temporary directory), and the plan step signs the catalogue's nightly TUF timestamp."""
    ws, tmp = site["ws"], site["tmp"]
    publish_with_key(site, None, "20261130.000000-0000")
    store = LocalDirStore("cat", tmp / "catalogue")
    before = trust.status(store)["timestamp"]["version"]
    steps = {s.get("name"): s for s in
             yaml.safe_load((REPO / "ci/nightly/github-nightly.yml").read_text())["jobs"]["plan"]["steps"]}
    run_dir = tmp / "run"
    run_dir.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEFACTORY_", "GITHUB_"))}
    env |= {"IMAGEFACTORY_CONFIG": str(run_dir / "imagefactory.yaml"),
            "GITHUB_STEP_SUMMARY": str(tmp / "summary"), "IMAGEFACTORY_WORKDIR": str(tmp / "work"),
            "CONFIG_YAML": site["config"].read_text(),
            "SIGNING_KEY": site["private"].read_text(), "RECIPES": RECIPE}
    for name in ("configuration", "updates, lock, plan"):
        script = steps[name]["run"].replace("/run/imagefactory/", f"{run_dir}/")
        # as GitHub runs a `run:` block: bash --noprofile --norc -eo pipefail
        r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=ws,
                           env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (name, r.stdout[-3000:], r.stderr[-3000:])
    assert (run_dir / "signing.key").stat().st_mode & 0o077 == 0
    assert trust.status(store)["timestamp"]["version"] == before + 1
    assert json.loads((ws / "matrix.json").read_text())["include"][0]["recipe"] == RECIPE
