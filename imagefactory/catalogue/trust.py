"""The catalogue's TUF metadata: which manifests are current, signed and versioned, so that a
writer of the store who holds no key cannot roll back, freeze or mix catalogue states.

A manifest's own signature says who made it, not whether it is still the current one: restore
an older, validly signed manifest (from before its revocation) and drop the newer one from
`index.json`, and a manifest-only check accepts it. The Update Framework answers "what is
current" with the reference implementation (python-tuf: the Metadata API here, the ngclient
`Updater` for consumers).

Layout in the store (consistent snapshots: a reader never mixes versions of a role)::

    tuf/<N>.root.json        every root version, kept (a client walks N, N+1, ... to the newest)
    tuf/<N>.targets.json     targets: each published manifest and each name's channels file
    tuf/<N>.snapshot.json    the targets version that is current
    tuf/timestamp.json       the snapshot version that is current; the one mutable file

Targets (length and sha256 each), stored as TUF's consistent snapshots store them: target
`dir/name` is the object `dir/<sha256>.name`, written before the metadata that names it, so a
reader sees a whole old state or a whole new one, and a writer that dies half-way leaves nothing
inconsistent (promote and revoke change a manifest; its plain key is rewritten last, for people
and for the listing):
- `images/<name>/<version>/manifest.json`: the manifest that is current, revocation included;
- `images/<name>/channels.json`: the name's versions, their channels and revocation, and each
  channel's head: what `NAME@CHANNEL` and `NAME` resolve through (index.json is only a cache for
  listings and the page).

Roles and keys: root is signed by the root keys (`signing.root_private_keys`, threshold
`signing.root_threshold`; by default the manifest key alone), kept offline where it matters;
targets, snapshot and timestamp by the online key, the manifest key that publishes already.
Expiry: root 365 days, targets 365 days, snapshot 30 days, timestamp 7 days. Every publish,
promote, revoke and prune signs new targets, snapshot and timestamp; `imagefactory trust refresh`
(nightly) signs a new timestamp so that a quiet catalogue does not expire.

The writer never signs what it did not verify: the current metadata is checked against the root
before it is changed, and every manifest it lists again must still have the length and hash the
current targets give it (a manifest put back from before a revocation is refused, not re-signed).

Consumers (`TrustedCatalogue`) keep the trusted metadata per store under `<workdir>/trust/`:
the first root comes from the store and is accepted only if its root role is exactly the anchor
keys from the configuration; later roots must chain from it. ngclient refuses lower versions
than the ones kept (rollback), expired metadata (freeze), and a snapshot or targets that the
timestamp and snapshot do not name (mix-and-match).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from ..config import SigningConfig
from ..errors import BuildError, UserError
from . import signing
from .manifest import Manifest, channel_heads, manifest_key, parse_manifest, parse_ref
from .stores import BlobStore, NotFound

log = logging.getLogger(__name__)

PREFIX = "tuf/"
EXPIRY = {"root": dt.timedelta(days=365), "targets": dt.timedelta(days=365),
          "snapshot": dt.timedelta(days=30), "timestamp": dt.timedelta(days=7)}
MANIFEST_PATH = re.compile(r"^images/([a-z0-9][a-z0-9._-]*)/([^/]+)/manifest\.json$")
TARGET_NAME = re.compile(r"^images/([a-z0-9][a-z0-9._-]*)/")  # every target belongs to one image name
_SERIALIZER = JSONSerializer(compact=False)


class TrustError(signing.SignatureError):
    """The catalogue's TUF metadata was refused (rollback, freeze, bad signature, wrong root)."""


def role_name(name: str) -> str:
    """The delegated targets role of one image name: a channel move or a revocation re-signs only
    that role (plus snapshot and timestamp), so what a consumer fetches does not grow with the
    catalogue."""
    return f"image-{name}"


def channels_key(name: str) -> str:
    return f"images/{name}/channels.json"


def stored_key(path: str, sha256: str) -> str:
    """Where target `path` with that content is stored (TUF's hash-prefixed target names)."""
    head, _, base = path.rpartition("/")
    return f"{head}/{sha256}.{base}" if head else f"{sha256}.{base}"


def _expires(role: str) -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0) + EXPIRY[role]


def _key(public: Ed25519PublicKey) -> SSlibKey:
    return SSlibKey.from_crypto(public)


