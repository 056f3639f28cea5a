"""The input lock: every external input of a recipe, pinned by version and sha256.

`<recipes>/imagefactory.lock` (JSON, sorted, reviewable in a diff) holds per recipe the resolved
RKE2/Zarf versions and every artifact (name, sha256, upstream URL, role), plus `key`: a digest
of the recipe's input specification. Builds read only the lock; a missing entry or a `key` that
no longer matches the recipe is an error telling the user to run `imagefactory lock update`.
Channels are resolved here, never at build time (the channel server lags GitHub).
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.parse
from pathlib import Path
from typing import Any

from .artifacts import Artifact, http_get, parse_sums, redirect_location
from .config import FactoryConfig
from .errors import BuildError, UserError
from .fsutil import atomic_write, exclusive_lock
from .recipes.model import RKE2_VERSION, Recipe, Rke2, Zarf

log = logging.getLogger(__name__)
LOCK_NAME = "imagefactory.lock"


def input_key(recipe: Recipe) -> str:
    """Digest of what the lock resolves for `recipe` (not of static config such as rke2.config)."""
    spec: dict[str, Any] = {}
    if recipe.rke2:
        spec["rke2"] = recipe.rke2.model_dump(mode="json", include={"version", "channel", "arch", "images"})
    if recipe.zarf:
        spec["zarf"] = recipe.zarf.model_dump(mode="json", include={"version", "init_package", "packages"})
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def needs_lock(recipe: Recipe) -> bool:
    return recipe.rke2 is not None or recipe.zarf is not None


class LockFile:
    def __init__(self, recipes_dir: Path) -> None:
        self.path = recipes_dir / LOCK_NAME

    def read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"schema": 1, "recipes": {}}
        except json.JSONDecodeError as e:
            raise UserError(f"{self.path}:{e.lineno}: invalid JSON: {e.msg}",
                            hint="regenerate it with 'imagefactory lock update'") from None
        return data

    def entry(self, recipe: Recipe) -> dict[str, Any]:
        """The locked inputs of `recipe`; raises when missing or stale."""
        entry = self.read()["recipes"].get(recipe.name)
        if entry is None:
            raise UserError(f"{self.path}: no lock entry for {recipe.name}",
                            hint=f"run 'imagefactory lock update {recipe.name}' (needs the network "
                                 "or a mirror) and commit the lock")
        if entry.get("key") != input_key(recipe):
            raise UserError(f"{self.path}: the lock entry for {recipe.name} does not match the recipe "
                            "(rke2/zarf changed since it was locked)",
                            hint=f"run 'imagefactory lock update {recipe.name}'")
        return dict(entry)

    def artifacts(self, recipe: Recipe) -> list[Artifact]:
        return [Artifact(**a) for a in self.entry(recipe)["artifacts"]]

    def update(self, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Merge `entries` into the lock, atomically and under a lock; returns the old entries."""
        with exclusive_lock(self.path.with_name(f".{LOCK_NAME}.lck"), "a lock update", wait=True):
            data = self.read()
            old = {n: data["recipes"].get(n) for n in entries}
            data["recipes"].update(entries)
            data["recipes"] = dict(sorted(data["recipes"].items()))
            atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return old


def check_entry(recipe: Recipe, entry: dict[str, Any]) -> None:
    """Consistency of a lock entry with the recipe, before anything is built."""
    if recipe.zarf:
        arch = recipe.rke2.arch if recipe.rke2 else recipe.os.arch
        binary = f"zarf_{recipe.zarf.version}_Linux_{arch}"
        init = f"zarf-init-{arch}-{recipe.zarf.version}.tar.zst"
        for a in entry.get("artifacts", []):
            if a["role"] == "zarf-binary" and a["name"] != binary:
                raise UserError(f"lock: Zarf binary {a['name']} is not {binary}",
                                hint=f"run 'imagefactory lock update {recipe.name}'")
            if a["role"] == "zarf-init" and a["name"] != init:
                raise UserError(f"lock: Zarf init package {a['name']} does not match the binary "
                                f"version {recipe.zarf.version}: zarf init needs {init}",
                                hint=f"run 'imagefactory lock update {recipe.name}'")


def quote_version(version: str) -> str:
    return urllib.parse.quote(version, safe="")


def resolve_rke2_version(cfg: FactoryConfig, rke2: Rke2) -> str:
    if rke2.version:
        return rke2.version
    assert rke2.channel is not None
    location = redirect_location(f"{cfg.upstream.rke2_channels.rstrip('/')}/{rke2.channel}")
    version = urllib.parse.unquote(location.rstrip("/").rsplit("/", 1)[-1])
    if not RKE2_VERSION.match(version):
        raise BuildError(f"channel '{rke2.channel}' points at '{version}', not an RKE2 version")
    return version


