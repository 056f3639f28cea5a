"""Benchmark: how much of a disk's chunks the file system itself changes. Run as root:

    .venv/bin/python benchmarks/mkfs_delta.py [--suite bookworm] [--mirror URL]

A Debian minbase root (mmdebstrap) goes through `mkfs.ext4 -d` into a 1 GiB file the way the disk
builder does it, twice, (a) as today (a random file-system UUID, the real time) and (b) with
deterministic settings (a UUID derived from the recipe name, `hash_seed` the same, and
`E2FSPROGS_FAKE_TIME`): are the two disks identical, and what share of chunks (imagefactory's
chunker) do they share? Then the same root with one small package's worth of files added (a
90 KB binary, a doc file, a dpkg status stanza; mtimes kept): what share of the compressed chunk
bytes is new, (a) and (b) from a fresh mkfs, (c) written in place over the old root's
deterministic file system (imagefactory.builders.inplace, what `build --base` does)? This
isolates the file system's part of `benchmarks/delta_delivery.py`'s numbers.
Writes benchmarks/results/mkfs_delta.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import zstandard

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagefactory.builders import inplace  # noqa: E402
from imagefactory.delivery import chunks  # noqa: E402

FAKE_TIME = "1764892800"


def mkfs(out: Path, src: Path, deterministic: bool) -> None:
    out.unlink(missing_ok=True)
    with open(out, "wb") as f:
        f.truncate(1 << 30)
    env, args = dict(os.environ), ["mkfs.ext4", "-q", "-F", "-L", "root"]
    if deterministic:
        u = str(uuid.uuid5(uuid.NAMESPACE_URL, "imagefactory:debian-12-base"))
        args += ["-U", u, "-E", f"hash_seed={u}"]
        env["E2FSPROGS_FAKE_TIME"] = FAKE_TIME
    else:
        args += ["-U", str(uuid.uuid4())]
    subprocess.run([*args, "-d", str(src), str(out)], check=True, env=env)


def chunk_sizes(raw: Path) -> dict[str, int]:
    cctx = zstandard.ZstdCompressor(level=chunks.ZSTD_LEVEL)
    out: dict[str, int] = {}
    for data in chunks.cut(raw):
        sha = hashlib.sha256(data).hexdigest()
        if sha not in out:
            out[sha] = len(cctx.compress(data))
    return out


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="bookworm")
    ap.add_argument("--mirror", default="http://deb.debian.org/debian")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="if-mkfs-", dir="/var/tmp"))
    try:
        root, grown = work / "root", work / "grown"
        subprocess.run(["mmdebstrap", "--mode=root", "--variant=minbase", args.suite, str(root), args.mirror],
                       check=True, capture_output=True)
        # cp -a, not shutil.copytree: the root holds device nodes (/dev/zero would be read forever)
        subprocess.run(["cp", "-a", str(root), str(grown)], check=True)
        (grown / "usr/share/doc/tree").mkdir(parents=True)
        (grown / "usr/bin/tree").write_bytes(os.urandom(90_000))
        (grown / "usr/share/doc/tree/copyright").write_text("tree\n")
        status = grown / "var/lib/dpkg/status"
        st = status.stat()
        with open(status, "a") as f:
            f.write("\nPackage: tree\nStatus: install ok installed\nVersion: 2.1.0-1\n")
        os.utime(status, ns=(st.st_atime_ns, st.st_mtime_ns))
        used = sum(p.lstat().st_size for p in root.rglob("*"))
        result: dict[str, Any] = {"root_mib": round(used / 2**20, 1), "fs_mib": 1024}
        for mode in ("as_built_today", "deterministic"):
            det = mode == "deterministic"
            a, b, c = work / "a.raw", work / "b.raw", work / "c.raw"
            mkfs(a, root, det)
            mkfs(b, root, det)
            mkfs(c, grown, det)
            sa, sb, sc = chunk_sizes(a), chunk_sizes(b), chunk_sizes(c)
            delta = sum(n for h, n in sc.items() if h not in sa)
            result[mode] = {
                "rebuild_identical": digest(a) == digest(b),
                "rebuild_chunks_reused": round(len(sa.keys() & sb.keys()) / len(sb), 4),
                "one_package_new_share": round(delta / sum(sc.values()), 4),
                "one_package_new_chunks": len(sc.keys() - sa.keys()), "chunks": len(sc),
            }
            print(mode, result[mode], flush=True)
        # (c) the grown root written in place over the deterministic disk of the old one
        a, d = work / "a.raw", work / "d.raw"
        mkfs(a, root, True)
        shutil.copyfile(a, d)
        (work / "scratch").mkdir()
        plan = inplace.apply(d, 0, inplace.index(root), inplace.index(grown), grown, work / "scratch",
                             int(FAKE_TIME) + 86400)
        fsck = subprocess.run(["e2fsck", "-fn", str(d)], capture_output=True, text=True)
        sa, sd = chunk_sizes(a), chunk_sizes(d)
        result["in_place"] = {
            "fsck_clean": fsck.returncode == 0, "debugfs_commands": len(plan.commands),
            "one_package_new_share": round(sum(n for h, n in sd.items() if h not in sa) / sum(sd.values()),
                                           4),
            "one_package_new_chunks": len(sd.keys() - sa.keys()), "chunks": len(sd),
        }
        print("in_place", result["in_place"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = REPO / "benchmarks/results/mkfs_delta.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