@dataclass(frozen=True)
class Keys:
    """A writer's keys: the online key (targets, snapshot, timestamp; the manifest key) and the
    root keys (only where a root is made or rotated; empty elsewhere). With `memory`, the writer
    first checks the store as a consumer does, against the metadata it trusted before: a writer
    that signed on top of a replayed older state would undo whatever came after it."""

    online: Ed25519PrivateKey
    root: tuple[Ed25519PrivateKey, ...]
    threshold: int = 1
    memory: Anchor | None = None

    @classmethod
    def single(cls, private: Ed25519PrivateKey, memory: Path | None = None) -> Keys:
        anchor = Anchor.single(private.public_key(), memory) if memory else None
        return cls(private, (private,), 1, anchor)

    @classmethod
    def from_config(cls, cfg: SigningConfig | None, online: Ed25519PrivateKey,
                    memory: Anchor | None = None) -> Keys:
        """The online key, and the root keys where they are (none on a host that only publishes
        to a catalogue whose root was made elsewhere)."""
        if cfg is None:
            return cls(online, (online,), 1, memory)
        if cfg.root_private_keys:
            root = tuple(signing.load_private_key(k) for k in cfg.root_private_keys)
        else:
            root = () if cfg.root_keys else (online,)
        return cls(online, root, cfg.root_threshold, memory)


@dataclass(frozen=True)
class Anchor:
    """A consumer's trust: the manifest key, the keys and threshold of the first root, and the
    directory where it keeps the metadata it trusts (what makes a rollback visible). `grace` is
    how long past its expiry metadata is still accepted - zero at the factory; a disconnected
    site's own, explicit policy (accepting it is logged as a warning every time)."""

    manifest_key: Ed25519PublicKey
    root_keys: tuple[Ed25519PublicKey, ...]
    threshold: int
    state: Path
    grace: dt.timedelta = dt.timedelta(0)

    @classmethod
    def single(cls, public: Ed25519PublicKey, state: Path) -> Anchor:
        return cls(public, (public,), 1, state)

    @classmethod
    def from_config(cls, cfg: SigningConfig, public: Ed25519PublicKey, state: Path) -> Anchor:
        roots = tuple(signing.load_public_key(k) for k in cfg.root_keys) or (public,)
        return cls(public, roots, cfg.root_threshold, state)


# --- the repository side --------------------------------------------------------------------


@dataclass
class _Current:
    root: Metadata[Root]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]
    roles: dict[str, Metadata[Targets]]  # the delegated per-name roles, by role name
    changed: set[str] = dataclasses.field(default_factory=set)  # roles to sign again

    def role_of(self, path: str) -> Targets | None:
        name = _name_of(path)
        md = self.roles.get(role_name(name)) if name else None
        return md.signed if md else None


def _load(store: BlobStore, key: str) -> Metadata[Any] | None:
    try:
        data, _ = store.get_bytes(key)
    except NotFound:
        return None
    try:
        return Metadata.from_bytes(data)
    except DeserializationError as e:
        raise TrustError(f"{store.describe()}: {key} is not TUF metadata ({e})",
                         hint="it was damaged or tampered with; restore it from a backup") from None


def _verify(root: Metadata[Root], role: str, md: Metadata[Any], what: str) -> None:
    try:
        root.signed.verify_delegate(role, md.signed_bytes, md.signatures)
    except tuf_errors.UnsignedMetadataError as e:
        raise TrustError(f"{what}: not signed by the {role} key(s) of the current root ({e})",
                         hint="the store's TUF metadata was changed without the keys; restore it") from None


def _latest_root(store: BlobStore) -> Metadata[Root] | None:
    """The newest root, each one verified by its predecessor and by itself."""
    root = _load(store, f"{PREFIX}1.root.json")
    if root is None:
        return None
    _verify(root, "root", root, f"{store.describe()}: {PREFIX}1.root.json")
    while (nxt := _load(store, f"{PREFIX}{root.signed.version + 1}.root.json")) is not None:
        what = f"{store.describe()}: {PREFIX}{root.signed.version + 1}.root.json"
        _verify(root, "root", nxt, what)
        _verify(nxt, "root", nxt, what)
        root = nxt
    return root


