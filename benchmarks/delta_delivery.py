"""Benchmark: what a site needs for a nightly rebuild, by chunks (imagefactory.delivery) against
rsync and zsync of the same files. Run as root on a prepared host:

    .venv/bin/python benchmarks/delta_delivery.py [--recipe debian-12-base] [--package tree]

Builds RECIPE (old), the same recipe with one more package (new: what a nightly with one package
added ships), and new again with identical inputs (rebuild) - all --skip-tests, one workdir; then
new twice more with `--base old` (its root written in place over old's file system: "in_place").
Then, for old -> new: the compressed bytes of new's chunks that old lacks (plus its chunk table
and signed index), rsync's literal data (qcow2 files and raw disks, --no-whole-file), and zsync's
downloaded bytes (qcow2, its .zsync control file counted); for new -> rebuild: chunk reuse and
whether the images are byte-identical; and the chunker's speed (cut + sha256, MB of disk per
second on one core) and peak memory, in a process of its own. Writes
benchmarks/results/delta_delivery-<recipe>.json; README's table comes from it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
import zstandard

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagefactory.build import build  # noqa: E402
from imagefactory.delivery import chunks  # noqa: E402
from imagefactory.recipes import RecipeBook  # noqa: E402


def chunk_only(raw: Path) -> dict[str, Any]:
    """Cut + sha256 of a disk, timed on one core; its peak RSS (run in a child process)."""
    start, cpu = time.monotonic(), time.process_time()
    table = [(hashlib.sha256(c).hexdigest(), len(c)) for c in chunks.cut(raw)]
    took, cpu = time.monotonic() - start, time.process_time() - cpu
    size = sum(n for _, n in table)
    return {"disk_bytes": size, "chunks": len(table), "seconds": round(took, 2), "cpu_seconds": round(cpu, 2),
            "mb_per_s": round(size / 1e6 / cpu, 1),
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "table": table}


def chunk_set(raw: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """(stats, sha256 -> compressed size) of a disk, the chunker run in a child process."""
    out = subprocess.run([sys.executable, __file__, "--chunk-only", str(raw)], check=True,
                         capture_output=True, text=True).stdout
    stats = json.loads(out)
    cctx = zstandard.ZstdCompressor(level=chunks.ZSTD_LEVEL)
    sizes: dict[str, int] = {}
    for data in chunks.cut(raw):  # compressed sizes (the child only cut and hashed)
        sha = hashlib.sha256(data).hexdigest()
        if sha not in sizes:
            sizes[sha] = len(cctx.compress(data))
    table = stats.pop("table")
    stats["unique"] = len({s for s, _ in table})
    stats["order"] = [s for s, _ in table]
    return stats, sizes


def built_image(recipes: Path, name: str, workdir: Path, base: Path | None = None) -> Path:
    m = build(RecipeBook(recipes).load(name), workdir, skip_tests=True, base=base)
    return Path(m["path"]) / str(m["image"]["file"])


def rsync_literal(old: Path, new: Path, scratch: Path) -> dict[str, int]:
    d = scratch / "rsync-dest"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    shutil.copyfile(old, d / "f")
    r = subprocess.run(["rsync", "--stats", "--no-whole-file", "--inplace", str(new), str(d / "f")],
                       check=True, capture_output=True, text=True).stdout
    shutil.rmtree(d, ignore_errors=True)

    def field(name: str) -> int:
        m = re.search(rf"^{name}: ([\d,]+)", r, re.M)
        return int(m.group(1).replace(",", "")) if m else -1

    return {"literal_bytes": field("Literal data"), "bytes_sent": field("Total bytes sent")}


def zsync_bytes(old: Path, new: Path, scratch: Path) -> dict[str, Any]:
    """What zsync would download for `new` with `old` as its seed: its own report after reading the
    seed ("Target N% complete", 0.1 % steps) of `new`'s size, plus the .zsync control file. (Its
    range requests are not served here: zsync 0.6's multipart parser rejected Python's server, so
    the transfer itself is not run; the block match is zsync's own.)"""
    work = scratch / "zsync"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    shutil.copyfile(new, work / "new.img")
    subprocess.run(["zsyncmake", "-u", "http://127.0.0.1:9/new.img", "-o", str(work / "new.zsync"),
                    str(work / "new.img")], check=True, capture_output=True, cwd=work)
    r = subprocess.run(["timeout", "60", "zsync", "-i", str(old), "-o", str(work / "out.img"),
                        str(work / "new.zsync")], capture_output=True, text=True, cwd=work)
    m = re.search(r"Target ([\d.]+)% complete", r.stdout + r.stderr)
    control = (work / "new.zsync").stat().st_size
    shutil.rmtree(work, ignore_errors=True)
    if not m:
        raise RuntimeError(f"zsync did not report its seed match: {(r.stdout + r.stderr)[-500:]}")
    done = float(m.group(1)) / 100
    return {"seed_match": done, "download_bytes": round((1 - done) * new.stat().st_size) + control,
            "control_file_bytes": control}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--chunk-only":
        print(json.dumps(chunk_only(Path(sys.argv[2]))))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="debian-12-base")
    ap.add_argument("--package", default="tree", help="the package the nightly adds")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="if-delta-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    scratch = workdir / "bench"
    scratch.mkdir(exist_ok=True)
    recipes = workdir / "recipes"
    shutil.copytree(REPO / "recipes", recipes, dirs_exist_ok=True)
    try:
        old = built_image(recipes, args.recipe, workdir)
        path = recipes / f"{args.recipe}.yaml"
        doc = yaml.safe_load(path.read_text())
        doc.setdefault("packages", {}).setdefault("install", []).append(args.package)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        new = built_image(recipes, args.recipe, workdir)
        again = built_image(recipes, args.recipe, workdir)
        # the nightly as `build --base`: new's tree written in place over old's file system, twice
        placed = built_image(recipes, args.recipe, workdir, base=old.parent)
        placed_again = built_image(recipes, args.recipe, workdir, base=old.parent)
        raws = {}
        for name, img in (("old", old), ("new", new), ("again", again), ("placed", placed),
                          ("placed_again", placed_again)):
            raws[name] = scratch / f"{name}.raw"
            chunks.raw_disk(img, "qcow2", raws[name])
        stats, sizes = {}, {}
        for name in raws:
            stats[name], sizes[name] = chunk_set(raws[name])
        missing = {s: n for s, n in sizes["new"].items() if s not in sizes["old"]}
        table_bytes = len(chunks._table([chunks.Chunk(s, 0, 0) for s in stats["new"].pop("order")]))
        delta = sum(missing.values()) + table_bytes + 2048  # + the signed index (about 1-2 KB)
        placed_missing = {s: n for s, n in sizes["placed"].items() if s not in sizes["old"]}
        placed_table = len(chunks._table([chunks.Chunk(s, 0, 0) for s in stats["placed"].pop("order")]))
        placed_delta = sum(placed_missing.values()) + placed_table + 2048
        reuse_again = len(set(sizes["again"]) & set(sizes["new"])) / len(sizes["again"])
        for s in stats.values():
            s.pop("order", None)
        result = {
            "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "recipe": args.recipe, "added_package": args.package,
            "qcow2_bytes": {n: p.stat().st_size for n, p in (("old", old), ("new", new), ("again", again))},
            "chunker": chunks.CHUNKER,
            "chunking": {k: v for k, v in stats["new"].items()},
            "delta": {"chunks": len(missing), "bytes": delta,
                      "of_new_qcow2": round(delta / new.stat().st_size, 4),
                      "all_chunks_compressed": sum(sizes["new"].values())},
            "in_place": {
                "delta": {"chunks": len(placed_missing), "bytes": placed_delta,
                          "of_new_qcow2": round(placed_delta / placed.stat().st_size, 4),
                          "all_chunks_compressed": sum(sizes["placed"].values())},
                "qcow2_bytes": placed.stat().st_size,
                "rsync_qcow2": rsync_literal(old, placed, scratch),
                "rsync_raw": rsync_literal(raws["old"], raws["placed"], scratch),
                "zsync_qcow2": zsync_bytes(old, placed, scratch),
                "rebuild_byte_identical_disk": sizes["placed"].keys() == sizes["placed_again"].keys()
                and stats["placed"]["disk_bytes"] == stats["placed_again"]["disk_bytes"],
            },
            "rsync_qcow2": rsync_literal(old, new, scratch),
            "rsync_raw": rsync_literal(raws["old"], raws["new"], scratch),
            "zsync_qcow2": zsync_bytes(old, new, scratch),
            "rebuild": {"byte_identical_qcow2": hashlib.sha256(new.read_bytes()).hexdigest()
                        == hashlib.sha256(again.read_bytes()).hexdigest(),
                        "byte_identical_disk": stats["again"]["disk_bytes"] == stats["new"]["disk_bytes"]
                        and sizes["again"].keys() == sizes["new"].keys(),
                        "chunks_reused": round(reuse_again, 4)},
        }
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    out = REPO / "benchmarks/results" / f"delta_delivery-{args.recipe}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
