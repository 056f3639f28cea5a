"""Incremental bootstraps: the root mmdebstrap made, kept in the workdir under a key of every
input that decides it, and restored instead of bootstrapping again.

The package cache (`debcache`) takes the downloads out of a warm rebuild; what is left of the
bootstrap is dpkg unpacking and configuring a few hundred packages, which costs as much the second
time as the first. mkosi answers the same problem with `Incremental=`: it keeps the tree as it was
after package installation and starts the next build from it. We do the same, with a stricter key:
mkosi keys on the configuration only (a repository update needs `-ff`); here the key also holds
the content of every verified `Release` file the bootstrap resolved against, so an archive update
(a security fix) is a different key, and the next build bootstraps afresh.

The key (`Inputs.key`): mmdebstrap's version, its options (variant, components, include list, apt
options), the suite and mirror lines, the keyring's content, `SOURCE_DATE_EPOCH`, and the
`SHA256:` lists of the Release files - which name the hash of every Packages index, and so the
exact package set apt resolves. Before storing, the Release files apt itself used (copied out of
the root by a hook) must be the ones we keyed on: a mirror that moved between our check and
mmdebstrap's download (a round-robin archive whose hosts are out of step) would otherwise file a
root under the wrong key. A stored root is a POSIX tar (ownership, modes, sub-second mtimes,
xattrs such as file capabilities) with its sha256 beside it; a corrupt or vanished entry is
dropped with a warning and the build bootstraps as if it had never been there.

Each recipe keeps one entry (its newest): a nightly that sees a new archive replaces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .archive import Suite
from .artifacts import sha256_file
from .debcache import release_files
from .errors import BuildError
from .run import run

log = logging.getLogger(__name__)

FORMAT = 2  # bump when what a stored root holds changes (2: bootstrapped with SOURCE_DATE_EPOCH)


def release_fingerprint(release: bytes) -> str:
    """The hash of a Release file's `SHA256:` list (signed or not: the list reads the same)."""
    listed = sorted((path, sha, size) for path, (sha, size) in release_files(release).items())
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


