"""Sites, from the factory's side: disconnected places that hold images, what they acknowledged
holding, and plans of what they lack.

A site is a record in `<workdir>/sites/<name>.json` - its name, where its store is, and what it
*acknowledged* holding (images it reassembled and verified: its `acknowledgement.json`), never
what was merely sent. The chunks a site holds are those of the images it acknowledged (their
indexes are in the factory's catalogue store), so a plan needs no list of hashes from the site.
The site's own side is `sitestore`; what carries a plan's delta is `bundles` (a file) and
`sync` (the network).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..catalogue import signing
from ..errors import UserError
from ..fsutil import atomic_write
from . import chunks as ch
from .sitestore import ACK_KIND, now

log = logging.getLogger(__name__)

SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _site_key(pem: bytes | None, name: str) -> str | None:
    """A site's public key (PEM, as `site init` wrote it), checked to be one."""
    if pem is None:
        return None
    signing.load_public_key_bytes(pem, f"--site-key of site '{name}'")
    return pem.decode().strip() + "\n"


def check_site_name(name: str) -> str:
    if not SITE_NAME.match(name):
        raise UserError(f"site name '{name}' is not valid", hint="lower-case letters, digits and '-', "
                        "at most 63 characters, starting with a letter or digit")
    return name


# --- the factory's view ---------------------------------------------------------------------------


@dataclass
class Site:
    name: str
    store: str  # where the site keeps its store (a directory at the site); informational
    created: str
    acknowledged: list[str] = field(default_factory=list)  # NAME:VERSION the site verified
    acknowledged_at: str | None = None
    site_public_key: str | None = None  # PEM: the site's acknowledgements must be signed by it

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "store": self.store, "created": self.created,
                "acknowledged": self.acknowledged, "acknowledged_at": self.acknowledged_at,
                "site_public_key": self.site_public_key}


class Sites:
    """The factory's site records: `<workdir>/sites/<name>.json`."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "sites"

    def _path(self, name: str) -> Path:
        return self.dir / f"{check_site_name(name)}.json"

    def add(self, name: str, store: str, site_key_pem: bytes | None = None) -> Site:
        path = self._path(name)
        if path.exists():
            raise UserError(f"site '{name}' exists", hint="'imagefactory site show NAME'; remove it first")
        site = Site(name, store, now(), site_public_key=_site_key(site_key_pem, name))
        self._write(site)
        return site

    def get(self, name: str) -> Site:
        path = self._path(name)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"no site named '{name}'", hint="'imagefactory site list'; "
                            "'imagefactory site add NAME --store DIR'") from None
        return Site(d["name"], d["store"], d["created"], list(d.get("acknowledged") or []),
                    d.get("acknowledged_at"), d.get("site_public_key"))

    def list(self) -> list[Site]:
        return [self.get(p.stem) for p in sorted(self.dir.glob("*.json"))] if self.dir.is_dir() else []

    def remove(self, name: str) -> None:
        self.get(name)
        self._path(name).unlink()

    def _write(self, site: Site) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(site.name), json.dumps(site.as_dict(), indent=2) + "\n")

    def acknowledge(self, name: str, ack: dict[str, Any], site_key_pem: bytes | None = None) -> Site:
        """Record what the site says it holds (an acknowledgement written by its `site import`),
        checked against the site's key (given now, or recorded earlier) when it has one. An
        acknowledgement older than the recorded one is refused (a replay would make the factory
        think the site holds less, or more, than it does)."""
        site = self.get(name)
        if ack.get("kind") != ACK_KIND or ack.get("site") != name:
            raise UserError(f"not an acknowledgement of site '{name}' (it says {ack.get('site')!r})",
                            hint="use the acknowledgement.json that 'site import' wrote at that site")
        if site_key_pem is not None:
            given = _site_key(site_key_pem, name)
            if site.site_public_key not in (None, given):
                raise UserError(f"--site-key: site '{name}' already has another key",
                                hint="a site's key changes only by removing and adding the site again")
            site.site_public_key = given
        if site.site_public_key is None:
            log.warning("site %s: its acknowledgement is taken unverified (no site key: 'site ack %s FILE "
                        "--site-key SITE.pub' records the key 'site init' made)", name, name)
        else:
            key = signing.load_public_key_bytes(site.site_public_key.encode(), f"site {name}: its key")
            try:
                signing.verify(ack, key, f"the acknowledgement of site '{name}'")
            except signing.SignatureError:
                raise UserError(f"the acknowledgement of site '{name}' is not signed by the site's key",
                                hint="it was changed after the site wrote it, or comes from elsewhere: "
                                     "nothing was recorded") from None
        at = str(ack.get("at") or "")
        images = ack.get("images")
        if site.acknowledged_at and (at < site.acknowledged_at or
                                     (at == site.acknowledged_at and images != site.acknowledged)):
            raise UserError(f"the acknowledgement of site '{name}' ({at}) is older than the one recorded "
                            f"({site.acknowledged_at})", hint="carry back the newest acknowledgement.json")
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise UserError("the acknowledgement lists no images")
        site.acknowledged = sorted(set(images))
        site.acknowledged_at = at or now()
        self._write(site)
        return site


# --- plans --------------------------------------------------------------------------------------


@dataclass
class ImagePlan:
    ref: str
    disk_bytes: int
    stored_bytes: int  # all of its chunks, compressed: what a site without anything needs
    new_chunks: int
    chunk_bytes: int  # compressed bytes of the chunks the site lacks (not counted twice)
    meta_bytes: int  # the signed index and the chunk table

    @property
    def bytes(self) -> int:
        return self.chunk_bytes + self.meta_bytes


@dataclass
class Plan:
    site: str
    base: list[str]  # the acknowledged images the delta is against
    images: list[ImagePlan]
    missing: dict[str, ch.Chunk]  # every chunk to send, once
    indexes: list[ch.ChunkedImage]
    trust_bytes: int = 0  # the catalogue's TUF metadata and targets that go with the images

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.images) + self.trust_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"site": self.site, "base": self.base, "bytes": self.bytes, "chunks": len(self.missing),
                "trust_bytes": self.trust_bytes,
                "images": [{"ref": i.ref, "bytes": i.bytes, "new_chunks": i.new_chunks,
                            "chunk_bytes": i.chunk_bytes, "meta_bytes": i.meta_bytes,
                            "disk_bytes": i.disk_bytes, "full_bytes": i.stored_bytes} for i in self.images]}


def plan(site: Site, images: list[ch.ChunkedImage], held: Iterable[ch.ChunkedImage],
         trust_bytes: int = 0) -> Plan:
    """What `site` needs for `images`, given the indexes of the images it acknowledged (`held`)."""
    have: set[str] = set()
    for h in held:
        have.update(c.sha256 for c in h.chunks)
    missing: dict[str, ch.Chunk] = {}
    out = []
    for img in images:
        unique = img.unique()
        new = {s: c for s, c in unique.items() if s not in have and s not in missing}
        missing.update(new)
        meta = len(json.dumps(img.raw, indent=1).encode()) + img.table_bytes
        out.append(ImagePlan(img.ref, img.size, sum(c.csize for c in unique.values()), len(new),
                             sum(c.csize for c in new.values()), meta))
    return Plan(site.name, list(site.acknowledged), out, missing, images, trust_bytes)


