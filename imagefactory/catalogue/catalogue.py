"""The image catalogue in a store: layout, commit order, index, channels, revocation, pruning,
consumer verification and the static `index.html`.

Layout (keys relative to the store root or the S3 prefix)::

    blobs/sha256/<hex>                      every published file, content-addressed, stored once
    images/<name>/<version>/manifest.json   the signed manifest of one image version (the truth)
    index.json                              the catalogue index: a cache derived from the manifests
    index.html                              the same as a page for people (relative links)
    .lock                                   the catalogue lock (a lease object on S3, flock locally)

Order and atomicity: blobs are uploaded and verified first (outside the lock: they are large and
content-addressed, so concurrent uploads cannot conflict); then, under the catalogue lock, every
blob the manifest names is checked to exist with its size, the manifest is written (create-only),
and the index is updated with a compare-and-swap (`If-Match` on its ETag, re-read and re-applied
on conflict) and `index.html` rewritten. Pruning deletes under the same lock, index first, then
manifests, then unreferenced blobs, so a reader never finds a manifest whose blobs are gone and
a publisher never commits a manifest whose blob a concurrent prune removed (it re-uploads).

The index is never the authority: consumers resolve a name through it, then read the manifest,
verify its signature and check revocation and channel membership there. `rebuild_index` (CLI
`images reindex`) recreates it from the manifests, e.g. after a server that ignores conditional
writes let two publishers race.

Channels are a set per version, recorded in the signed manifest; new versions land in
`candidate`, `promote` adds a channel. A channel's *head* is its newest version that is not
revoked: `name@stable` resolves to it and `prune` never deletes a head. Promote and revoke
rewrite the manifest and sign it again (they need the private key); a revoked image stays listed,
marked revoked, and every consumer path refuses it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import BuildError, UserError
from ..fsutil import digests
from . import signing, trust
from .manifest import (
    DEFAULT_CHANNEL,
    Manifest,
    channel_heads,
    check_channel,
    manifest_key,
    now,
    parse_manifest,
    parse_ref,
)
from .stores import BlobStore, NotFound, PreconditionFailed, Progress

log = logging.getLogger(__name__)
INDEX = "index.json"
HTML = "index.html"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


class MissingBlobs(BuildError):
    """Blobs a manifest names are not (or no longer) in the store."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"blobs missing from the store: {', '.join(keys)}")
        self.keys = keys


class AlreadyPublished(BuildError):
    """Another version with the same build key is published (two runners built the same inputs)."""

    def __init__(self, message: str, ref: str) -> None:
        super().__init__(message, hint="nothing to do: that version has exactly these inputs")
        self.ref = ref


class RevokedImage(UserError):
    """The image was revoked: no consumer may use it."""


@dataclass(frozen=True)
class CommitResult:
    ref: str
    manifest_key: str
    unchanged: bool  # the version was already published with the same image


@dataclass(frozen=True)
class PublishedImage:
    """A verified, not revoked image: what a consumer (pull, url, Harvester) may use."""

    store: str
    manifest: Manifest
    raw: dict[str, Any]
    manifest_key: str

    @property
    def ref(self) -> str:
        return self.manifest.ref


@dataclass
class PruneResult:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    protected: dict[str, list[str]] = field(default_factory=dict)  # ref -> channels it heads
    blobs_deleted: int = 0
    bytes_freed: int = 0


def index_entry(m: Manifest, key: str) -> dict[str, Any]:
    """What `images list` and index.html show of one version (no need to read its manifest)."""
    stig = m.stig or {}
    gate = stig.get("gate") or {}

    def link(path: str | None) -> str | None:
        f = m.file(path) if path else None
        return f.key if f else None

    return {
        "version": m.version, "created": m.created, "published": m.published,
        "os": m.os.model_dump(), "kernel": m.kernel,
        "rke2": (m.rke2 or {}).get("version"), "zarf": (m.zarf or {}).get("version"),
        "channels": list(m.channels), "revoked": m.revoked.model_dump() if m.revoked else None,
        "format": m.image.format, "size": m.image.size, "virtual_size": m.image.virtual_size,
        "sha256": m.image.sha256, "sha512": m.image.sha512,
        "tests": {k: m.tests.get(k) for k in ("ok", "passed", "failed")},
        "stig": {"gate": gate.get("passed"), "open": gate.get("open_by_cat", {})} if m.stig else None,
        "manifest": key,
        "build_key": (m.inputs or {}).get("build_key"),
        "links": {
            "image": m.image.key, "sbom": link((m.sbom or {}).get("file")),
            "stig_html": link(stig.get("report_html")), "stig_json": link(stig.get("report_json")),
            "checklists": [{"name": p, "key": k} for p in stig.get("checklists", []) if (k := link(p))],
            "junit": link("junit.xml"), "build_log": link("build.log"),
        },
    }


