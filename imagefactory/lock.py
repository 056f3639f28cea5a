"""The input lock: every external input of a recipe, pinned by version and sha256.

`<recipes>/imagefactory.lock` (JSON, sorted, reviewable in a diff) holds per recipe the resolved
RKE2/Zarf versions and every artifact (name, sha256, upstream URL, role), plus `key`: a digest
of the recipe's input specification. Builds read only the lock; a missing entry or a `key` that
no longer matches the recipe is an error telling the user to run `imagefactory lock update`.
Channels are resolved here, never at build time (the channel server lags GitHub).

Every recipe's entry also records `source`, the identity of its base (see `resolve_source`): for
an mmdebstrap source the sha256 and `Date:` of the suite's Release file, for a cloud image its
sha256 (from the recipe's pinned checksum or the publisher's SHA256SUMS) and URL, for a local
image its store reference; plus `security`, the security suite's Release, for builds that
install security updates. The nightly build keys (`imagefactory.nightly`) are computed from it.
Lock files written before `source` existed stay readable: a missing or null `source`, or one
locked for another mirror/suite/URL than the recipe now names, means "unknown: rebuild".
`needs_lock` still means "a build refuses to start without an entry" (RKE2/Zarf only): a base
source is never fetched from the lock, only identified by it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from . import rpmrepo
from .archive import fetch, pocket_suites
from .artifacts import Artifact, cloud_image_artifact, http_get, parse_sums, redirect_location
from .config import FactoryConfig
from .errors import BuildError, ImageFactoryError, UserError
from .fsutil import atomic_write, exclusive_lock
from .recipes.located import fmt_path
from .recipes.model import (
    RKE2_VERSION,
    CloudImageSource,
    LocalImageSource,
    MmdebstrapSource,
    Recipe,
    Rke2,
    Zarf,
)
from .recipes.rke2_releases import release_problems

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

    def raw_entry(self, name: str) -> dict[str, Any] | None:
        """The entry of recipe `name` as stored, without any check (None when there is none)."""
        entry = self.read()["recipes"].get(name)
        return dict(entry) if isinstance(entry, dict) else None

    def source(self, recipe: Recipe) -> dict[str, Any] | None:
        """The locked base-source identity of `recipe`, or None when unknown (not locked, locked
        by an older imagefactory, or locked for another mirror/suite/URL than the recipe names)."""
        entry = self.raw_entry(recipe.name) or {}
        src = entry.get("source")
        return dict(src) if isinstance(src, dict) and source_matches(recipe, src) else None

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


def check_rke2_release(recipe: Recipe, version: str) -> None:
    """The recipe's rke2 section against what this release accepts and ships (recipes.rke2_releases):
    a channel's version is known only once resolved."""
    if recipe.rke2 is None:
        return
    problems = release_problems(recipe.rke2, version)
    if problems:
        p = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        key = fmt_path(("rke2", *p.key))
        via = f"channel '{recipe.rke2.channel}' resolves to {version}: " if recipe.rke2.channel else ""
        raise UserError(f"{recipe.name}: {key}: {via}{p.message}{more}", hint=p.hint)


def check_entry(recipe: Recipe, entry: dict[str, Any]) -> None:
    """Consistency of a lock entry with the recipe, before anything is built."""
    locked = entry.get("rke2", {}).get("version")
    if locked:
        check_rke2_release(recipe, locked)
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


# install.sh's name for SLE Micro in rpm.rancher.io paths (rpm_site_infix)
RPM_SITE_INFIX = {"sle-micro": "slemicro"}


