"""Benchmark: `imagefactory publish` of a ~1 GiB image to S3 against the managed uploads of boto3
(`upload_file`, default TransferConfig) and the MinIO SDK (`fput_object`) to the same kind of
server in the same run, plus the blob bytes sent when the unchanged image is published again.

The server is moto (`python -m moto.server`, `--server moto`, the default) or Ceph RGW
(`--server rgw`: tests/rgw.py, one mon + memstore OSD + radosgw, which checks signatures, payload
hashes and Content-MD5) on 127.0.0.1, started afresh for every measured upload (both keep objects
in memory: ~1 GiB of RSS per GiB stored). The order of the contenders
alternates between rounds; medians are reported. Ours is the whole publish (image, SBOM, STIG
reports, checklists, signed manifest, index, index.html); the baselines upload the image file only.

    .venv/bin/python benchmarks/publish_throughput.py [--server moto|rgw] [--size-mib 1024] [--rounds 3]

Writes benchmarks/results/publish_throughput.json (moto) or publish_throughput-rgw.json. The
numbers in README.md come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from imagefactory.catalogue.publish import publish  # noqa: E402
from imagefactory.catalogue.s3 import Credentials, S3Store  # noqa: E402
from imagefactory.config import S3StoreConfig  # noqa: E402
from tests.publishing import MotoServer, fake_build  # noqa: E402
from tests.rgw import start_rgw  # noqa: E402

MiB = 1024**2
BUCKET = "images"


class Server(Protocol):
    @property
    def endpoint(self) -> str: ...

    access_key: str
    secret_key: str

    def cpu_seconds(self) -> float: ...
    def rss_mib(self) -> float: ...
    def stop(self) -> None: ...


def _start(kind: str) -> Server:
    if kind == "rgw":
        return start_rgw()
    return MotoServer().start()


def _boto3(server: Server, image: Path) -> float:
    import boto3

    s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                      aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key)
    s3.create_bucket(Bucket=BUCKET)
    start = time.monotonic()
    s3.upload_file(str(image), BUCKET, "boto3/image.qcow2")
    return time.monotonic() - start


def _minio(server: Server, image: Path) -> float:
    from minio import Minio

    c = Minio(server.endpoint.removeprefix("http://"), access_key=server.access_key,
              secret_key=server.secret_key, secure=False, region="us-east-1")
    c.make_bucket(BUCKET)
    start = time.monotonic()
    c.fput_object(BUCKET, "minio/image.qcow2", str(image))
    return time.monotonic() - start


def _ours(cfg: dict[str, Any], key: Ed25519PrivateKey, build: Path, record: dict[str, Any]
          ) -> Callable[[Server, Path], float]:
    def run(server: Server, image: Path) -> float:
        store = S3Store("bench", S3StoreConfig.model_validate(
            {"type": "s3", "endpoint": server.endpoint, "bucket": BUCKET, "create_bucket": True} | cfg),
            Credentials(server.access_key, server.secret_key, None, "benchmark"))
        store.prepare()
        first = publish(build, store, key)
        again = publish(build, store, key)  # the unchanged image once more: no blob bytes
        record.setdefault("republish_uploaded_bytes", []).append(again.uploaded_bytes)
        record.setdefault("republish_seconds", []).append(again.seconds)
        record.setdefault("publish_blob_bytes", []).append(first.blob_bytes)
        return first.seconds

    return run


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", choices=("moto", "rgw"), default="moto")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--part-size", default=None, help="override stores.*.part_size (e.g. 64MiB)")
    ap.add_argument("--parallel", type=int, default=None, help="override stores.*.parallel")
    ap.add_argument("--no-minio", action="store_true", help="skip the fput_object baseline")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    suffix = "" if args.server == "moto" else f"-{args.server}"
    output = args.output or str(REPO / f"benchmarks/results/publish_throughput{suffix}.json")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="if-publish-bench-", dir="/var/tmp"))
    size = args.size_mib * MiB
    print(f"making a {args.size_mib} MiB image in {workdir} ...", flush=True)
    build = fake_build(workdir, size=size, seed=int.from_bytes(os.urandom(4), "big"))
    image = build / "image.qcow2"
    cfg: dict[str, Any] = {}
    if args.part_size:
        cfg["part_size"] = args.part_size
    if args.parallel:
        cfg["parallel"] = args.parallel
    effective = S3StoreConfig.model_validate({"type": "s3", "endpoint": "http://x", "bucket": "b"} | cfg)
    record: dict[str, Any] = {}
    contenders: dict[str, Callable[[Server, Path], float]] = {
        "imagefactory": _ours(cfg, Ed25519PrivateKey.generate(), build, record), "boto3": _boto3}
    if not args.no_minio:
        contenders["minio"] = _minio
    seconds: dict[str, list[float]] = {n: [] for n in contenders}
    rss: dict[str, list[float]] = {n: [] for n in contenders}
    server_cpu: dict[str, list[float]] = {n: [] for n in contenders}
    client_cpu: dict[str, list[float]] = {n: [] for n in contenders}
    try:
        for r in range(args.rounds):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                server = _start(args.server)
                try:
                    cpu0, own0 = server.cpu_seconds(), time.process_time()
                    took = contenders[name](server, image)
                    # CPU of the measured upload and, for ours, of the re-publish after it (tiny).
                    server_cpu[name].append(round(server.cpu_seconds() - cpu0, 1))
                    client_cpu[name].append(round(time.process_time() - own0, 1))
                    rss[name].append(round(server.rss_mib()))
                finally:
                    server.stop()
                seconds[name].append(round(took, 2))
                print(f"round {r + 1} {name:13} {took:6.1f} s  {args.size_mib / took:6.1f} MiB/s", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    mibs = {n: [round(args.size_mib / s, 1) for s in v] for n, v in seconds.items()}
    med = {n: statistics.median(v) for n, v in mibs.items()}
    result = {
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "server": ("moto (python -m moto.server)" if args.server == "moto" else
                   "Ceph RGW 16.2 (tests/rgw.py: mon + memstore OSD + radosgw)")
                  + " on 127.0.0.1, fresh per upload, plain HTTP",
        "size_mib": args.size_mib, "rounds": args.rounds,
        "part_size_mib": effective.part_size // MiB, "parallel": effective.parallel,
        "seconds": seconds, "mib_per_s": mibs, "median_mib_per_s": med,
        "ratio_vs_boto3": round(med["imagefactory"] / med["boto3"], 2),
        "ratio_vs_minio": round(med["imagefactory"] / med["minio"], 2) if "minio" in med else None,
        "server_rss_mib": rss,
        "server_cpu_s": server_cpu, "client_cpu_s": client_cpu,
        "republish_uploaded_bytes": record.get("republish_uploaded_bytes"),
        "republish_seconds": record.get("republish_seconds"),
        "publish_blob_bytes": (record.get("publish_blob_bytes") or [None])[0],
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_mib_per_s", "ratio_vs_boto3", "ratio_vs_minio",
                                             "republish_uploaded_bytes")}, indent=2))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
