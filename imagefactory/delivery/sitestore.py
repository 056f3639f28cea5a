"""A site's own store, and making images visible there.

The store holds, under the factory's key names, the chunks, tables and signed chunk indexes the
site received, plus `site.json` (the site's name, the factory public key it trusts, the images it
holds) and `acknowledgement.json` (what the operator - or `site sync` - carries back). It is a
directory (`LocalDirStore`: a USB disk, a path on the bridge machine) or the site's S3 server.
Disks are reassembled into a local directory (`images/<name>/<version>/disk.raw`).

`make_visible` is the one way an image appears at a site, for bundles and syncs alike: each
index's signature and table hash verified, the disk written from verified chunks to a `.part`
file and renamed only when its sha256 and sha512 are the signed ones.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..catalogue import signing, trust
from ..catalogue.catalogue import RevokedImage
from ..catalogue.manifest import Manifest
from ..catalogue.stores import BlobStore, LocalDirStore, NotFound
from ..errors import BuildError, UserError
from . import chunks as ch

log = logging.getLogger(__name__)

ACK_KIND = "imagefactory-site-acknowledgement"
RECORD = "site.json"
ACK = "acknowledgement.json"
KEY_NAME = "site"  # site-key/site.key (0600) and site.pub beside the site's images, never in its store


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


class SiteStore:
    """A site's store (`store`) and the directory its disks are reassembled into (`images`)."""

    def __init__(self, store: BlobStore, images: Path) -> None:
        self.store = store
        self.images = images

    @classmethod
    def directory(cls, root: Path) -> SiteStore:
        return cls(LocalDirStore("site", root), root / "images")

    def describe(self) -> str:
        return self.store.describe()

    def init(self, name: str, public_key_pem: bytes, root_key_pems: list[bytes] | None = None,
             root_threshold: int = 1, max_expired: dt.timedelta = dt.timedelta(0)) -> dict[str, Any]:
        """Make the store a site's: the factory's manifest key, the keys of the catalogue's first
        TUF root (default: the manifest key) and how long past expiry the site accepts the
        catalogue's metadata (its freshness policy for long disconnections)."""
        if self.store.stat(RECORD) is not None:
            raise UserError(f"{self.describe()} is already the store of site '{self.record()['name']}'")
        signing.load_public_key_bytes(public_key_pem, f"{self.describe()}: the factory's public key")
        for i, pem in enumerate(root_key_pems or []):
            signing.load_public_key_bytes(pem, f"{self.describe()}: root key {i + 1}")
        if root_threshold > max(1, len(root_key_pems or [])):
            raise UserError(f"--root-threshold {root_threshold}: only {len(root_key_pems or [])} root key(s)")
        self.store.prepare()
        # The site's own key signs its acknowledgements: the factory's view of what the site holds
        # is then what the site said, not what a file carried back says.
        if not self.key_file.exists():
            signing.generate(self.key_file.parent, KEY_NAME)
        site_public = self.key_file.with_suffix(".pub").read_text()
        rec = {"name": name, "created": now(), "factory_public_key": public_key_pem.decode(), "images": {},
               "deliveries": [], "root_keys": [k.decode() for k in root_key_pems or []],
               "root_threshold": root_threshold, "max_expired_seconds": int(max_expired.total_seconds()),
               "site_public_key": site_public}
        self.write_record(rec)
        return rec

    @property
    def key_file(self) -> Path:
        return self.images.parent / "site-key" / f"{KEY_NAME}.key"

    def record(self) -> dict[str, Any]:
        try:
            data, _ = self.store.get_bytes(RECORD)
        except NotFound:
            raise UserError(f"{self.describe()} is not a site store (no {RECORD})",
                            hint="'imagefactory site init NAME --dir DIR --public-key FACTORY.pub'") from None
        rec: dict[str, Any] = json.loads(data)
        rec.setdefault("deliveries", [])
        return rec

    def write_record(self, rec: dict[str, Any]) -> None:
        self.put(RECORD, json.dumps(rec, indent=2).encode() + b"\n")

    def public_key(self) -> Ed25519PublicKey:
        return signing.load_public_key_bytes(str(self.record()["factory_public_key"]).encode(),
                                             f"{self.describe()}: {RECORD}: factory_public_key")

    def anchor(self) -> trust.Anchor:
        """The site's trust in the catalogue's TUF metadata; what it trusted so far is kept beside
        its images (`trust/`), so an older state replayed to it is refused."""
        rec = self.record()
        where = f"{self.describe()}: {RECORD}"
        public = self.public_key()
        roots = tuple(signing.load_public_key_bytes(str(k).encode(), f"{where}: root_keys")
                      for k in rec.get("root_keys") or []) or (public,)
        return trust.Anchor(public, roots, int(rec.get("root_threshold", 1)), self.images.parent / "trust",
                            dt.timedelta(seconds=int(rec.get("max_expired_seconds", 0))))

    def has(self, key: str) -> bool:
        return self.store.stat(key) is not None

    def put(self, key: str, data: bytes) -> None:
        try:
            self.store.put_bytes(key, data, content_type="application/octet-stream")
        except OSError as e:
            raise BuildError(f"{self.describe()}: cannot write {key}: {e.strerror}",
                             hint="free space on the site store (or mount it again) and try again: what "
                                  "was verified and stored is kept") from None

    def read(self, key: str) -> bytes:
        try:
            return self.store.get_bytes(key)[0]
        except NotFound:
            raise BuildError(f"{self.describe()}: {key} is missing",
                             hint="the site lacks a chunk its factory thought it had: acknowledge what "
                                  "the site holds ('site ack') and send the image again") from None

    def disk(self, ref: str) -> Path:
        name, version = ref.split(":", 1)
        return self.images / name / version / "disk.raw"

    def acknowledgement(self) -> dict[str, Any]:
        """What the site holds, signed with the site's key (a site made before site keys: unsigned)."""
        rec = self.record()
        # microseconds: two acknowledgements of one second must still be ordered (a replay check)
        at = dt.datetime.now(dt.UTC).isoformat()
        doc = {"kind": ACK_KIND, "site": rec["name"], "at": at, "images": sorted(rec["images"])}
        if not self.key_file.exists():
            return doc
        return signing.sign(doc, signing.load_private_key(str(self.key_file)))


