"""Sites: disconnected places that hold images, what they acknowledged holding, plans of what
they lack, and bundles that carry exactly that (sneakernet: a file on a USB disk).

Factory side: a site is a record in `<workdir>/sites/<name>.json` - its name, where its store is
(informational for bundles), and what it *acknowledged* holding (images it reassembled and
verified), never what was merely sent. The chunks a site holds are those of the images it
acknowledged (their indexes are in the factory's catalogue store), so a plan needs no list of
hashes from the site.

Site side: the site's store is a directory (`site init`): `site.json` (its name, the factory's
public key it trusts, the images it holds), the chunks, tables and signed chunk indexes under the
factory's key names, and each image's disk at `images/<name>/<version>/disk.raw`. `site import`
verifies the bundle's signature and that it is for this site, stores each chunk only after its
content matched its hash, reassembles every image and checks the disk against the signed digests
before the disk appears; then it records the image in `site.json` and writes the
acknowledgement the operator carries back (`site ack`).

Bundle: a POSIX tar whose first member is `bundle.json` (signed: site, images, the acknowledged
images the delta is against, what it holds), then the signed chunk indexes, their tables and the
chunks the site lacks. Members are read one by one and only under these names: nothing in a
bundle is extracted by path.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..catalogue import signing
from ..catalogue.stores import BlobStore
from ..errors import BuildError, UserError
from ..fsutil import atomic_write
from . import chunks as ch

log = logging.getLogger(__name__)

SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
BUNDLE_KIND = "imagefactory-site-bundle"
ACK_KIND = "imagefactory-site-acknowledgement"
CHUNK_MEMBER = re.compile(r"^chunks/zstd/([0-9a-f]{64})$")
TABLE_MEMBER = re.compile(r"^chunk-tables/sha256/([0-9a-f]{64})$")
INDEX_MEMBER = re.compile(r"^chunked/([a-z0-9][a-z0-9._-]*)/([A-Za-z0-9][A-Za-z0-9._+-]*)\.json$")


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


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

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "store": self.store, "created": self.created,
                "acknowledged": self.acknowledged, "acknowledged_at": self.acknowledged_at}


class Sites:
    """The factory's site records: `<workdir>/sites/<name>.json`."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "sites"

    def _path(self, name: str) -> Path:
        return self.dir / f"{check_site_name(name)}.json"

    def add(self, name: str, store: str) -> Site:
        path = self._path(name)
        if path.exists():
            raise UserError(f"site '{name}' exists", hint="'imagefactory site show NAME'; remove it first")
        site = Site(name, store, _now())
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
                    d.get("acknowledged_at"))

    def list(self) -> list[Site]:
        return [self.get(p.stem) for p in sorted(self.dir.glob("*.json"))] if self.dir.is_dir() else []

    def remove(self, name: str) -> None:
        self.get(name)
        self._path(name).unlink()

    def _write(self, site: Site) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(site.name), json.dumps(site.as_dict(), indent=2) + "\n")

    def acknowledge(self, name: str, ack: dict[str, Any]) -> Site:
        """Record what the site says it holds (an acknowledgement written by its `site import`)."""
        site = self.get(name)
        if ack.get("kind") != ACK_KIND or ack.get("site") != name:
            raise UserError(f"not an acknowledgement of site '{name}' (it says {ack.get('site')!r})",
                            hint="use the acknowledgement.json that 'site import' wrote at that site")
        images = ack.get("images")
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise UserError("the acknowledgement lists no images")
        site.acknowledged = sorted(set(images))
        site.acknowledged_at = str(ack.get("at") or _now())
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

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.images)

    def as_dict(self) -> dict[str, Any]:
        return {"site": self.site, "base": self.base, "bytes": self.bytes, "chunks": len(self.missing),
                "images": [{"ref": i.ref, "bytes": i.bytes, "new_chunks": i.new_chunks,
                            "chunk_bytes": i.chunk_bytes, "meta_bytes": i.meta_bytes,
                            "disk_bytes": i.disk_bytes, "full_bytes": i.stored_bytes} for i in self.images]}


def plan(site: Site, images: list[ch.ChunkedImage], held: Iterable[ch.ChunkedImage]) -> Plan:
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
    return Plan(site.name, list(site.acknowledged), out, missing, images)


# --- bundles (factory side) -----------------------------------------------------------------------