def _current(store: BlobStore) -> _Current | None:
    root = _latest_root(store)
    if root is None:
        return None
    where = store.describe()
    ts = _load(store, f"{PREFIX}timestamp.json")
    if ts is None:
        raise TrustError(f"{where}: {PREFIX}timestamp.json is missing", hint="restore it from a backup")
    _verify(root, "timestamp", ts, f"{where}: timestamp.json")
    sv = ts.signed.snapshot_meta.version
    snap = _load(store, f"{PREFIX}{sv}.snapshot.json")
    if snap is None:
        raise TrustError(f"{where}: {PREFIX}{sv}.snapshot.json (named by timestamp.json) is missing")
    _verify(root, "snapshot", snap, f"{where}: {sv}.snapshot.json")
    tv = snap.signed.meta["targets.json"].version
    targets = _load(store, f"{PREFIX}{tv}.targets.json")
    if targets is None:
        raise TrustError(f"{where}: {PREFIX}{tv}.targets.json (named by the snapshot) is missing")
    _verify(root, "targets", targets, f"{where}: {tv}.targets.json")
    roles: dict[str, Metadata[Targets]] = {}
    for name in (targets.signed.delegations.roles if targets.signed.delegations else {}):
        meta = snap.signed.meta.get(f"{name}.json")
        md = _load(store, f"{PREFIX}{meta.version}.{name}.json") if meta else None
        if md is None:
            raise TrustError(f"{where}: the TUF role {name} (delegated by targets) is missing")
        try:
            targets.signed.verify_delegate(name, md.signed_bytes, md.signatures)
        except tuf_errors.UnsignedMetadataError as e:
            raise TrustError(f"{where}: {meta.version}.{name}.json is not signed by its key ({e})") from None
        roles[name] = md
    return _Current(root, targets, snap, ts, roles)


def _put(store: BlobStore, key: str, md: Metadata[Any], create: bool = False) -> None:
    store.put_bytes(key, md.to_bytes(_SERIALIZER), if_none_match=create)


def _signer(private: Ed25519PrivateKey) -> CryptoSigner:
    return CryptoSigner(private, _key(private.public_key()))


def make_root(keys: Keys, version: int = 1) -> Metadata[Root]:
    if not keys.root:
        raise UserError("making the catalogue's TUF root needs the root keys (signing.root_private_keys)",
                        hint="run 'imagefactory trust init' where the root keys are")
    root = Root(version=version, expires=_expires("root"), consistent_snapshot=True)
    for k in keys.root:
        root.add_key(_key(k.public_key()), Root.type)
    root.roles[Root.type].threshold = keys.threshold
    for role in (Targets.type, Snapshot.type, Timestamp.type):
        root.add_key(_key(keys.online.public_key()), role)
    md = Metadata(root)
    for k in keys.root:
        md.sign(_signer(k), append=True)
    return md


def _adoptable(store: BlobStore, public: Ed25519PublicKey) -> dict[str, bytes]:
    """Every manifest in a store without TUF metadata whose signature verifies (trust init)."""
    out = {}
    for info in store.list("images/"):
        if not MANIFEST_PATH.match(info.key):
            continue
        try:
            data, _ = store.get_bytes(info.key)
            signing.verify(json.loads(data), public, info.key)
        except (NotFound, ValueError, BuildError) as e:
            log.warning("not adopting %s into the TUF targets: %s", info.key, e)
            continue
        out[info.key] = data
    return out


def initialize(store: BlobStore, keys: Keys) -> _Current:
    """Root 1 and the first targets, snapshot and timestamp; the manifests already in the store
    (signature verified) become the first targets."""
    root = make_root(keys)
    _put(store, f"{PREFIX}1.root.json", root, create=True)
    adopted = _adoptable(store, keys.online.public_key())
    empty = _Current(root, Metadata(Targets()), Metadata(Snapshot()), Metadata(Timestamp()), {})
    for md in (empty.targets, empty.snapshot, empty.timestamp):
        md.signed.version = 0  # the first signed version is 1
    empty.changed.add(Targets.type)
    names = sorted({m.group(1) for k in adopted if (m := MANIFEST_PATH.match(k))})
    return _commit(store, keys, empty, adopted, set(), names)


def check_writer(store: BlobStore, keys: Keys) -> _Current | None:
    """Before anything is written: the store's current metadata verified (and, with the writer's
    memory, not older than what it trusted before), and the online key the root's targets key."""
    if keys.memory is not None and initialized(store):
        TrustedCatalogue(store, keys.memory)
    cur = _current(store)
    if cur is not None:
        _check_online_key(store, cur.root, keys)
    return cur


