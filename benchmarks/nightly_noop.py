"""Benchmark: `imagefactory build --all --if-changed` over every shipped recipe when nothing changed
(target: <= 2 s in total, the whole CLI process).

Set-up (not timed): the shipped recipes copied, their upstreams pointed at a loopback mirror
(RKE2/Zarf stand-in releases, apt Release files, cloud-image SHA256SUMS), `lock update` of every
recipe, and for every recipe a published image in a local catalogue whose manifest carries the
recipe's current build key (what a previous nightly would have left). Timed: the CLI process
`imagefactory --json build --all --if-changed` (Python start-up, imports, loading and validating
every recipe, build keys, reading the catalogue index and the newest manifest of each recipe,
the JSON summary); every recipe must come out `skipped` with nothing built.

    .venv/bin/python benchmarks/nightly_noop.py [--rounds 7]

Writes benchmarks/results/nightly_noop.json. The numbers in README.md come from here.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from imagefactory.buildkey import build_key_of  # noqa: E402
from imagefactory.catalogue import signing  # noqa: E402
from imagefactory.catalogue.publish import publish  # noqa: E402
from imagefactory.catalogue.stores import LocalDirStore  # noqa: E402
from imagefactory.recipes.load import RecipeBook  # noqa: E402
from tests.conftest import RECIPES  # noqa: E402
from tests.integration.test_artifacts import offline_upstreams  # noqa: E402
from tests.publishing import fake_build  # noqa: E402
from tests.standins.mirror import ReleaseMirror, upstream_bases  # noqa: E402
from tests.standins.release import make_rke2_release, make_zarf_release  # noqa: E402

RKE2, ZARF = "v1.31.4+rke2r1", "v0.84.0"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nightly-noop-"))
    try:
        make_rke2_release(tmp / "mirror", RKE2)
        make_zarf_release(tmp / "mirror", ZARF)
        recipes = tmp / "recipes"
        shutil.copytree(RECIPES, recipes)
        with ReleaseMirror(tmp / "mirror", channels={"stable": RKE2}) as mirror:
            offline_upstreams(recipes, tmp / "mirror", mirror.url)
            private, public = signing.generate(tmp / "keys", "bench")
            config = tmp / "imagefactory.yaml"
            config.write_text(yaml.safe_dump({
                "upstream": upstream_bases(mirror.url),
                "stores": {"cat": {"type": "local", "path": str(tmp / "catalogue")}}, "default_store": "cat",
                "signing": {"public_key": str(public), "private_key": str(private)}}))
            base = [sys.executable, "-m", "imagefactory.cli", "--json", "--recipes", str(recipes),
                    "--config", str(config), "--workdir", str(tmp / "work")]
            subprocess.run([*base, "lock", "update"], check=True, capture_output=True)
            book = RecipeBook(recipes)
            count = len(book.names())
            store = LocalDirStore("cat", tmp / "catalogue")
            store.prepare()
            key = signing.load_private_key(str(private))
            assert isinstance(key, Ed25519PrivateKey)
            for i, name in enumerate(book.names()):
                d = fake_build(tmp / "builds", name=name, version=f"20261130.0000{i:02d}-0000", size=4096,
                               seed=i)
                m = json.loads((d / "manifest.json").read_text())
                m["build_key"] = build_key_of(book.load(name))
                (d / "manifest.json").write_text(json.dumps(m))
                publish(d, store, key, key.public_key())
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                r = subprocess.run([*base, "build", "--all", "--if-changed"], capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                doc = json.loads(r.stdout)
                assert r.returncode == 0 and doc["counts"] == {"built": 0, "skipped": len(book.names()),
                                                               "failed": 0}, r.stderr
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import imagefactory.cli"], check=True)
            bare = time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result: dict[str, Any] = {
        "recipes": count, "rounds": args.rounds, "seconds": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
        "python_import_cli_s": round(bare, 3), "target_s": 2.0,
        "host": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }
    out = REPO / "benchmarks/results/nightly_noop.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