def rke2_artifacts(cfg: FactoryConfig, rke2: Rke2, version: str) -> list[Artifact]:
    arch = rke2.arch
    base = f"{cfg.upstream.rke2_release.rstrip('/')}/{quote_version(version)}"
    sums_name = f"sha256sum-{arch}.txt"
    sums_bytes = http_get(f"{base}/{sums_name}")
    listed = parse_sums(sums_bytes.decode(errors="replace"))
    names = [f"rke2.linux-{arch}.tar.gz"]
    if rke2.images == "all":
        names.append(f"rke2-images.linux-{arch}.tar.zst")
    else:
        names += [f"rke2-images-{i}.linux-{arch}.tar.zst" for i in rke2.images]
    missing = [n for n in names if n not in listed]
    if missing:
        raise BuildError(f"RKE2 {version} has no {', '.join(missing)} in {sums_name}",
                         hint="check rke2.images and rke2.arch for this release")
    out = [Artifact(sums_name, hashlib.sha256(sums_bytes).hexdigest(), f"{base}/{sums_name}", "rke2-sums")]
    for n in names:
        role = "rke2-bundle" if n.startswith("rke2.linux") else "rke2-images"
        out.append(Artifact(n, listed[n], f"{base}/{n}", role))
    install_url = f"{cfg.upstream.rke2_source.rstrip('/')}/{quote_version(version)}/install.sh"
    install = http_get(install_url)
    out.append(Artifact("install.sh", hashlib.sha256(install).hexdigest(), install_url, "rke2-install"))
    return out


def zarf_artifacts(cfg: FactoryConfig, zarf: Zarf, arch: str) -> list[Artifact]:
    v = zarf.version
    base = f"{cfg.upstream.zarf_release.rstrip('/')}/{v}"
    sums_bytes = http_get(f"{base}/checksums.txt")
    listed = parse_sums(sums_bytes.decode(errors="replace"))
    binary = f"zarf_{v}_Linux_{arch}"
    names = [binary] + ([f"zarf-init-{arch}-{v}.tar.zst"] if zarf.init_package else [])
    missing = [n for n in names if n not in listed]
    if missing:
        raise BuildError(f"Zarf {v} lists no {', '.join(missing)} in checksums.txt",
                         hint="the init package must match the binary's version exactly")
    out = [Artifact("checksums.txt", hashlib.sha256(sums_bytes).hexdigest(), f"{base}/checksums.txt",
                    "zarf-sums")]
    for n in names:
        out.append(Artifact(n, listed[n], f"{base}/{n}", "zarf-binary" if n == binary else "zarf-init"))
    for url in zarf.packages:
        # Packages have no upstream sums file: the lock's hash, taken now, is what pins them.
        out.append(Artifact(url.rsplit("/", 1)[-1], hashlib.sha256(http_get(url, timeout=600)).hexdigest(),
                            url, "zarf-package"))
    return out


def resolve(cfg: FactoryConfig, recipe: Recipe) -> dict[str, Any]:
    """A fresh lock entry for `recipe` (network: channel server, sums files, install.sh)."""
    entry: dict[str, Any] = {"key": input_key(recipe), "artifacts": []}
    if recipe.rke2:
        version = resolve_rke2_version(cfg, recipe.rke2)
        entry["rke2"] = {"version": version, "channel": recipe.rke2.channel, "arch": recipe.rke2.arch}
        entry["artifacts"] += [a.as_dict() for a in rke2_artifacts(cfg, recipe.rke2, version)]
    if recipe.zarf:
        entry["zarf"] = {"version": recipe.zarf.version}
        arch = recipe.rke2.arch if recipe.rke2 else recipe.os.arch
        entry["artifacts"] += [a.as_dict() for a in zarf_artifacts(cfg, recipe.zarf, arch)]
    return entry


def diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Human-readable changes between two lock entries."""
    if old is None:
        return ["new entry"]
    lines = []
    for part in ("rke2", "zarf"):
        o, n = (old.get(part) or {}).get("version"), (new.get(part) or {}).get("version")
        if o != n:
            lines.append(f"{part}: {o} -> {n}")
    olda = {a["name"]: a["sha256"] for a in old.get("artifacts", [])}
    newa = {a["name"]: a["sha256"] for a in new.get("artifacts", [])}
    for name in sorted(set(olda) | set(newa)):
        if olda.get(name) != newa.get(name):
            lines.append(f"{name}: {str(olda.get(name))[:12]} -> {str(newa.get(name))[:12]}")
    return lines