def update(store: BlobStore, keys: Keys, manifests: dict[str, bytes],
           removed: frozenset[str] = frozenset()) -> None:
    """Sign new targets (the given manifests current, `removed` gone, the channels files of their
    names derived again), snapshot and timestamp. Called under the catalogue lock."""
    cur = check_writer(store, keys)
    if cur is None:
        cur = initialize(store, keys)
    names = sorted({m.group(1) for k in (*manifests, *removed) if (m := MANIFEST_PATH.match(k))})
    _commit(store, keys, cur, manifests, set(removed), names)


def _check_online_key(store: BlobStore, root: Metadata[Root], keys: Keys) -> None:
    want = _key(keys.online.public_key()).keyid
    if want not in root.signed.roles[Targets.type].keyids:
        raise UserError(f"{store.describe()}: the signing key is not the catalogue's targets key in its "
                        f"TUF root (version {root.signed.version})",
                        hint="use the key the catalogue was made with, or rotate the root "
                             "('imagefactory trust rotate') where the root keys are")


def _name_of(path: str) -> str | None:
    m = TARGET_NAME.match(path)
    return m.group(1) if m else None


def _role(cur: _Current, keys: Keys, name: str) -> Targets:
    """The delegated role of image `name`, made (and delegated by targets) the first time."""
    rname = role_name(name)
    md = cur.roles.get(rname)
    if md is None:
        t = cur.targets.signed
        if t.delegations is None:
            t.delegations = Delegations(keys={}, roles={})
        assert t.delegations.roles is not None
        key = _key(keys.online.public_key())
        t.delegations.keys[key.keyid] = key
        t.delegations.roles[rname] = DelegatedRole(rname, [key.keyid], 1, True,
                                                   [f"images/{name}/*", f"images/{name}/*/*"])
        cur.changed.add(Targets.type)
        md = Metadata(Targets())
        md.signed.version = 0
        cur.roles[rname] = md
    cur.changed.add(rname)
    return md.signed