def export_bundle(p: Plan, store: BlobStore, private_key: Ed25519PrivateKey, out: Path,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write the plan's delta to `out` (atomically); returns its size."""
    head = signing.sign({
        "kind": BUNDLE_KIND, "schema": 1, "site": p.site, "created": _now(), "base": p.base,
        "images": [{"ref": i.ref, "index": i.index_key, "disk_sha256": i.sha256} for i in p.indexes],
        "chunks": len(p.missing), "chunk_bytes": sum(c.csize for c in p.missing.values()),
    }, private_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, "bundle.json", json.dumps(head, indent=1).encode())
            for img in p.indexes:
                _add(tar, img.index_key, json.dumps(img.raw, indent=1).encode())
                _add(tar, ch.table_key(img.table_sha256), store.get_bytes(ch.table_key(img.table_sha256))[0])
            for sha, c in p.missing.items():
                data, _ = store.get_bytes(ch.chunk_key(sha))
                if len(data) != c.csize:
                    raise BuildError(f"chunk {sha} in {store.describe()} is {len(data)} bytes, the index "
                                     f"says {c.csize}", hint="the factory store is damaged; chunk the image "
                                     "again ('imagefactory site plan' re-chunks a damaged image)")
                _add(tar, ch.chunk_key(sha), data)
                if progress:
                    progress(len(data))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out.stat().st_size


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # the same delta is the same bytes
    tar.addfile(info, _Reader(data))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else min(len(self.data), self.pos + n)
        out = bytes(self.data[self.pos:end])
        self.pos = end
        return out


# --- the site's side ------------------------------------------------------------------------------


class SiteStore:
    """A site's store directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def record_path(self) -> Path:
        return self.root / "site.json"

    def init(self, name: str, public_key_pem: bytes) -> dict[str, Any]:
        check_site_name(name)
        if self.record_path.exists():
            raise UserError(f"{self.root} is already the store of site '{self.record()['name']}'")
        signing.load_public_key_bytes(public_key_pem, f"{self.root}: the factory's public key")
        self.root.mkdir(parents=True, exist_ok=True)
        rec = {"name": name, "created": _now(), "factory_public_key": public_key_pem.decode(), "images": {}}
        atomic_write(self.record_path, json.dumps(rec, indent=2) + "\n")
        return rec

    def record(self) -> dict[str, Any]:
        try:
            rec: dict[str, Any] = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.root} is not a site store (no site.json)",
                            hint="'imagefactory site init NAME --store DIR --public-key "
                                 "FACTORY.pub'") from None
        return rec

    def public_key(self) -> Ed25519PublicKey:
        return signing.load_public_key_bytes(str(self.record()["factory_public_key"]).encode(),
                                             f"{self.record_path}: factory_public_key")

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, data: bytes) -> None:
        try:
            atomic_write(self.path(key), data)
        except OSError as e:
            raise BuildError(f"{self.root}: cannot write {key}: {e.strerror}",
                             hint="free space on the site store (or mount it again) and import the bundle "
                                  "again: what was verified and stored is kept") from None

    def read(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise BuildError(f"{self.root}: {key} is missing",
                             hint="the site lacks a chunk its factory thought it had: acknowledge what "
                                  "the site holds ('site ack') and export again") from None

    def disk(self, ref: str) -> Path:
        name, version = ref.split(":", 1)
        return self.root / "images" / name / version / "disk.raw"

    def acknowledgement(self) -> dict[str, Any]:
        rec = self.record()
        return {"kind": ACK_KIND, "site": rec["name"], "at": _now(), "images": sorted(rec["images"])}


@dataclass
class ImportResult:
    site: str
    images: list[str]
    chunks_added: int
    chunks_present: int
    ack: Path


def import_bundle(bundle: Path, site: SiteStore) -> ImportResult:
    """Verify and apply a bundle at its site (see the module docstring)."""
    rec = site.record()
    public = site.public_key()
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            head, indexes, tables, added, present = _read_bundle(bundle, tar, site, public, rec["name"])
    except (OSError, tarfile.TarError) as e:
        raise UserError(f"{bundle}: not a readable bundle ({e})",
                        hint="a truncated or damaged file; the chunks it did hold are kept (each verified), "
                             "import the whole bundle again") from None
    if head is None:
        raise UserError(f"{bundle}: empty bundle")
    listed = {str(i["index"]): i for i in head["images"]}
    if set(listed) != set(indexes):
        raise UserError(f"{bundle}: its images ({', '.join(sorted(indexes))}) are not the ones its signed "
                        f"head lists ({', '.join(sorted(listed))})", hint="the bundle was altered")
    verified = []
    for key, doc in indexes.items():
        tkey = str(doc.get("table", {}).get("key", ""))
        table = tables.get(tkey) or (site.read(tkey) if TABLE_MEMBER.match(tkey) else b"")
        img = ch.parse_index(doc, table, public, f"{bundle}: {key}")
        if img.index_key != key or img.sha256 != listed[key]["disk_sha256"]:
            raise UserError(f"{bundle}: {key} is not the image its signed head names")
        verified.append((img, doc, table))
    done = []
    for img, doc, table in verified:
        dest = site.disk(img.ref)
        dest.parent.mkdir(parents=True, exist_ok=True)
        ch.reassemble(img, lambda sha: site.read(ch.chunk_key(sha)), dest)
        site.put(ch.table_key(img.table_sha256), table)
        site.put(img.index_key, json.dumps(doc, indent=1).encode())
        rec["images"][img.ref] = {"disk_sha256": img.sha256, "disk_size": img.size, "imported": _now()}
        atomic_write(site.record_path, json.dumps(rec, indent=2) + "\n")
        done.append(img.ref)
        log.info("site %s: %s verified and visible at %s", rec["name"], img.ref, dest)
    ack = site.root / "acknowledgement.json"
    atomic_write(ack, json.dumps(site.acknowledgement(), indent=2) + "\n")
    return ImportResult(rec["name"], done, added, present, ack)


_Read = tuple[dict[str, Any] | None, dict[str, dict[str, Any]], dict[str, bytes], int, int]


def _read_bundle(bundle: Path, tar: tarfile.TarFile, site: SiteStore, public: Ed25519PublicKey,
                 name: str) -> _Read:
    """Read the members one by one: the signed head first, chunks stored once verified, the
    indexes and tables kept for the checks after. Returns (head, indexes, tables, added, present)."""
    head: dict[str, Any] | None = None
    indexes: dict[str, dict[str, Any]] = {}
    tables: dict[str, bytes] = {}
    added = present = 0
    for member in tar:
        f = tar.extractfile(member) if member.isfile() else None
        if f is None:
            raise UserError(f"{bundle}: unexpected member {member.name!r} (not a regular file)")
        if head is None:
            head = _bundle_head(bundle, member.name, f, public, name)
            continue
        data = _read_member(f, _limit(member.name), member.name)
        if m := CHUNK_MEMBER.match(member.name):
            if site.has(member.name):
                present += 1
                continue
            # checked before it is stored: a chunk's name is its uncompressed content's sha256
            ch.unpack_chunk(m.group(1), data)
            site.put(member.name, data)
            added += 1
        elif TABLE_MEMBER.match(member.name):
            tables[member.name] = data
        elif INDEX_MEMBER.match(member.name):
            indexes[member.name] = _json(data, f"{bundle}: {member.name}")
        else:
            raise UserError(f"{bundle}: unexpected member {member.name!r}",
                            hint="not a bundle written by 'imagefactory site export'; nothing was used")
    return head, indexes, tables, added, present


def _bundle_head(bundle: Path, name: str, f: IO[bytes], public: Ed25519PublicKey,
                 site: str) -> dict[str, Any]:
    if name != "bundle.json":
        raise UserError(f"{bundle}: the first member is {name!r}, not bundle.json",
                        hint="not a bundle written by 'imagefactory site export'")
    head = _json(_read_member(f, 1 << 20, name), f"{bundle}: bundle.json")
    if head.get("kind") != BUNDLE_KIND:
        raise UserError(f"{bundle}: not a site bundle")
    signing.verify(head, public, f"{bundle}: bundle.json")
    if head.get("site") != site:
        raise UserError(f"{bundle}: the bundle is for site '{head.get('site')}', this is site '{site}'",
                        hint="nothing was imported; use the bundle exported for this site")
    return head


def _limit(name: str) -> int:
    """The most a member may hold: a chunk compresses to about its size at worst, a table has 40
    bytes a chunk (64 MiB: a 100 GiB disk), an index is a page of JSON."""
    if CHUNK_MEMBER.match(name):
        return ch.MAX_SIZE + 4096
    return 64 << 20 if TABLE_MEMBER.match(name) else 1 << 20


def _read_member(f: IO[bytes], limit: int, name: str) -> bytes:
    data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"bundle member {name!r} is larger than any such member can be ({limit} bytes)",
                        hint="not a bundle written by 'imagefactory site export'; nothing of it was used")
    return data


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise UserError(f"{what}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{what}: not a JSON object")
    return doc

