"""Reading an RPM repository's metadata (createrepo's `repodata/`): the newest build of a package
and the sha256 the repository gives it - what `lock update` pins for rke2-selinux.

`repomd.xml` names the `primary` metadata file and its checksum; `primary.xml(.gz|.zst|.xz)` lists
every package with its epoch/version/release, arch, `location href` and checksum (`pkgid`). The
primary file is used only if it has the checksum repomd.xml gives it. Versions compare as rpm's
`rpmvercmp` does (alternating digit and letter segments, `~` sorts before anything).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import lzma
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from .errors import BuildError

REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"


@dataclass(frozen=True)
class RpmPackage:
    name: str
    epoch: int
    version: str
    release: str
    arch: str
    href: str
    sha256: str

    @property
    def evr(self) -> str:
        vr = f"{self.version}-{self.release}"
        return f"{self.epoch}:{vr}" if self.epoch else vr


def _segments(text: str) -> list[str]:
    return re.findall(r"~|\^|[0-9]+|[A-Za-z]+", text)


def vercmp(a: str, b: str) -> int:
    """rpm's rpmvercmp: -1, 0 or 1."""
    if a == b:
        return 0
    sa, sb = _segments(a), _segments(b)
    while sa or sb:
        x, y = (sa.pop(0) if sa else None), (sb.pop(0) if sb else None)
        if x == "~" or y == "~":
            if x != y:
                return -1 if x == "~" else 1
            continue
        if x == "^" or y == "^":
            if x is None:
                return -1
            if y is None:
                return 1
            if x != y:  # "1.0^git1" is newer than "1.0" but older than "1.0.1"
                return -1 if x == "^" else 1
            continue
        if x is None or y is None:
            return -1 if x is None else 1
        if x.isdigit() != y.isdigit():
            return 1 if x.isdigit() else -1  # a number is newer than letters
        if x.isdigit():
            xi, yi = int(x), int(y)
            if xi != yi:
                return 1 if xi > yi else -1
        elif x != y:
            return 1 if x > y else -1
    return 0


def evrcmp(a: RpmPackage, b: RpmPackage) -> int:
    """Epoch, then version, then release, each as rpmvercmp compares them."""
    if a.epoch != b.epoch:
        return 1 if a.epoch > b.epoch else -1
    return vercmp(a.version, b.version) or vercmp(a.release, b.release)


def _xml(data: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(data)  # expat >= 2.4.1 refuses entity expansion bombs
    except ET.ParseError as e:
        raise BuildError(f"{what}: not valid XML ({e})") from None


def _decompress(data: bytes, href: str) -> bytes:
    if href.endswith(".gz"):
        return gzip.decompress(data)
    if href.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if href.endswith(".xz"):
        return lzma.decompress(data)
    return data


def packages(base: str, get: Callable[[str], bytes]) -> list[RpmPackage]:
    """Every package of the repository at `base` (`get(url)` fetches)."""
    base = base.rstrip("/")
    repomd = _xml(get(f"{base}/repodata/repomd.xml"), f"{base}/repodata/repomd.xml")
    primary = next((d for d in repomd.iter(f"{REPO_NS}data") if d.get("type") == "primary"), None)
    loc = primary.find(f"{REPO_NS}location") if primary is not None else None
    csum = primary.find(f"{REPO_NS}checksum") if primary is not None else None
    if loc is None or csum is None or not loc.get("href"):
        raise BuildError(f"{base}/repodata/repomd.xml names no primary metadata")
    if csum.get("type") != "sha256" or not csum.text:
        raise BuildError(f"{base}/repodata/repomd.xml: the primary metadata has no sha256 checksum")
    href = str(loc.get("href"))
    raw = get(f"{base}/{href}")
    if hashlib.sha256(raw).hexdigest() != csum.text.strip():
        raise BuildError(f"{base}/{href}: does not match the checksum in repomd.xml",
                         hint="the repository is being updated or was tampered with; try again later")
    root = _xml(_decompress(raw, href), f"{base}/{href}")
    out = []
    for p in root.iter(f"{COMMON_NS}package"):
        name, arch = p.findtext(f"{COMMON_NS}name"), p.findtext(f"{COMMON_NS}arch")
        ver, ploc, pcs = p.find(f"{COMMON_NS}version"), p.find(f"{COMMON_NS}location"), \
            p.find(f"{COMMON_NS}checksum")
        if not (name and arch and ver is not None and ploc is not None and pcs is not None):
            continue
        if pcs.get("type") != "sha256" or not pcs.text:
            continue  # only sha256 is trusted for a lock
        out.append(RpmPackage(name, int(ver.get("epoch") or 0), str(ver.get("ver")), str(ver.get("rel")),
                              arch, str(ploc.get("href")), pcs.text.strip()))
    return out


def newest(pkgs: list[RpmPackage], name: str, arch: str = "noarch") -> RpmPackage | None:
    found = [p for p in pkgs if p.name == name and p.arch == arch]
    return max(found, key=functools.cmp_to_key(evrcmp)) if found else None
