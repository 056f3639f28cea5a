"""The local image store: images addressable by name and version in a directory.

Layout: `<store>/<name>/<version>/{image.qcow2,manifest.json,junit.xml,build.log}` (hard links to
the build output when on the same filesystem) and `<store>/index.json`, rewritten atomically
under a lock. A version directory appears under its final name only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fsutil import exclusive_lock, write_json


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def index(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.index_path.read_text())
            return data
        except FileNotFoundError:
            return {"schema": 1, "images": {}}

    def add(self, build_dir: Path) -> str:
        """Add a finished build; returns the store reference `name:version`."""
        manifest = json.loads((build_dir / "manifest.json").read_text())
        name, version = manifest["name"], manifest["version"]
        dest = self.root / name / version
        tmp = self.root / name / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _link_tree(build_dir, tmp)
        os.chmod(tmp, 0o755)
        with exclusive_lock(self.root / ".lock", "a store update", wait=True):
            if dest.exists():  # the same build added twice: keep the first copy
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, dest)
            idx = self.index()
            entry = {
                "version": version,
                "path": str(dest),
                "image": manifest["image"]["file"],
                "sha256": manifest["image"]["sha256"],
                "size": manifest["image"]["size"],
                "created": manifest["created"],
                "os": manifest["os"],
                "tests_ok": manifest.get("tests", {}).get("ok"),
            }
            versions = [v for v in idx["images"].get(name, []) if v["version"] != version]
            idx["images"][name] = sorted([*versions, entry], key=lambda v: v["version"])
            write_json(self.index_path, idx)
        return f"{name}:{version}"

    def list(self) -> list[dict[str, Any]]:
        return [{"name": n, **v} for n, vs in sorted(self.index()["images"].items()) for v in vs]

    def resolve(self, ref: str) -> Path:
        """`name` (latest), `name:version`, a version directory or an image file -> image path."""
        p = Path(ref)
        if p.is_file():
            return p
        if p.is_dir() and (p / "manifest.json").is_file():
            m = json.loads((p / "manifest.json").read_text())
            return p / str(m["image"]["file"])
        name, _, version = ref.partition(":")
        versions = self.index()["images"].get(name, [])
        if not versions:
            raise UserError(f"{ref}: no such image in the store ({self.root})",
                            hint="see 'imagefactory images list', or pass a path to a qcow2 file")
        chosen = versions[-1] if not version else next(
            (v for v in versions if v["version"] == version), None)
        if chosen is None:
            raise UserError(f"{ref}: no version '{version}' of {name}",
                            hint="versions: " + ", ".join(v["version"] for v in versions))
        return Path(chosen["path"]) / str(chosen["image"])


def _link_tree(src: Path, dest: Path) -> None:
    """Hard-link every file of `src` into `dest` (copy across filesystems), subdirectories too
    (e.g. the STIG checklists)."""
    for f in src.iterdir():
        if f.is_dir():
            (dest / f.name).mkdir()
            os.chmod(dest / f.name, 0o755)
            _link_tree(f, dest / f.name)
            continue
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copy2(f, dest / f.name)