def _empty_index() -> dict[str, Any]:
    return {"schema": 1, "updated": now(), "images": {}}


class Catalogue:
    """The catalogue in one store; see the module docstring."""

    def __init__(self, store: BlobStore, keys: trust.Keys | None = None) -> None:
        self.store = store
        self.keys = keys  # what signs the TUF metadata (publish, promote, revoke, prune)

    def _keys(self, what: str) -> trust.Keys:
        if self.keys is None:
            raise UserError(f"{what} needs the signing key (it signs the catalogue's TUF metadata)",
                            hint="signing.private_key in imagefactory.yaml, or $IMAGEFACTORY_SIGNING_KEY")
        return self.keys

    # --- reading ----------------------------------------------------------------------------

    def index(self) -> dict[str, Any]:
        try:
            data, _ = self.store.get_bytes(INDEX)
        except NotFound:
            return _empty_index()
        try:
            idx: dict[str, Any] = json.loads(data)
            return idx
        except ValueError:
            raise BuildError(f"store {self.store.describe()}: {INDEX} is not valid JSON",
                             hint="run 'imagefactory images reindex' to rebuild it from the manifests"
                             ) from None

    def entries(self) -> list[dict[str, Any]]:
        """Every version in the index, oldest first per name, with `name` and its channel heads."""
        out = []
        for name, versions in sorted(self.index().get("images", {}).items()):
            heads = channel_heads(versions)
            for v in versions:
                out.append({"name": name, **v,
                            "heads": sorted(c for c, ver in heads.items() if ver == v["version"])})
        return out

    def read_manifest(self, name: str, version: str) -> tuple[dict[str, Any], str]:
        """The raw manifest (unverified) and its ETag."""
        key = manifest_key(name, version)
        try:
            data, etag = self.store.get_bytes(key)
        except NotFound:
            raise UserError(f"{name}:{version}: not published in store {self.store.describe()}",
                            hint="see 'imagefactory images list'") from None
        try:
            raw = json.loads(data)
        except ValueError:
            raise BuildError(f"{key}: the manifest is not valid JSON",
                             hint="it was damaged or tampered with; do not use this image") from None
        if not isinstance(raw, dict):
            raise BuildError(f"{key}: the manifest is not a JSON object")
        return raw, etag

    def manifests(self) -> Iterator[tuple[dict[str, Any], Manifest, str]]:
        """(raw, parsed, key) of every manifest in the store, the truth behind the index."""
        for info in self.store.list("images/"):
            if not info.key.endswith("/manifest.json"):
                continue
            try:
                data, _ = self.store.get_bytes(info.key)
                raw = json.loads(data)
                yield raw, parse_manifest(raw, info.key), info.key
            except NotFound:
                continue  # deleted while listing
            except (ValueError, BuildError) as e:
                log.warning("skipping %s: %s", info.key, e)

    def resolve(self, ref: str) -> tuple[str, str, str | None]:
        """(name, version, channel asked for) of a reference; see `manifest.parse_ref`."""
        r = parse_ref(ref)
        if r.version:
            return r.name, r.version, None
        versions = self.index().get("images", {}).get(r.name, [])
        if not versions:
            raise UserError(f"{ref}: no such image in store {self.store.describe()}",
                            hint="see 'imagefactory images list'")
        if r.channel:
            version = channel_heads(versions).get(r.channel)
            if version is None:
                raise UserError(f"{ref}: channel '{r.channel}' has no usable version of {r.name}",
                                hint="promote one: 'imagefactory images promote NAME:VERSION --channel "
                                     f"{r.channel}'")
            return r.name, version, r.channel
        usable = [v for v in versions if not v.get("revoked")]
        if not usable:
            raise RevokedImage(f"{ref}: every version of {r.name} is revoked")
        return r.name, str(max(usable, key=lambda v: str(v["version"]))["version"]), None

    # --- writing ----------------------------------------------------------------------------

    def _update_index(self, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read-modify-write of the index with compare-and-swap (see the module docstring)."""
        for _ in range(20):
            try:
                data, etag = self.store.get_bytes(INDEX)
                try:
                    idx: dict[str, Any] = json.loads(data)
                except ValueError:
                    log.warning("store %s: %s is damaged; rebuilding it from the manifests",
                                self.store.name, INDEX)
                    idx = self._derived_index()
                current: str | None = etag
            except NotFound:
                idx, current = _empty_index(), None
            mutate(idx)
            idx["updated"] = now()
            body = (json.dumps(idx, indent=1, sort_keys=True) + "\n").encode()
            try:
                self.store.put_bytes(INDEX, body, if_match=current, if_none_match=current is None)
                return idx
            except PreconditionFailed:
                log.info("store %s: the index changed while updating it; retrying", self.store.name)
        raise BuildError(f"store {self.store.describe()}: the index kept changing under the update",
                         hint="another publisher may ignore the catalogue lock; run 'images reindex'")

    def _derived_index(self) -> dict[str, Any]:
        idx = _empty_index()
        for _, m, key in self.manifests():
            _upsert(idx, m, key)
        return idx

    def _write_html(self, idx: dict[str, Any]) -> None:
        self.store.put_bytes(HTML, render_html(idx, self.store.name).encode(),
                             content_type="text/html; charset=utf-8")

    def commit(self, raw: dict[str, Any]) -> CommitResult:
        """Write a signed manifest whose blobs are uploaded, then update index and page."""
        m = parse_manifest(raw, "the new manifest")
        key = manifest_key(m.name, m.version)
        keys = self._keys(f"publishing {m.ref}")
        with self.store.lock(f"publishing {m.ref}"):
            missing = [f.key for f in m.files if (i := self.store.stat(f.key)) is None or i.size != f.size]
            if missing:
                raise MissingBlobs(missing)
            unchanged = False
            try:
                old_data, _ = self.store.get_bytes(key)
                try:
                    old = parse_manifest(json.loads(old_data), key)
                except ValueError:
                    raise BuildError(f"{key}: the published manifest is not valid JSON",
                                     hint="it was damaged; delete it and publish again") from None
                if old.image.sha256 != m.image.sha256:
                    raise UserError(f"{m.ref} is already published with another image (sha256 "
                                    f"{old.image.sha256})", hint="versions are immutable; build again")
                m, unchanged = old, True  # channels and revocation of the published one stay
                if not trust.lists(self.store, key):  # published before the catalogue had TUF
                    trust.update(self.store, keys, {key: old_data})
            except NotFound:
                self._check_build_key(m)
                trust.check_writer(self.store, keys)  # before the manifest is written
                body = _dumps(raw)
                self.store.put_bytes(key, body, if_none_match=True)
                trust.update(self.store, keys, {key: body})
            idx = self._update_index(lambda idx: _upsert(idx, m, key))
            self._write_html(idx)
        return CommitResult(m.ref, key, unchanged)

    def _check_build_key(self, m: Manifest) -> None:
        """Under the catalogue lock: one published version per build key, so that two CI runners
        that built the same inputs do not both publish (the second one is told which exists)."""
        bk = (m.inputs or {}).get("build_key")
        if not bk:
            return
        for e in self.index().get("images", {}).get(m.name, []):
            if e.get("build_key") == bk and not e.get("revoked") and e["version"] != m.version:
                ref = f"{m.name}:{e['version']}"
                raise AlreadyPublished(f"{m.ref}: build key {str(bk)[:12]} is already published as {ref}",
                                       ref)

    def _rewrite(self, ref: str, what: str, change: Callable[[Manifest], dict[str, Any] | None],
                 private: Ed25519PrivateKey, public: Ed25519PublicKey) -> Manifest:
        name, version, _ = self.resolve(ref)
        key = manifest_key(name, version)
        keys = self.keys or trust.Keys.single(private)
        with self.store.lock(f"{what} {name}:{version}"):
            # The manifest the TUF targets say is current (not whatever copy sits at its key: an
            # older one put back would otherwise be re-signed, undoing a revocation).
            raw = trust.current_manifest(self.store, key)
            if raw is None:
                raw, _ = self.read_manifest(name, version)
            # Never re-sign something we did not sign: a tampered manifest stays refused.
            signing.verify(raw, public, key)
            m = parse_manifest(raw, key)
            update = change(m)
            if update is None:
                return m
            new = signing.sign({**raw, **update}, private)
            signing.verify(new, public, f"{key} (re-signed)")
            body = _dumps(new)
            trust.update(self.store, keys, {key: body})
            self.store.put_bytes(key, body)  # the plain copy, for people and the listing
            m = parse_manifest(new, key)
            idx = self._update_index(lambda idx: _upsert(idx, m, key))
            self._write_html(idx)
        return m

    def promote(self, ref: str, channel: str, private: Ed25519PrivateKey,
                public: Ed25519PublicKey) -> Manifest:
        check_channel(channel)

        def change(m: Manifest) -> dict[str, Any] | None:
            if m.revoked:
                raise RevokedImage(f"{m.ref} is revoked ({m.revoked.reason}); it cannot be promoted")
            return None if channel in m.channels else {"channels": [*m.channels, channel]}

        return self._rewrite(ref, "promoting", change, private, public)

    def revoke(self, ref: str, reason: str, private: Ed25519PrivateKey, public: Ed25519PublicKey) -> Manifest:
        if not reason.strip():
            raise UserError("a revocation needs a reason (--reason)")

        def change(m: Manifest) -> dict[str, Any] | None:
            return None if m.revoked else {"revoked": {"reason": reason.strip(), "at": now()}}

        if parse_ref(ref).version is None:
            raise UserError(f"{ref}: revoke names one version", hint="use NAME:VERSION")
        return self._rewrite(ref, "revoking", change, private, public)

    def rebuild_index(self) -> dict[str, Any]:
        with self.store.lock("rebuilding the index"):
            derived = self._derived_index()

            def replace(idx: dict[str, Any]) -> None:
                idx.clear()
                idx.update(derived)

            idx = self._update_index(replace)
            self._write_html(idx)
        return idx

    def prune(self, keep: int, name: str | None = None, dry_run: bool = False,
              blob_grace: dt.timedelta = dt.timedelta(hours=1)) -> PruneResult:
        """Keep the `keep` newest versions of each image (or of `name`) and every channel head;
        delete the other versions, then blobs no manifest references (older than `blob_grace`,
        so uploads of a publish in progress are left alone)."""
        if keep < 1:
            raise UserError("--keep must be at least 1")
        result = PruneResult()
        with self.store.lock("pruning"):
            found = list(self.manifests())
            by_name: dict[str, list[tuple[Manifest, str]]] = {}
            for _, m, key in found:
                by_name.setdefault(m.name, []).append((m, key))
            doomed: list[tuple[Manifest, str]] = []
            for n, items in sorted(by_name.items()):
                items.sort(key=lambda x: x[0].version, reverse=True)
                if name is not None and n != name:
                    result.kept += [m.ref for m, _ in items]
                    continue
                heads = channel_heads([index_entry(m, k) for m, k in items])
                for i, (m, key) in enumerate(items):
                    channels = sorted(c for c, v in heads.items() if v == m.version)
                    if channels:
                        result.protected[m.ref] = channels
                    if i < keep or channels:
                        result.kept.append(m.ref)
                    else:
                        doomed.append((m, key))
            result.deleted = [m.ref for m, _ in doomed]
            gone = {(m.name, m.version) for m, _ in doomed}
            referenced = {f.key for _, m, _ in found if (m.name, m.version) not in gone for f in m.files}
            referenced |= {m.image.key for _, m, _ in found if (m.name, m.version) not in gone}
            cutoff = dt.datetime.now(dt.UTC) - blob_grace
            garbage = [info for info in self.store.list("blobs/") if info.key not in referenced
                       and (info.modified is None or info.modified <= cutoff)]
            result.blobs_deleted = len(garbage)
            result.bytes_freed = sum(info.size for info in garbage)
            if dry_run:
                return result

            def drop(idx: dict[str, Any]) -> None:
                for n, versions in list(idx.get("images", {}).items()):
                    idx["images"][n] = [v for v in versions if (n, v["version"]) not in gone]
                    if not idx["images"][n]:
                        del idx["images"][n]

            idx = self._update_index(drop) if doomed else self.index()
            if doomed and trust.initialized(self.store):
                trust.update(self.store, self._keys("pruning"), {}, frozenset(key for _, key in doomed))
            for _, key in doomed:
                self.store.delete(key)
                for info in self.store.list(key.rsplit("/", 1)[0] + "/"):  # its hash-named TUF copies
                    self.store.delete(info.key)
            for info in garbage:  # after the manifests: no manifest ever names a deleted blob
                self.store.delete(info.key)
            self._write_html(idx)
        return result


def _dumps(raw: dict[str, Any]) -> bytes:
    return (json.dumps(raw, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _upsert(idx: dict[str, Any], m: Manifest, key: str) -> None:
    versions = [v for v in idx.setdefault("images", {}).get(m.name, []) if v["version"] != m.version]
    idx["images"][m.name] = sorted([*versions, index_entry(m, key)], key=lambda v: str(v["version"]))


# --- consumers ----------------------------------------------------------------------------------


def verify_for_consumer(store: BlobStore, ref: str, anchor: trust.Anchor) -> PublishedImage:
    """Resolve `ref` and read its manifest through the catalogue's TUF metadata (current, not
    rolled back, not expired), verify the manifest's signature, refuse revoked images, check the
    image blob is there with its size. Every consumer (pull, url, Harvester upload, Packer bases,
    sites) goes through this. Raises `trust.TrustError` / `signing.SignatureError` (metadata or
    manifest refused), `RevokedImage`, `UserError` (no such image) or `BuildError` (blob missing)."""
    tc = trust.TrustedCatalogue(store, anchor)
    name, version, channel = tc.resolve(ref)
    raw, _ = tc.manifest(name, version)
    key = manifest_key(name, version)
    signing.verify(raw, anchor.manifest_key, f"{name}:{version} ({store.name})")
    m = parse_manifest(raw, key)
    if (m.name, m.version) != (name, version):
        raise signing.SignatureError(f"{key}: the signed manifest is for {m.ref}, not {name}:{version}",
                                     hint="a manifest was copied to another place; do not use it")
    if m.revoked:
        raise RevokedImage(f"{m.ref} is revoked: {m.revoked.reason} (since {m.revoked.at})",
                           hint="pick another version; see 'imagefactory images list'")
    if channel and channel not in m.channels:
        raise signing.SignatureError(f"{ref}: the signed channels file says {m.ref}, but its signed "
                                     f"manifest is not in channel '{channel}'",
                                     hint="the catalogue's metadata is inconsistent; promote it again")
    info = store.stat(m.image.key)
    if info is None or info.size != m.image.size:
        raise BuildError(f"{m.ref}: the image blob {m.image.key} is "
                         f"{'missing' if info is None else f'{info.size} bytes, expected {m.image.size}'}",
                         hint="publish the image again")
    return PublishedImage(store.name, m, raw, key)


def pull(store: BlobStore, ref: str, dest: Path | None, anchor: trust.Anchor,
         progress: Callable[[str, int], Progress] | None = None) -> tuple[PublishedImage, Path]:
    """Download a verified image to `dest` (a file or a directory; default: the current directory,
    `<name>-<version>.<format>`). Resumable: bytes go to `<dest>.part` (and the sha256 it is for to
    `<dest>.part.sha256`); a rerun continues it with HTTP Range. The file appears under its name
    only after its sha256 and sha512 match the signed manifest."""
    img = verify_for_consumer(store, ref, anchor)
    m = img.manifest
    file_name = f"{m.name}-{m.version}.{m.image.format}"
    target = (dest / file_name if dest.is_dir() else dest) if dest else Path.cwd() / file_name
    if target.exists():
        raise UserError(f"{target}: already exists", hint="remove it or pass another -o PATH")
    part = target.with_name(target.name + ".part")
    marker = target.with_name(target.name + ".part.sha256")
    if part.exists() and (not marker.is_file() or marker.read_text().strip() != m.image.sha256):
        part.unlink()  # a partial download of some other image
    marker.write_text(m.image.sha256 + "\n")
    done = part.stat().st_size if part.exists() else 0
    tick = progress(f"pull {m.ref}", m.image.size) if progress else None
    if tick and done:
        tick(min(done, m.image.size))
    store.get_file(m.image.key, part, size=m.image.size, progress=tick)
    sha256, sha512 = digests(part)
    if (sha256, sha512) != (m.image.sha256, m.image.sha512) or part.stat().st_size != m.image.size:
        part.unlink()
        marker.unlink(missing_ok=True)
        raise BuildError(f"{m.ref}: the downloaded image does not match its signed manifest "
                         f"(sha256 {sha256}, expected {m.image.sha256})",
                         hint="the blob in the store is damaged or was tampered with; do not use it")
    part.replace(target)
    marker.unlink(missing_ok=True)
    return img, target


def pull_cached(store: BlobStore, ref: str, anchor: trust.Anchor, cache: Path,
                progress: Callable[[str, int], Progress] | None = None) -> tuple[PublishedImage, Path]:
    """A verified image as a file in `cache` (`<sha256>.<format>`), pulled once and reused: what
    consumers that need a local file use (libvirt clusters, Harvester uploads from S3, a Packer
    base image built on another runner). The name is the content's hash and `pull` only renames a
    file whose hashes matched, so a file of the right size there is that image."""
    img = verify_for_consumer(store, ref, anchor)
    m = img.manifest
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"{m.image.sha256}.{m.image.format}"
    if not (dest.is_file() and dest.stat().st_size == m.image.size):
        dest.unlink(missing_ok=True)
        _, dest = pull(store, img.ref, dest, anchor, progress)
    return img, dest


def pull_base(store: BlobStore, ref: str, anchor: trust.Anchor, cache: Path,
              progress: Callable[[str, int], Progress] | None = None) -> tuple[PublishedImage, Path, Path]:
    """What a later build writes its root over (`build --base NAME@CHANNEL`): the verified image
    (`pull_cached`) and its file index, checked against the sha256 its signed manifest lists."""
    img, image = pull_cached(store, ref, anchor, cache, progress)
    ref_file = next((f for f in img.manifest.files if f.role == "file-index"), None)
    if ref_file is None or not img.manifest.disk:
        raise UserError(f"--base {ref}: {img.ref} was published without a file index",
                        hint="its successor can use it as a base once it is built and published by this "
                             "version of imagefactory; build without --base")
    index = cache / f"{ref_file.sha256}.files.zst"
    if not index.is_file() or digests(index)[0] != ref_file.sha256:
        part = index.with_name(index.name + ".part")
        store.get_file(ref_file.key, part, size=ref_file.size)
        if digests(part)[0] != ref_file.sha256:
            part.unlink()
            raise BuildError(f"{img.ref}: its file index does not match its signed manifest",
                             hint="the blob in the store is damaged or was tampered with")
        part.replace(index)
    return img, image, index


def verify_image(store: BlobStore, ref: str, anchor: trust.Anchor, full: bool = True,
                 progress: Callable[[str, int], Progress] | None = None) -> dict[str, Any]:
    """Signature, revocation, and every file of the image: present with its size and, with
    `full`, its content hashed again. Raises on the first kind of failure, listing all files."""
    img = verify_for_consumer(store, ref, anchor)
    problems, checked = [], []
    for f in img.manifest.files:
        info = store.stat(f.key)
        if info is None or info.size != f.size:
            problems.append(f"{f.path}: {f.key} {'missing' if info is None else f'has {info.size} bytes'}")
            continue
        if full:
            actual = store.digest(f.key, progress(f"verify {f.path}", f.size) if progress else None)
            if actual != f.sha256:
                problems.append(f"{f.path}: {f.key} has sha256 {actual}")
                continue
        checked.append(f.path)
    if problems:
        raise BuildError(f"{img.ref}: {len(problems)} file(s) fail verification:\n  " + "\n  ".join(problems),
                         hint="the store was damaged or tampered with; do not use this image")
    return {"ref": img.ref, "store": store.name, "signature": "valid", "revoked": False,
            "files": checked, "content_checked": full}


def presigned_url(store: BlobStore, ref: str, anchor: trust.Anchor, expires: dt.timedelta) -> tuple[
        PublishedImage, str]:
    """A time-limited GET URL of a verified image's blob (S3), or the served URL (local)."""
    img = verify_for_consumer(store, ref, anchor)
    return img, store.presign(img.manifest.image.key, expires)


# --- index.html ---------------------------------------------------------------------------------

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
    autoescape=True,  # names, reasons and versions come from publishers: never markup
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
)


def render_html(idx: dict[str, Any], store: str) -> str:
    """The static catalogue page: per image, channel heads and a row per version (newest first)
    with OS, RKE2/Zarf, size, tests, STIG gate and links relative to the store root."""
    images = []
    for name, versions in sorted(idx.get("images", {}).items()):
        images.append({"name": name, "heads": channel_heads(versions),
                       "versions": sorted(versions, key=lambda v: str(v["version"]), reverse=True)})
    return _env.get_template("catalogue.html.j2").render(
        images=images, store=store, updated=idx.get("updated", ""), default_channel=DEFAULT_CHANNEL)