@dataclass(frozen=True)
class Inputs:
    """Everything that decides the root mmdebstrap makes."""

    options: tuple[str, ...]  # mmdebstrap options, without the keyring path and the hooks
    suite: str
    mirrors: tuple[str, ...]
    keyring: tuple[Path, ...]  # its files (hashed: the path is per build)
    releases: tuple[Suite, ...]
    tool_version: str
    source_date_epoch: int | None = None  # what mmdebstrap and the packages' scripts were given

    def key(self) -> str:
        doc = {
            "format": FORMAT, "tool": self.tool_version, "options": list(self.options),
            "suite": self.suite, "mirrors": list(self.mirrors),
            "keyring": sorted(sha256_file(f) for f in self.keyring),
            "releases": sorted(release_fingerprint(s.release) for s in self.releases),
            "source_date_epoch": self.source_date_epoch,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def tool_version() -> str:
    return run(["mmdebstrap", "--version"], quiet=True).stdout.strip()


class RootCache:
    """`<dir>/<name>-<key>.tar` and its `.sha256`: one entry per recipe name."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _tar(self, name: str, key: str) -> Path:
        return self.dir / f"{name}-{key}.tar"

    def restore(self, name: str, key: str, root: Path) -> bool:
        """Fill the empty directory `root` from the entry; False when there is none usable
        (`root` is left empty then)."""
        tar = self._tar(name, key)
        sums = tar.with_suffix(".tar.sha256")
        try:
            expected = sums.read_text().strip()
            if sha256_file(tar) != expected:
                log.warning("root cache: %s is corrupt; dropped (bootstrapping afresh)", tar)
                self._drop(tar)
                return False
        except FileNotFoundError:
            return False
        root.mkdir(mode=0o755, parents=True, exist_ok=True)  # mmdebstrap would have made it
        try:
            run(["tar", "--extract", "--file", tar, "--directory", root, "--numeric-owner",
                 "--same-permissions", "--same-owner", "--xattrs", "--xattrs-include=*", "--acls"])
        except BuildError as e:
            log.warning("root cache: %s could not be restored (%s); bootstrapping afresh", tar, e.message)
            _empty(root)
            return False
        return True

    def store(self, name: str, key: str, root: Path) -> int:
        """Keep `root` under `key` (replacing the recipe's older entry); returns the tar's size."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tar = self._tar(name, key)
        tmp = self.dir / f".{tar.name}.{os.getpid()}.tmp"
        try:
            # --sort=name: the same root gives the same tar; posix format keeps sub-second mtimes
            run(["tar", "--create", "--file", tmp, "--directory", root, "--format=posix",
                 "--numeric-owner", "--sort=name", "--xattrs", "--xattrs-include=*", "--acls", "."])
            tmp.with_suffix(".sha256").write_text(sha256_file(tmp) + "\n")
            os.replace(tmp.with_suffix(".sha256"), tar.with_suffix(".tar.sha256"))
            os.replace(tmp, tar)
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_suffix(".sha256").unlink(missing_ok=True)
        for old in self.dir.glob(f"{name}-*.tar"):
            # another recipe's name may start with ours plus a dash: its keys are not 64 hex digits
            if old != tar and len(old.stem) == len(tar.stem):
                self._drop(old)
        return tar.stat().st_size

    @staticmethod
    def _drop(tar: Path) -> None:
        tar.unlink(missing_ok=True)
        tar.with_suffix(".tar.sha256").unlink(missing_ok=True)


@dataclass
class Outcome:
    key: str
    hit: bool  # the root came from the cache
    stored: int | None = None  # bytes kept for the next build (None: nothing kept)


def bootstrap(cache: RootCache | None, name: str, inputs: Inputs, root: Path, scratch: Path, variant: str,
              mmdebstrap: Callable[[list[str]], None]) -> Outcome:
    """Fill `root` from the cache entry of `inputs`, or run `mmdebstrap(extra_options)` and keep
    what it made when apt resolved against the Release files of the key. Without a cache (the
    factory setting `root_cache: false`), just run mmdebstrap."""
    key = inputs.key()
    if cache is None:
        mmdebstrap([])
        return Outcome(key, hit=False)
    if cache.restore(name, key, root):
        log.info("root cache: restored the root an earlier bootstrap made from the same inputs (key %s)",
                 key[:12])
        return Outcome(key, hit=True)
    used = scratch / "releases-used"
    mmdebstrap(release_hook(used, variant))
    if not used_what_we_keyed(used, inputs.releases):
        log.warning("root cache: the archive changed while bootstrapping (apt used other Release files "
                    "than the ones checked); this root is not kept")
        return Outcome(key, hit=False)
    size = cache.store(name, key, root)
    log.info("root cache: kept this root for the next build from the same inputs (%.1f MiB)", size / 2**20)
    return Outcome(key, hit=False, stored=size)


def release_hook(out: Path, variant: str) -> list[str]:
    """An mmdebstrap option that copies the Release files apt used out of the root's lists."""
    out.mkdir(parents=True, exist_ok=True)
    after = "extract" if variant == "extract" else "customize"
    script = f'for f in "$1"/var/lib/apt/lists/*Release; do cp "$f" {shlex.quote(str(out))}/; done'
    return [f"--{after}-hook={script}"]


def used_what_we_keyed(out: Path, suites: Sequence[Suite]) -> bool:
    """Whether the Release files apt used (copied to `out` by `release_hook`) are exactly the
    ones the key was made from."""
    used = {release_fingerprint(f.read_bytes()) for f in out.iterdir() if f.is_file()}
    return used == {release_fingerprint(s.release) for s in suites}


def _empty(root: Path) -> None:
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