def rke2_selinux_artifacts(cfg: FactoryConfig, recipe: Recipe) -> list[Artifact]:
    """rke2-selinux for an SELinux node, from the RPM repository upstream's install.sh configures
    (`<rpm>/rke2/<channel>/common/<infix>/noarch`, channel `stable` or `latest` as the recipe's
    RKE2 channel, `stable` for a pinned version - install.sh's default): its newest build, pinned
    by the sha256 the repository's signed-by-HTTPS metadata gives it, and the repository's public
    key (what install.sh hands zypper as gpgkey) so the package signature can be checked too."""
    assert recipe.rke2 is not None
    channel = recipe.rke2.channel if recipe.rke2.channel in ("stable", "latest") else "stable"
    base = cfg.upstream.rke2_rpm.rstrip("/")
    repo = f"{base}/rke2/{channel}/common/{RPM_SITE_INFIX[recipe.os.family]}/noarch"
    found = rpmrepo.newest(rpmrepo.packages(repo, http_get), "rke2-selinux")
    if found is None:
        raise BuildError(f"{repo}: no rke2-selinux package",
                         hint="rke2.selinux needs rke2-selinux; check upstream.rke2_rpm")
    key = http_get(f"{base}/public.key")
    return [Artifact(found.href.rsplit("/", 1)[-1], found.sha256, f"{repo}/{found.href}", "rke2-selinux"),
            Artifact("public.key", hashlib.sha256(key).hexdigest(), f"{base}/public.key", "rke2-rpm-key")]


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


# --- base source identity ------------------------------------------------------------------


# The pockets a build adds to its release (archive.pocket_suites), tracked like the release itself.
POCKETS = ("updates", "security")


def security_suite(recipe: Recipe) -> tuple[str, str] | None:
    """(archive base URL, suite) of the security updates a build of `recipe` installs, or None
    (`archive.pocket_suites`, the one place that derives the pockets)."""
    return pocket_suites(recipe).get("security")


_fetch = fetch  # GET a small document; None when it does not exist


def release_date(release: bytes) -> str | None:
    """The `Date:` field of an apt Release file (when the archive was last updated)."""
    for line in release.decode(errors="replace").splitlines():
        if line.startswith("Date:"):
            return line.partition(":")[2].strip()
        if not line.strip():
            break  # the fields end at the first blank line
    return None


def release_identity(base: str, suite: str, required: bool = True) -> dict[str, Any]:
    """`<base>/dists/<suite>/Release`: its sha256 and Date (release_sha256 None when absent)."""
    url = f"{base.rstrip('/')}/dists/{suite}/Release"
    data = _fetch(url)
    if data is None and required:
        raise BuildError(f"GET {url}: not found", hint="check source.mirror and source.suite")
    return {"mirror": base, "suite": suite, "url": url,
            "release_sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
            "date": release_date(data) if data is not None else None}