@dataclass(frozen=True)
class Listed:
    """An image as a signed head (bundle or delivery) names it."""

    index_key: str
    disk_sha256: str


def verify_indexes(site: SiteStore, listed: list[Listed], docs: dict[str, dict[str, Any]],
                   tables: dict[str, bytes], public: Ed25519PublicKey,
                   what: str) -> list[tuple[ch.ChunkedImage, dict[str, Any], bytes]]:
    """Each listed image's index (from `docs`, else the site store) checked: signature, table
    hash, and that it is the image the signed head names."""
    out = []
    for item in listed:
        doc = docs.get(item.index_key)
        if doc is None:
            try:
                doc = json.loads(site.read(item.index_key))
            except ValueError as e:
                raise BuildError(f"{what}: {item.index_key} is not JSON ({e})") from None
        tkey = doc.get("table", {}).get("key") if isinstance(doc, dict) else None
        if not isinstance(tkey, str) or not tkey.startswith("chunk-tables/sha256/"):
            raise BuildError(f"{what}: {item.index_key} names no chunk table")
        table = tables.get(tkey) or site.read(tkey)
        img = ch.parse_index(doc, table, public, f"{what}: {item.index_key}")
        if img.index_key != item.index_key or img.sha256 != item.disk_sha256:
            raise UserError(f"{what}: {item.index_key} is not the image its signed head names",
                            hint="the delivery was altered; nothing was made visible")
        _current_and_not_revoked(site, img, what)
        out.append((img, doc, table))
    return out


