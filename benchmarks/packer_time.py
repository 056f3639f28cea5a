"""Benchmark: `imagefactory build debian-12-packer --skip-tests` against a bare `packer build` of an
equivalent hand-written template, in the same run, from the same source image.

The hand-written template does what a person would write for the same result: the qemu builder
from the local qcow2 (disk_image), a NoCloud seed with an SSH key, loopback-only SSH, one inline
shell provisioner that updates and installs the same packages (through the same allow-list proxy,
since build VMs here have no other egress), shutdown through sudo, compressed qcow2 output. What
imagefactory adds on top: rendering/validate, the offline steps on the disk (files, STIG bake,
seal, checks), one compressed conversion and the checksums. Run as root on a prepared host:

    .venv/bin/python benchmarks/packer_time.py [--rounds N]

Writes benchmarks/results/packer_time.json; the README's numbers come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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

from imagefactory.build import build  # noqa: E402
from imagefactory.cloudinit import SeedData, render, write_seed_iso  # noqa: E402
from imagefactory.distros import get as distro  # noqa: E402
from imagefactory.proxy import PackageProxy  # noqa: E402
from imagefactory.recipes import RecipeBook  # noqa: E402
from imagefactory.sshkeys import ephemeral_key  # noqa: E402
from imagefactory.steps import stig  # noqa: E402
from imagefactory.store.local import LocalStore  # noqa: E402

BARE = """
source "qemu" "bare" {
  accelerator      = "tcg"
  disk_image       = true
  iso_url          = "%(image)s"
  iso_checksum     = "sha256:%(sha256)s"
  output_directory = "%(out)s"
  vm_name          = "image.qcow2"
  format           = "qcow2"
  disk_size        = "4096M"
  disk_compression = true
  headless         = true
  memory           = 1024
  cpus             = 2
  vnc_bind_address = "127.0.0.1"
  qemuargs = [
    ["-netdev", "%(netdev)s"],
    ["-device", "virtio-net,netdev=user.0"],
    ["-cdrom", "%(seed)s"],
  ]
  ssh_username         = "debian"
  ssh_private_key_file = "%(key)s"
  ssh_timeout          = "20m"
  shutdown_command     = "sudo -n systemctl poweroff"
}

build {
  sources = ["source.qemu.bare"]
  provisioner "shell" {
    inline = %(inline)s
  }
}
"""


def bare_build(work: Path, image: Path, sha256: str, packages: list[str], allow: tuple[str, ...]) -> float:
    d = Path(tempfile.mkdtemp(prefix="bare-", dir=work))
    key, pub = ephemeral_key(d)
    write_seed_iso(render(SeedData("i-bare", "bare", "52:54:00:12:34:56", (pub,))), d / "seed.iso")
    with PackageProxy(allow) as proxy:
        apt = "sudo -n DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::http::Proxy=http://10.0.2.100:3142"
        inline = [f"{apt} update", f"{apt} -y --with-new-pkgs upgrade",
                  f"{apt} -y --no-install-recommends install {' '.join(shlex.quote(p) for p in packages)}",
                  "sudo -n apt-get clean"]
        netdev = ("user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22,"
                  f"guestfwd=tcp:10.0.2.100:3142-cmd:socat - TCP:127.0.0.1:{proxy.port}")
        (d / "bare.pkr.hcl").write_text(BARE % {
            "image": image, "sha256": sha256, "out": d / "out", "seed": d / "seed.iso", "key": key,
            "netdev": netdev, "inline": json.dumps(inline)})
        env = {**os.environ, "CHECKPOINT_DISABLE": "1", "TMPDIR": str(d)}
        start = time.monotonic()
        subprocess.run(["packer", "build", "-color=false", str(d)], check=True, env=env, cwd=d,
                       stdout=subprocess.DEVNULL)
        took = time.monotonic() - start
    shutil.rmtree(d, ignore_errors=True)
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="if-packer-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    book = RecipeBook(REPO / "recipes")
    data: dict[str, Any] = {"host": {"cpus": os.cpu_count(), "accelerator": "tcg"}, "rounds": args.rounds}
    try:
        base = build(book.load("debian-12-base"), work, store=LocalStore(work / "store"), skip_tests=True)
        image = Path(base["path"]) / base["image"]["file"]
        recipe = book.load("debian-12-packer")
        r = recipe.recipe
        packages = sorted({*r.packages.install, *stig.packages(r)[1]})
        allow = distro(r.os.family).package_mirrors(r)
        bare: list[float] = []
        ours: list[float] = []
        steps: list[dict[str, Any]] = []
        for i in range(args.rounds):
            for which in (("bare", "ours") if i % 2 == 0 else ("ours", "bare")):
                if which == "bare":
                    bare.append(bare_build(work, image, base["image"]["sha256"], packages, allow))
                else:
                    start = time.monotonic()
                    m = build(recipe, work, skip_tests=True)
                    ours.append(time.monotonic() - start)
                    steps = m["steps"]
                print(f"round {i + 1}: {which} done", file=sys.stderr)
        data.update({
            "bare_packer_build_s": [round(x, 1) for x in bare],
            "imagefactory_build_s": [round(x, 1) for x in ours],
            "ratio_median": round(statistics.median(ours) / statistics.median(bare), 2),
            "imagefactory_steps": steps,
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = REPO / "benchmarks/results/packer_time.json"
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