def resolve_source(cfg: FactoryConfig, recipe: Recipe, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """The identity of `recipe`'s base as it is upstream now (network, except pinned checksums).

    `cache` (URL -> result) lets one run fetch each Release or SHA256SUMS file once for all the
    recipes that share it.
    """
    memo: dict[str, Any] = cache if cache is not None else {}

    def release(base: str, suite: str, required: bool) -> dict[str, Any]:
        k = f"release {base} {suite}"
        if k not in memo:
            memo[k] = release_identity(base, suite, required)
        return dict(memo[k])

    src = recipe.source
    out: dict[str, Any]
    if isinstance(src, MmdebstrapSource):
        out = {"type": "mmdebstrap", **release(src.mirror, src.suite, True)}
    elif isinstance(src, CloudImageSource):
        out = {"type": "cloud-image", "url": src.url, "checksum": src.checksum,
               "checksum_url": src.checksum_url, "sha256": None}
        if src.checksum is not None:
            algo, _, digest = src.checksum.partition(":")
            out["sha256"] = digest if algo == "sha256" else None  # a pinned image never changes
        else:
            assert src.checksum_url is not None
            if cfg.offline:
                raise UserError(f"offline: cannot read {src.checksum_url} to learn the sha256 of {src.url}",
                                hint="pin source.checksum in the recipe, or lock on a connected machine")
            k = f"sums {src.checksum_url} {src.url}"
            if k not in memo:
                memo[k] = cloud_image_artifact(src.url, None, src.checksum_url).sha256
            out["sha256"] = memo[k]
    else:
        assert isinstance(src, LocalImageSource)
        out = {"type": "local-image", "image": src.image}
    pockets = pocket_suites(recipe)
    for pocket in POCKETS:
        where = pockets.get(pocket)
        out[pocket] = release(where[0], where[1], False) if where else None
    return out


def source_matches(recipe: Recipe, locked: dict[str, Any]) -> bool:
    """Whether a locked source identity was taken for what the recipe names now."""
    src = recipe.source
    if locked.get("type") != src.type:
        return False
    if isinstance(src, MmdebstrapSource):
        same = (locked.get("mirror"), locked.get("suite")) == (src.mirror, src.suite)
    elif isinstance(src, CloudImageSource):
        same = (locked.get("url"), locked.get("checksum"), locked.get("checksum_url")) == \
            (src.url, src.checksum, src.checksum_url)
    else:
        same = locked.get("image") == src.image
    pockets = pocket_suites(recipe)
    for pocket in POCKETS:
        if pocket not in locked:
            continue  # locked before the pocket was tracked: the build key says it is unknown
        entry = locked.get(pocket)
        pair = (entry.get("mirror"), entry.get("suite")) if isinstance(entry, dict) else None
        same = same and pair == pockets.get(pocket)
    return same


def describe_source(src: dict[str, Any] | None) -> str:
    """One line for diffs and reasons."""
    if not src:
        return "unknown"
    if src.get("type") == "cloud-image":
        name = str(src.get("url", "")).rsplit("/", 1)[-1]
        return f"{name} sha256 {str(src.get('sha256') or src.get('checksum'))[:12]}"
    if src.get("type") == "local-image":
        return f"local image {src.get('image')}"
    return describe_release(src)


def describe_release(rel: dict[str, Any] | None) -> str:
    if not rel:
        return "none"
    if rel.get("release_sha256") is None:
        return f"{rel.get('suite')} (not served)"
    return f"{rel.get('suite')} Release {str(rel['release_sha256'])[:12]} ({rel.get('date') or 'no Date'})"


# --- whole entries ---------------------------------------------------------------------------


def resolve(cfg: FactoryConfig, recipe: Recipe, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fresh lock entry for `recipe` (network: channel server, sums files, install.sh, Release)."""
    entry, warnings = resolve_entry(cfg, recipe, previous)
    for w in warnings:
        log.warning("%s: %s", recipe.name, w)
    return entry


def resolve_entry(cfg: FactoryConfig, recipe: Recipe, previous: dict[str, Any] | None = None,
                  cache: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """`resolve` plus the warnings: RKE2/Zarf failures raise, a base source that cannot be
    resolved does not (one unreachable publisher must not block locking the other recipes); the
    previously locked identity is kept if it is still for the same source, else none is recorded
    (unknown: the nightly plan rebuilds it)."""
    entry = _resolve_artifacts(cfg, recipe)
    warnings: list[str] = []
    try:
        entry["source"] = resolve_source(cfg, recipe, cache)
    except ImageFactoryError as e:
        kept = (previous or {}).get("source")
        if isinstance(kept, dict) and source_matches(recipe, kept):
            entry["source"] = kept
            warnings.append(f"base source not resolved ({e}); keeping the locked one")
        else:
            warnings.append(f"base source not resolved ({e}); its build key stays unknown (rebuild)")
    return entry, warnings


def _resolve_artifacts(cfg: FactoryConfig, recipe: Recipe) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": input_key(recipe), "artifacts": []}
    if recipe.rke2:
        version = resolve_rke2_version(cfg, recipe.rke2)
        check_rke2_release(recipe, version)
        entry["rke2"] = {"version": version, "channel": recipe.rke2.channel, "arch": recipe.rke2.arch}
        entry["artifacts"] += [a.as_dict() for a in rke2_artifacts(cfg, recipe.rke2, version)]
        if recipe.rke2.selinux and recipe.os.family in RPM_SITE_INFIX:
            entry["artifacts"] += [a.as_dict() for a in rke2_selinux_artifacts(cfg, recipe)]
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
    osrc, nsrc = old.get("source"), new.get("source")
    if _identity(osrc) != _identity(nsrc):
        lines.append(f"source: {describe_source(osrc)} -> {describe_source(nsrc)}")
    for pocket in POCKETS:
        opk, npk = (osrc or {}).get(pocket), (nsrc or {}).get(pocket)
        if _identity(opk) != _identity(npk):
            lines.append(f"{pocket}: {describe_release(opk)} -> {describe_release(npk)}")
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


def _identity(src: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if not src:
        return None
    return (src.get("type"), src.get("mirror"), src.get("suite"), src.get("release_sha256"), src.get("url"),
            src.get("sha256"), src.get("checksum"), src.get("image"))
