"""Warm rebuilds: the .deb files a build downloaded, kept in the workdir's content-addressed cache
and handed to the next bootstrap - only under the exact SHA256 the signed archive index gives.

apt trusts a file it finds in `/var/cache/apt/archives` by its name and size alone (it does not
hash a package it did not download), so nothing reaches that directory from here unless it hashes
to the `SHA256` of the `Packages` stanza that names it, from an index whose own hash is listed in
a `Release` file that `archive.verify` checked with the recipe's keyring. The cache itself is the
artifact cache (`<workdir>/cache/sha256/<hex>`): a package is stored once, whatever recipe or
release pocket brought it, and is re-hashed each time it is handed out (a corrupt entry is
dropped, and apt downloads that package again).

The indexes are cached the same way (keyed by the hash the Release file lists), so a rebuild
against an unchanged archive downloads its Release files and nothing else.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import shlex
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import archive
from .artifacts import Cache, ChecksumMismatch, sha256_file
from .errors import BuildError

log = logging.getLogger(__name__)

# What apt escapes in the file names it gives downloaded packages (apt-pkg QuoteString with the
# extra characters "_:" for the name and version, "_:." for the architecture).
_ALWAYS = {"%"}


def apt_quote(text: str, bad: str) -> str:
    return "".join(f"%{ord(c):02x}" if c in bad or c in _ALWAYS or ord(c) <= 0x20 or ord(c) >= 0x7F
                   else c for c in text)


def archive_name(package: str, version: str, arch: str) -> str:
    """The file name apt stores a package under in /var/cache/apt/archives."""
    return f"{apt_quote(package, '_:')}_{apt_quote(version, '_:')}_{apt_quote(arch, '_:.')}.deb"


def release_files(release: bytes) -> dict[str, tuple[str, int]]:
    """The `SHA256:` list of a Release file: path -> (sha256, size)."""
    out: dict[str, tuple[str, int]] = {}
    inside = False
    for line in release.decode(errors="replace").splitlines():
        if not line.startswith(" "):
            inside = line.strip() == "SHA256:"
            continue
        if inside:
            parts = line.split()
            if len(parts) == 3:
                out[parts[2]] = (parts[0], int(parts[1]))
    return out


def _fields(stanza: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in stanza.splitlines():
        if line[:1] not in (" ", "\t", "") and ":" in line:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def parse_packages(text: str, wanted: set[str] | None = None) -> Iterator[tuple[str, str]]:
    """(apt archive name, sha256) of each stanza of a Packages index; with `wanted`, of the
    stanzas whose SHA256 is in it (a full index has 60,000 stanzas, a cache a few hundred)."""
    for stanza in text.split("\n\n"):
        at = stanza.find("SHA256: ")
        if at < 0 or (at > 0 and stanza[at - 1] != "\n"):
            continue
        sha = stanza[at + 8:at + 72]
        if wanted is not None and sha not in wanted:
            continue
        f = _fields(stanza)
        if f.get("SHA256") == sha and {"Package", "Version", "Architecture"} <= f.keys():
            yield archive_name(f["Package"], f["Version"], f["Architecture"]), sha


@dataclass
class Index:
    """apt archive file name -> the sha256 the signed index gives it."""

    hashes: dict[str, str]
    fetched_bytes: int  # index bytes downloaded (0 when every index was cached)


def _index_paths(listed: dict[str, tuple[str, int]], component: str,
                 arch: str) -> tuple[str, str, int] | None:
    # Debian's security archive lists its components as updates/<component>
    for prefix in ("", "updates/"):
        for ext in (".xz", ".gz", ""):
            path = f"{prefix}{component}/binary-{arch}/Packages{ext}"
            if path in listed:
                return path, *listed[path]
    return None


def index_urls(suite: archive.Suite, path: str, sha256: str) -> list[str]:
    """Where to GET one index file the Release lists: by its hash first when the archive says
    `Acquire-By-Hash: yes` (as apt does: a mirror that syncs between our Release and our GET
    still serves the file that Release names), then by its name."""
    base = f"{suite.mirror.rstrip('/')}/dists/{suite.suite}"
    plain = f"{base}/{path}"
    if suite.fields.get("Acquire-By-Hash", "").lower() != "yes":
        return [plain]
    return [f"{base}/{path.rpartition('/')[0]}/by-hash/SHA256/{sha256}", plain]


def _fetch_index(suite: archive.Suite, path: str, sha256: str) -> tuple[str, bytes | None]:
    urls = index_urls(suite, path, sha256)
    for url in urls:
        data = archive.fetch(url, timeout=120)
        if data is not None:
            return url, data
        log.info("package cache: %s not served", url)
    return urls[-1], None


def load_index(suites: Iterable[archive.Suite], components: Iterable[str], arch: str, cache: Cache,
               wanted: set[str] | None = None) -> Index:
    """The package hashes of `suites` (verified Release files) for `components` and `arch`;
    with `wanted`, only those of the packages whose hash is in it (what the cache holds)."""
    hashes: dict[str, str] = {}
    conflicts: set[str] = set()
    fetched = 0
    for suite in suites:
        listed = release_files(suite.release)
        for component in components:
            found = _index_paths(listed, component, arch)
            if found is None:
                log.info("package cache: %s %s lists no %s index for %s", suite.mirror, suite.suite,
                         component, arch)
                continue
            path, sha, _size = found
            if not cache.has(sha) or sha256_file(cache.path(sha)) != sha:
                url, data = _fetch_index(suite, path, sha)
                if data is None:
                    raise BuildError(f"GET {url}: not found, though its Release file lists it",
                                     hint="the mirror is incomplete or being updated; try again")
                tmp = cache.tmpfile()
                tmp.write_bytes(data)
                try:
                    cache.put(tmp, sha, url)  # checked against the signed Release file
                except ChecksumMismatch:
                    if "/by-hash/" in url:
                        raise
                    raise ChecksumMismatch(
                        f"{url}: sha256 mismatch against {suite.suite}'s signed Release file",
                        hint="the mirror does not publish by-hash and may be mid-update; try again "
                             "(if it persists, the mirror is corrupt or tampered with)") from None
                fetched += len(data)
            raw = cache.path(sha).read_bytes()
            data = lzma.decompress(raw) if path.endswith(".xz") else \
                gzip.decompress(raw) if path.endswith(".gz") else raw
            for name, digest in parse_packages(data.decode("utf-8", errors="replace"), wanted):
                    if hashes.setdefault(name, digest) != digest:
                        conflicts.add(name)  # two suites, one name, two contents: trust neither
    for name in conflicts:
        hashes.pop(name, None)
    return Index(hashes, fetched)


@dataclass
class Reuse:
    files: int = 0
    bytes: int = 0


def stage(index: Index, cache: Cache, dest: Path) -> Reuse:
    """Put every cached package the index names into `dest` under its apt name (hard links into
    the cache), each re-hashed first. Returns what was staged."""
    dest.mkdir(parents=True, exist_ok=True)
    got = Reuse()
    for name, sha in index.hashes.items():
        if not cache.has(sha):
            continue
        src = cache.path(sha)
        if sha256_file(src) != sha:
            log.warning("package cache: %s is corrupt; dropped (apt downloads %s again)", src, name)
            src.unlink(missing_ok=True)
            continue
        os.link(src, dest / name)
        got.files += 1
        got.bytes += src.stat().st_size
    return got


def collect(out: Path, cache: Cache, known: set[str]) -> Reuse:
    """Store the packages a bootstrap left in `out` (its /var/cache/apt/archives, synced out)
    in the cache by their content hash; returns what was new (downloaded by this build). apt
    checked each download against the index before installing it; the next build checks it
    again against its own index before using it."""
    new = Reuse()
    for f in sorted(out.glob("*.deb")):
        if not f.is_file() or f.is_symlink():
            continue
        sha = sha256_file(f)
        if sha in known:
            continue
        new.files += 1
        new.bytes += f.stat().st_size
        if not cache.has(sha):
            cache.put(f, sha, f.name)
    shutil.rmtree(out, ignore_errors=True)
    return new


def hooks(staged: Path, out: Path, variant: str) -> list[str]:
    """mmdebstrap options that put `staged` into the root's apt cache before anything is
    downloaded and copy the cache out to `out` once everything is installed (the `extract`
    variant installs nothing and runs no customize hook: there, once everything is extracted)."""
    out.mkdir(parents=True, exist_ok=True)
    after = "extract" if variant == "extract" else "customize"
    return [
        # keep the packages in /var/cache/apt/archives until the customize hook has taken them;
        # mmdebstrap's cleanup empties the directory afterwards, so the image holds none
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1/var/cache/apt/archives"',
        f"--setup-hook=sync-in {shlex.quote(str(staged))} /var/cache/apt/archives/",
        f"--{after}-hook=sync-out /var/cache/apt/archives {shlex.quote(str(out))}",
    ]


def cached_hashes(cache: Cache) -> set[str]:
    """The hashes the cache holds (by name: `stage` re-hashes what it hands out)."""
    d = cache.root / "sha256"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()