def current_manifest(site: SiteStore, name: str, version: str, what: str,
                     hint: str = "nothing was made visible; the factory sends another version") -> Manifest:
    """The manifest of NAME:VERSION as the catalogue's TUF metadata (carried with deliveries, kept
    in the site store) names it now, signed and not revoked."""
    tc = trust.TrustedCatalogue(site.store, site.anchor())
    ref = f"{name}:{version}"
    # the name's signed channels file says first: it comes with every delivery of that name, so a
    # revocation reaches the site with any later delivery, even one without that version
    listed = {str(v["version"]): v for v in (tc.channels(name) or {}).get("versions", [])}
    revoked = (listed.get(version) or {}).get("revoked")
    if revoked:
        raise RevokedImage(f"{what}: {ref} is revoked: {revoked.get('reason')} (since {revoked.get('at')})",
                           hint=hint)
    raw, m = tc.manifest(name, version)
    signing.verify(raw, site.public_key(), f"{what}: {ref}")
    if m.revoked:
        raise RevokedImage(f"{what}: {ref} is revoked: {m.revoked.reason} (since {m.revoked.at})", hint=hint)
    return m


def uploadable(site: SiteStore, ref: str) -> tuple[Manifest, Path]:
    """A disk the site made visible, for its Harvester: the manifest as the site's TUF metadata
    names it now (a revocation that arrived since refuses it), with the disk as its image (raw,
    the disk's sha256 and sha512 as verified when it became visible), and the disk's path."""
    name, _, version = ref.partition(":")
    entry = site.record()["images"].get(ref)
    if not version or entry is None:
        raise UserError(f"{ref}: not visible at site {site.record()['name']}",
                        hint="NAME:VERSION of an image 'site import' or 'site apply' made visible")
    if not entry.get("disk_sha512"):
        raise UserError(f"{ref}: became visible before sites recorded a disk's sha512",
                        hint="import or apply its delivery again")
    m = current_manifest(site, name, version, "site upload", hint="nothing was uploaded")
    disk = m.image.model_copy(update={"file": "disk.raw", "format": "raw", "compression": "none",
                                      "size": entry["disk_size"], "virtual_size": entry["disk_size"],
                                      "sha256": entry["disk_sha256"], "sha512": entry["disk_sha512"]})
    return m.model_copy(update={"image": disk}), site.disk(ref)


def _current_and_not_revoked(site: SiteStore, img: ch.ChunkedImage, what: str) -> None:
    """The image's manifest as the catalogue's TUF metadata names it now: not revoked, and the
    published image the chunks were cut from."""
    m = current_manifest(site, img.name, img.version, what)
    if m.image.sha256 != img.image_sha256:
        raise UserError(f"{what}: {img.index_key} was cut from image {img.image_sha256[:12]}, the current "
                        f"manifest of {img.ref} names {m.image.sha256[:12]}",
                        hint="the delivery was altered or is stale; nothing was made visible")


def make_visible(site: SiteStore, verified: list[tuple[ch.ChunkedImage, dict[str, Any], bytes]]) -> list[str]:
    """Reassemble each verified image from the site's chunks, record it, write the acknowledgement."""
    rec = site.record()
    done = []
    for img, doc, table in verified:
        dest = site.disk(img.ref)
        dest.parent.mkdir(parents=True, exist_ok=True)
        ch.reassemble(img, lambda sha: site.read(ch.chunk_key(sha)), dest)
        site.put(ch.table_key(img.table_sha256), table)
        site.put(img.index_key, json.dumps(doc, indent=1).encode())
        rec["images"][img.ref] = {"disk_sha256": img.sha256, "disk_sha512": img.sha512, "disk_size": img.size,
                                  "visible": now()}
        site.write_record(rec)
        done.append(img.ref)
        log.info("site %s: %s verified and visible at %s", rec["name"], img.ref, dest)
    site.put(ACK, json.dumps(site.acknowledgement(), indent=2).encode() + b"\n")
    return done


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object from a bundle or a site store, or a UserError naming `what`."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise UserError(f"{what}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{what}: not a JSON object")
    return doc
