"""Bundles: a site's delta in one file, for sneakernet (a USB disk across the air gap).

A POSIX tar whose first member is `bundle.json` (signed: the site, the images with their disks'
sha256, the acknowledged images the delta is against, what it carries), then the signed chunk
indexes, their tables and exactly the chunks the site lacks; written under a temporary name and
renamed. At the site, members are read one by one and only under those names - nothing in a
bundle is extracted by path; a chunk is stored only after it decompressed to its name's sha256;
the images then become visible through `sitestore.make_visible` like a sync's.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..catalogue import signing, trust
from ..catalogue.stores import BlobStore, LocalDirStore
from ..errors import BuildError, UserError
from . import chunks as ch
from . import sitestore as sc
from .sites import Plan

BUNDLE_KIND = "imagefactory-site-bundle"
CHUNK_MEMBER = re.compile(r"^chunks/zstd/([0-9a-f]{64})$")
TABLE_MEMBER = re.compile(r"^chunk-tables/sha256/([0-9a-f]{64})$")
INDEX_MEMBER = re.compile(r"^chunked/([a-z0-9][a-z0-9._-]*)/([A-Za-z0-9][A-Za-z0-9._+-]*)\.json$")


def export_bundle(p: Plan, store: BlobStore, private_key: Ed25519PrivateKey, out: Path,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write the plan's delta to `out` (atomically); returns its size."""
    head = signing.sign({
        "kind": BUNDLE_KIND, "schema": 1, "site": p.site, "created": sc.now(), "base": p.base,
        "images": [{"ref": i.ref, "index": i.index_key, "disk_sha256": i.sha256} for i in p.indexes],
        "chunks": len(p.missing), "chunk_bytes": sum(c.csize for c in p.missing.values()),
    }, private_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, "bundle.json", json.dumps(head, indent=1).encode())
            # the catalogue's TUF metadata for these images: the site checks them current, unrevoked
            refs = [(i.name, i.version) for i in p.indexes]
            for key, data in sorted(trust.site_metadata(store, refs).items()):
                _add(tar, key, data)
            for img in p.indexes:
                _add(tar, img.index_key, json.dumps(img.raw, indent=1).encode())
                _add(tar, ch.table_key(img.table_sha256), store.get_bytes(ch.table_key(img.table_sha256))[0])
            for sha, c in p.missing.items():
                data = ch.read_stored(store, c)
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



@dataclass
class ImportResult:
    site: str
    images: list[str]
    chunks_added: int
    chunks_present: int
    ack: Path


def import_bundle(bundle: Path, site: sc.SiteStore) -> ImportResult:
    """Verify and apply a bundle at its site (see the module docstring)."""
    rec = site.record()
    public = site.public_key()
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            head, indexes, tables, added, present = _read_bundle(bundle, tar, site, public, str(rec["name"]))
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
    items = [sc.Listed(str(i["index"]), str(i["disk_sha256"])) for i in head["images"]]
    done = sc.make_visible(site, sc.verify_indexes(site, items, indexes, tables, public, str(bundle)))
    ack = site.images.parent / sc.ACK if isinstance(site.store, LocalDirStore) else Path(sc.ACK)
    return ImportResult(rec["name"], done, added, present, ack)


_Read = tuple[dict[str, Any] | None, dict[str, dict[str, Any]], dict[str, bytes], int, int]


def _read_bundle(bundle: Path, tar: tarfile.TarFile, site: sc.SiteStore, public: Ed25519PublicKey,
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
            try:
                ch.unpack_chunk(m.group(1), data)
            except BuildError as e:
                raise BuildError(f"{bundle}: {e.message}", hint=e.hint) from None
            site.put(member.name, data)
            added += 1
        elif TABLE_MEMBER.match(member.name):
            tables[member.name] = data
        elif trust.SITE_METADATA.match(member.name):
            # verified by the site's TUF client before it is used; an older bundle's timestamp
            # does not replace a newer one (it would be refused as a rollback anyway)
            if not (member.name.endswith("/timestamp.json") and _older(site, member.name, data)):
                site.put(member.name, data)
        elif INDEX_MEMBER.match(member.name):
            indexes[member.name] = sc.json_object(data, f"{bundle}: {member.name}")
        else:
            raise UserError(f"{bundle}: unexpected member {member.name!r}",
                            hint="not a bundle written by 'imagefactory site export'; nothing was used")
    return head, indexes, tables, added, present


def _older(site: sc.SiteStore, key: str, data: bytes) -> bool:
    """Whether TUF metadata `data` has a lower version than what the site store holds at `key`."""
    def version(raw: bytes) -> int:
        try:
            return int(json.loads(raw)["signed"]["version"])
        except (ValueError, KeyError, TypeError):
            return -1
    return site.has(key) and version(data) < version(site.read(key))


def _bundle_head(bundle: Path, name: str, f: IO[bytes], public: Ed25519PublicKey,
                 site: str) -> dict[str, Any]:
    if name != "bundle.json":
        raise UserError(f"{bundle}: the first member is {name!r}, not bundle.json",
                        hint="not a bundle written by 'imagefactory site export'")
    head = sc.json_object(_read_member(f, 1 << 20, name), f"{bundle}: bundle.json")
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
