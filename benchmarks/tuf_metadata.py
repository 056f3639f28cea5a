"""Benchmark: what a channel move and a revocation cost a consumer that already holds the
catalogue's TUF metadata (issue 18's goal: a small signed update, <= 4 KB to a site), as the
catalogue grows; and the time a consumer's verification takes (`verify_for_consumer`, which now
refreshes the TUF metadata) next to the plain manifest-signature check it replaced.

Set-up (not timed): a local catalogue with IMAGES image names of VERSIONS versions each (tiny
fake builds; the metadata does not depend on the image size). Measured per catalogue size:
- bytes of the objects a consumer fetches after `promote` (and after `revoke`): the new
  timestamp, snapshot and targets, the name's new channels file and the re-signed manifest;
  raw and zstd-compressed (what a bundle or a sync would carry);
- `verify_for_consumer` with its trusted state already there (the usual case), against the
  anchor: reading the manifest and checking its ed25519 signature only (the old path).

    .venv/bin/python benchmarks/tuf_metadata.py [--sizes 1x1,5x10,5x50] [--rounds 20]

Writes benchmarks/results/tuf_metadata.json. The numbers in README.md come from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zstandard

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from imagefactory.catalogue import signing, trust  # noqa: E402
from imagefactory.catalogue.catalogue import Catalogue, RevokedImage, verify_for_consumer  # noqa: E402
from imagefactory.catalogue.manifest import manifest_key  # noqa: E402
from imagefactory.catalogue.publish import publish  # noqa: E402
from imagefactory.catalogue.stores import LocalDirStore  # noqa: E402
from imagefactory.catalogue.trust import Anchor, Keys  # noqa: E402
from tests.publishing import fake_build  # noqa: E402


def _objects(store: LocalDirStore) -> dict[str, bytes]:
    return {p.relative_to(store.root).as_posix(): p.read_bytes()
            for p in store.root.rglob("*") if p.is_file() and not p.name.startswith(".")
            and not p.relative_to(store.root).as_posix().startswith("blobs/")}


def _update_cost(before: dict[str, bytes], after: dict[str, bytes]) -> dict[str, Any]:
    """What a consumer that holds `before`'s metadata fetches to verify against `after`: the new
    TUF files and the new targets (hash-named) - not the plain copies, the index or the page."""
    new = {k: v for k, v in after.items() if before.get(k) != v
           and (k.startswith("tuf/") or ("/" in k and len(k.rsplit("/", 1)[1].split(".", 1)[0]) == 64))}
    raw = sum(len(v) for v in new.values())
    packed = len(zstandard.ZstdCompressor(level=19).compress(b"".join(new[k] for k in sorted(new))))
    return {"files": {k: len(new[k]) for k in sorted(new)}, "bytes": raw, "zstd_bytes": packed}


def measure(root: Path, images: int, versions: int, rounds: int) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    store = LocalDirStore("local", root / "catalogue")
    for i in range(images):
        for v in range(versions):
            d = fake_build(root / "w", name=f"image-{i}", version=f"20261201.{v:06d}-aaaa", seed=i * 1000 + v,
                           size=4096)
            publish(d, store, key)
    cat = Catalogue(store, Keys.single(key))
    anchor = Anchor.single(key.public_key(), root / "trust")
    target = f"image-0:20261201.{versions - 1:06d}-aaaa"
    verify_for_consumer(store, target, anchor)  # the consumer's state is current
    before = _objects(store)
    cat.promote(target, "stable", key, key.public_key())
    promote = _update_cost(before, _objects(store))
    verify_for_consumer(store, "image-0@stable", anchor)
    before = _objects(store)
    cat.revoke(target, "benchmark", key, key.public_key())
    revoke = _update_cost(before, _objects(store))
    ref = f"image-0:20261201.{max(versions - 2, 0):06d}-aaaa" if versions > 1 else "image-1"
    if versions == 1 and images == 1:
        ref = target
    times_tuf, times_sig = [], []
    mk = manifest_key(*ref.split(":", 1)) if ":" in ref else None
    for _ in range(rounds):
        t0 = time.perf_counter()
        with contextlib.suppress(RevokedImage):  # the single-version case: its only version is revoked
            verify_for_consumer(store, ref, anchor)
        times_tuf.append(time.perf_counter() - t0)
        if mk:
            t0 = time.perf_counter()
            raw, _ = store.get_bytes(mk)
            signing.verify(json.loads(raw), key.public_key(), mk)
            times_sig.append(time.perf_counter() - t0)
    tuf = [p.stat().st_size for p in (store.root / "tuf").glob("*.json")]
    # what a site's first bundle or sync carries besides chunks, for one image that is not revoked
    pick = [("image-0", "20261201.000000-aaaa")] if versions > 1 else []
    first = b"".join(v for _, v in sorted(trust.site_metadata(store, pick).items()))
    first_zstd = len(zstandard.ZstdCompressor(level=19).compress(first))
    return {"images": images, "versions": versions, "targets": images * (versions + 1),
            "promote": promote, "revoke": revoke,
            "role_bytes": max(len(v) for k, v in _objects(store).items()
                              if k.endswith(".image-image-0.json")),
            "tuf_dir_bytes": sum(tuf),
            "site_first_bytes": len(first) if pick else None,
            "site_first_zstd_bytes": first_zstd if pick else None,
            "verify_tuf_ms": round(statistics.median(times_tuf) * 1000, 2),
            "verify_signature_only_ms": round(statistics.median(times_sig) * 1000, 2) if times_sig else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1x1,5x10,5x50", help="IMAGESxVERSIONS, comma-separated")
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    rows = []
    for spec in a.sizes.split(","):
        images, versions = (int(x) for x in spec.split("x"))
        with tempfile.TemporaryDirectory(prefix="tuf-bench-") as tmp:
            row = measure(Path(tmp), images, versions, a.rounds)
        rows.append(row)
        p, r = row["promote"], row["revoke"]
        print(f"{images} x {versions}: promote {p['bytes']} B ({p['zstd_bytes']} zstd), "
              f"revoke {r['bytes']} B "
              f"({r['zstd_bytes']} zstd), the image's role {row['role_bytes']} B, verify "
              f"{row['verify_tuf_ms']} ms (signature only {row['verify_signature_only_ms']} ms), a site's "
              f"first delivery {row['site_first_bytes']} B ({row['site_first_zstd_bytes']} zstd)")
        fetched = ", ".join(f"{k.rsplit('/', 1)[1][-40:]} {n}" for k, n in p["files"].items())
        print(f"   promote fetches: {fetched}")
    out = REPO / "benchmarks/results/tuf_metadata.json"
    out.write_text(json.dumps({"host": platform.node(), "python": platform.python_version(),
                               "rounds": a.rounds, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