def _commit(store: BlobStore, keys: Keys, cur: _Current, manifests: dict[str, bytes], removed: set[str],
            names: list[str]) -> _Current:
    for name in names:
        t = _role(cur, keys, name)
        for path in removed:
            if _name_of(path) == name:
                t.targets.pop(path, None)
        for path, data in manifests.items():
            if _name_of(path) == name:
                t.targets[path] = _stage(store, path, data)
        doc = _channels_doc(store, name, t, manifests)
        if doc is None:
            t.targets.pop(channels_key(name), None)
            continue
        t.targets[channels_key(name)] = _stage(store, channels_key(name),
                                               (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return _sign_new(store, keys, cur)


def _stage(store: BlobStore, path: str, data: bytes) -> TargetFile:
    """Store a target's content under its hash-prefixed key; its TUF description."""
    info = TargetFile.from_data(path, data, ["sha256"])
    store.put_bytes(stored_key(path, info.hashes["sha256"]), data, content_type="application/json")
    return info


def _sign_new(store: BlobStore, keys: Keys, cur: _Current) -> _Current:
    """Sign the changed targets roles, then a snapshot naming every role's version, then the
    timestamp naming the snapshot (the order a reader's view switches in)."""
    online = _signer(keys.online)
    for rname, md in [(Targets.type, cur.targets), *sorted(cur.roles.items())]:
        if rname not in cur.changed:
            continue
        md.signed.version += 1
        md.signed.expires = _expires("targets")
        md.signatures.clear()
        md.sign(online)
        _put(store, f"{PREFIX}{md.signed.version}.{rname}.json", md)
    cur.changed.clear()
    s = cur.snapshot.signed
    s.meta = {"targets.json": MetaFile(version=cur.targets.signed.version),
              **{f"{r}.json": MetaFile(version=md.signed.version) for r, md in sorted(cur.roles.items())}}
    s.version += 1
    s.expires = _expires("snapshot")
    cur.snapshot.signatures.clear()
    cur.snapshot.sign(online)
    _put(store, f"{PREFIX}{s.version}.snapshot.json", cur.snapshot)
    ts = cur.timestamp.signed
    ts.snapshot_meta = MetaFile(version=s.version)
    ts.version += 1
    ts.expires = _expires("timestamp")
    cur.timestamp.signatures.clear()
    cur.timestamp.sign(online)
    _put(store, f"{PREFIX}timestamp.json", cur.timestamp)  # last: the switch to the new state
    return cur


def _channels_doc(store: BlobStore, name: str, t: Targets, new: dict[str, bytes]) -> dict[str, Any] | None:
    """The name's channels file from the manifests the targets list for it, each one checked
    against the targets before it is trusted (a replaced manifest is refused, not re-signed)."""
    entries = []
    for path, info in sorted(t.targets.items()):
        m = MANIFEST_PATH.match(path)
        if not m or m.group(1) != name:
            continue
        data = new.get(path)
        if data is None:
            data = _read_target(store, path, info)
        mf = parse_manifest(json.loads(data), path)
        entries.append({"version": mf.version, "channels": list(mf.channels),
                        "revoked": mf.revoked.model_dump() if mf.revoked else None})
    if not entries:
        return None
    usable = [str(e["version"]) for e in entries if not e["revoked"]]
    return {"name": name, "versions": entries, "heads": channel_heads(entries),
            "latest": max(usable) if usable else None}


def _read_target(store: BlobStore, path: str, info: TargetFile) -> bytes:
    key = stored_key(path, info.hashes["sha256"])
    try:
        data, _ = store.get_bytes(key)
        info.verify_length_and_hashes(data)
    except NotFound:
        raise TrustError(f"{store.describe()}: {key} ({path} as the current TUF targets list it) is missing",
                         hint="not delivered with the newest metadata this store has (an older delivery, "
                              "replayed or made before a revocation) or deleted; nothing was used") from None
    except tuf_errors.LengthOrHashMismatchError:
        raise TrustError(f"{store.describe()}: {key} is not the {path} the TUF targets list (changed in "
                         "the store)", hint="do not use it; restore the file; nothing was signed") from None
    return data


def initialized(store: BlobStore) -> bool:
    return store.stat(f"{PREFIX}1.root.json") is not None


def lists(store: BlobStore, path: str) -> bool:
    """Whether the current (verified) targets list `path`."""
    cur = _current(store)
    role = cur.role_of(path) if cur else None
    return role is not None and path in role.targets


def current_manifest(store: BlobStore, key: str) -> dict[str, Any] | None:
    """The manifest at `key` as the current targets list it (None: not listed, or no TUF yet)."""
    cur = _current(store)
    role = cur.role_of(key) if cur else None
    info = role.targets.get(key) if role else None
    if info is None:
        return None
    doc: dict[str, Any] = json.loads(_read_target(store, key, info))
    return doc


def site_metadata(store: BlobStore, refs: list[tuple[str, str]]) -> dict[str, bytes]:
    """What a site needs to verify `refs` (name, version) through TUF on its own, offline: every
    root version (a site walks the chain from the one it trusts), the current timestamp,
    snapshot, top-level targets and the images' roles, and each image's manifest and channels
    file as the targets name them. Keys are the store's, so the site's store mirrors them."""
    cur = _current(store)
    if cur is None:
        raise UserError(f"{store.describe()} has no TUF metadata yet",
                        hint="'imagefactory trust init' (or a publish) makes it")
    out: dict[str, bytes] = {}
    for v in range(1, cur.root.signed.version + 1):
        out[f"{PREFIX}{v}.root.json"] = store.get_bytes(f"{PREFIX}{v}.root.json")[0]
    out[f"{PREFIX}timestamp.json"] = cur.timestamp.to_bytes(_SERIALIZER)
    out[f"{PREFIX}{cur.snapshot.signed.version}.snapshot.json"] = cur.snapshot.to_bytes(_SERIALIZER)
    out[f"{PREFIX}{cur.targets.signed.version}.targets.json"] = cur.targets.to_bytes(_SERIALIZER)
    for name, version in refs:
        md = cur.roles.get(role_name(name))
        if md is None:
            raise UserError(f"{name}: not in the catalogue's TUF targets")
        out[f"{PREFIX}{md.signed.version}.{role_name(name)}.json"] = md.to_bytes(_SERIALIZER)
        for path in (manifest_key(name, version), channels_key(name)):
            info = md.signed.targets.get(path)
            if info is None:
                raise UserError(f"{name}:{version}: {path} is not in the catalogue's TUF targets",
                                hint="publish it again (a revoked or pruned version cannot be sent)")
            out[stored_key(path, info.hashes["sha256"])] = _read_target(store, path, info)
    return out


SITE_METADATA = re.compile(r"^(tuf/[0-9]+\.[a-z0-9._-]+\.json|tuf/timestamp\.json"
                           r"|images/[a-z0-9][a-z0-9._-]*/([^/]+/)?[0-9a-f]{64}\.(manifest|channels)\.json)$")


def refresh_timestamp(store: BlobStore, keys: Keys) -> int:
    """A new snapshot and timestamp over the current targets (a quiet catalogue stays fresh);
    returns the new timestamp version."""
    with store.lock("refreshing the TUF timestamp"):
        cur = check_writer(store, keys)
        if cur is None:
            raise UserError(f"{store.describe()} has no TUF metadata yet",
                            hint="'imagefactory trust init' (or the first publish) makes it")
        return _sign_new(store, keys, cur).timestamp.signed.version


def rotate_root(store: BlobStore, old: Keys, new: Keys) -> int:
    """Root N+1 with the new keys, signed by the old root keys and the new ones."""
    with store.lock("rotating the TUF root"):
        cur = check_writer(store, old)
        if cur is None:
            raise UserError(f"{store.describe()} has no TUF metadata yet")
        md = make_root(new, cur.root.signed.version + 1)
        for k in old.root:
            md.sign(_signer(k), append=True)
        _verify(cur.root, "root", md, "the new root")
        _put(store, f"{PREFIX}{md.signed.version}.root.json", md, create=True)
        # targets, snapshot and timestamp signed again by the (possibly new) online key
        cur.root = md
        # the per-name roles are delegated to the (possibly new) online key as well
        d = cur.targets.signed.delegations
        if d is not None and d.roles:
            key = _key(new.online.public_key())
            d.keys = {key.keyid: key}
            for role in d.roles.values():
                role.keyids = [key.keyid]
        cur.changed.update([Targets.type, *cur.roles])
        _sign_new(store, new, cur)
        return md.signed.version


def status(store: BlobStore) -> dict[str, Any]:
    cur = _current(store)
    if cur is None:
        return {"store": store.name, "initialized": False}

    def role(md: Metadata[Any]) -> dict[str, Any]:
        return {"version": md.signed.version, "expires": md.signed.expires.isoformat(),
                "bytes": len(md.to_bytes(_SERIALIZER))}

    return {"store": store.name, "initialized": True, "root": role(cur.root),
            "targets": {**role(cur.targets), "roles": len(cur.roles),
                        "count": sum(len(md.signed.targets) for md in cur.roles.values())},
            "snapshot": role(cur.snapshot), "timestamp": role(cur.timestamp),
            "root_threshold": cur.root.signed.roles[Root.type].threshold}


# --- the consumer side ----------------------------------------------------------------------


class _StoreFetcher(FetcherInterface):
    """ngclient's downloads, from the store (S3 or a directory) instead of a URL."""

    BASE = "imagefactory-store:///"

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def _fetch(self, url: str) -> Iterator[bytes]:
        key = url.removeprefix(self.BASE)
        try:
            data, _ = self.store.get_bytes(key)
        except NotFound:
            raise tuf_errors.DownloadHTTPError(f"{key} not found", 404) from None
        return iter([data])


def _state_dir(anchor: Anchor, store: BlobStore) -> Path:
    # per store *location*: two stores of the same name elsewhere never share (or roll back) state
    tag = hashlib.sha256(store.describe().encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", store.name)
    return anchor.state / f"{safe}-{tag}"


class TrustedCatalogue:
    """A store's catalogue as its TUF metadata says it is now, verified (see the module docstring)."""

    def __init__(self, store: BlobStore, anchor: Anchor) -> None:
        self.store = store
        self.anchor = anchor
        d = _state_dir(anchor, store)
        d.mkdir(parents=True, exist_ok=True)
        bootstrap = None if (d / "root.json").is_file() else self._first_root()
        try:
            self.updater = Updater(str(d), _StoreFetcher.BASE + PREFIX, fetcher=_StoreFetcher(store),
                                   bootstrap=bootstrap)
            if anchor.grace:
                # ngclient checks expiry against the time its trusted set was made; a site's grace
                # moves that reference back (python-tuf has no public setting for it)
                self.updater._trusted_set.reference_time -= anchor.grace
            self.updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, DeserializationError, ValueError) as e:
            raise TrustError(f"{store.describe()}: the catalogue's TUF metadata was refused: "
                             f"{_explain(e)}", hint=_hint(e)) from None
        if anchor.grace:
            ts = self.updater._trusted_set.timestamp
            late = dt.datetime.now(dt.UTC) - ts.expires
            if late > dt.timedelta(0):
                log.warning("%s: the catalogue's TUF timestamp (v%d) expired %s ago; accepted under this "
                            "site's policy (metadata up to %s past expiry)", store.describe(), ts.version,
                            str(late).split(".")[0], anchor.grace)

    def _first_root(self) -> bytes:
        try:
            data, _ = self.store.get_bytes(f"{PREFIX}1.root.json")
        except NotFound:
            raise TrustError(f"{self.store.describe()} has no TUF metadata ({PREFIX}1.root.json)",
                             hint="publish to it with this version of imagefactory, or run "
                                  "'imagefactory trust init' where the keys are") from None
        try:
            root = Metadata[Root].from_bytes(data)
        except DeserializationError as e:
            raise TrustError(f"{self.store.describe()}: {PREFIX}1.root.json is not TUF metadata ({e})"
                             ) from None
        want = {_key(k).keyid for k in self.anchor.root_keys}
        role = root.signed.roles[Root.type]
        if set(role.keyids) != want or role.threshold < self.anchor.threshold:
            raise TrustError(f"{self.store.describe()}: its first TUF root is not signed for the configured "
                             f"root keys (it names {len(role.keyids)} key(s), threshold {role.threshold})",
                             hint="this store's catalogue was made with other keys; check "
                                  "signing.root_keys (or signing.public_key) in imagefactory.yaml")
        return data

    def _target(self, path: str) -> tuple[TargetFile, bytes] | None:
        try:
            info = self.updater.get_targetinfo(path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            raise TrustError(f"{self.store.describe()}: the catalogue's TUF metadata was refused: "
                             f"{_explain(e)}", hint=_hint(e)) from None
        if info is None:
            return None
        return info, _read_target(self.store, path, info)

    def channels(self, name: str) -> dict[str, Any] | None:
        got = self._target(channels_key(name))
        return None if got is None else dict(json.loads(got[1]))

    def resolve(self, ref: str) -> tuple[str, str, str | None]:
        """(name, version, channel asked for), from the signed channels file."""
        r = parse_ref(ref)
        if r.version:
            return r.name, r.version, None
        doc = self.channels(r.name)
        if doc is None:
            raise UserError(f"{ref}: no such image in store {self.store.describe()}",
                            hint="see 'imagefactory images list'")
        if r.channel:
            version = doc["heads"].get(r.channel)
            if version is None:
                raise UserError(f"{ref}: channel '{r.channel}' has no usable version of {r.name}",
                                hint="promote one: 'imagefactory images promote NAME:VERSION --channel "
                                     f"{r.channel}'")
            return r.name, str(version), r.channel
        if doc.get("latest") is None:
            raise UserError(f"{ref}: every version of {r.name} is revoked")
        return r.name, str(doc["latest"]), None

    def manifest(self, name: str, version: str) -> tuple[dict[str, Any], Manifest]:
        """The current manifest of name:version (length and hash as the targets say), parsed."""
        key = manifest_key(name, version)
        got = self._target(key)
        if got is None:
            raise UserError(f"{name}:{version}: not published in store {self.store.describe()} (not in "
                            "its signed TUF targets)", hint="see 'imagefactory images list'")
        raw = json.loads(got[1])
        return raw, parse_manifest(raw, key)


def _explain(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, tuf_errors.ExpiredMetadataError):
        return f"{text} (expired: the catalogue was not refreshed, or a stale copy is being served)"
    if isinstance(e, tuf_errors.BadVersionNumberError):
        return (f"{text} (a rollback: older metadata than this consumer trusted before, or than the "
                "snapshot names)")
    return text


def _hint(e: Exception) -> str:
    if isinstance(e, tuf_errors.ExpiredMetadataError):
        return "at the factory: 'imagefactory trust refresh' signs a new timestamp"
    return "do not use this store until its metadata is restored; nothing was used"
