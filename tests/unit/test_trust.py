"""The catalogue's TUF metadata against the attacks it exists for: a store writer without keys
replays a revoked image's older manifest, rolls the metadata back, freezes it, mixes versions;
plus root rotation, a catalogue published before TUF, and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagefactory.catalogue import signing, trust
from imagefactory.catalogue.catalogue import Catalogue, RevokedImage, index_entry, verify_for_consumer
from imagefactory.catalogue.manifest import manifest_key, parse_manifest
from imagefactory.catalogue.publish import publish
from imagefactory.catalogue.stores import LocalDirStore
from imagefactory.catalogue.trust import Anchor, Keys, TrustError
from imagefactory.errors import UserError
from tests.publishing import fake_build, trusted_sha256

NAME = "debian-12-base"
V1, V2 = "20261201.010000-aaaa", "20261202.010000-bbbb"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path, key: Ed25519PrivateKey) -> LocalDirStore:
    s = LocalDirStore("local", tmp_path / "catalogue")
    for i, v in enumerate((V1, V2), 1):
        publish(fake_build(tmp_path / "w", version=v, seed=i, size=64 * 1024), s, key)
    return s


def _snapshot_of(store: LocalDirStore) -> dict[str, bytes]:
    """Every object in the store, as a writer without keys could save and put back."""
    return {p.relative_to(store.root).as_posix(): p.read_bytes()
            for p in store.root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def _restore(store: LocalDirStore, saved: dict[str, bytes], keys: list[str]) -> None:
    for k in keys:
        (store.root / k).write_bytes(saved[k])


def test_a_revoked_image_is_not_pulled_again_from_a_replayed_manifest(
        tmp_path: Path, store: LocalDirStore, key: Ed25519PrivateKey) -> None:
    """The attack that worked before TUF: put back the manifest from before the revocation and
    drop the revocation from index.json. Now refused, with the metadata replayed as well."""
    pub = key.public_key()
    consumer = Anchor.single(pub, tmp_path / "trust")
    cat = Catalogue(store, Keys.single(key))
    cat.promote(f"{NAME}:{V2}", "stable", key, pub)
    assert verify_for_consumer(store, f"{NAME}@stable", consumer).manifest.version == V2
    before = _snapshot_of(store)
    cat.revoke(f"{NAME}:{V2}", "CVE-2026-0001 in the kernel", key, pub)
    with pytest.raises(RevokedImage):
        verify_for_consumer(store, f"{NAME}:{V2}", consumer)

    # 1. the old manifest back in place, the index rewritten to say it is not revoked
    m2 = manifest_key(NAME, V2)
    _restore(store, before, [m2])
    idx = json.loads((store.root / "index.json").read_text())
    idx["images"][NAME] = [index_entry(parse_manifest(json.loads(before[m2]), m2), m2) if v["version"] == V2
                           else v for v in idx["images"][NAME]]
    (store.root / "index.json").write_text(json.dumps(idx))
    assert Catalogue(store).resolve(f"{NAME}@stable")[1] == V2  # the index is fooled
    with pytest.raises(RevokedImage):
        verify_for_consumer(store, f"{NAME}:{V2}", consumer)
    with pytest.raises(Exception, match="channel 'stable' has no usable version"):
        verify_for_consumer(store, f"{NAME}@stable", consumer)

    # 2. and the whole TUF state from before the revocation put back (validly signed, older)
    tuf_keys = [k for k in before if k.startswith("tuf/")]
    for k in [k for k in _snapshot_of(store) if k.startswith("tuf/")]:
        (store.root / k).unlink()
    _restore(store, before, tuf_keys)
    with pytest.raises(TrustError, match="rollback") as e:
        verify_for_consumer(store, f"{NAME}@stable", consumer)
    assert "nothing was used" in (e.value.hint or "")
    # a writer with the key that remembers the newer state is not tricked into signing on top
    # of the replayed one (which would undo the revocation for every new consumer)
    writer = Keys(key, (key,), 1, consumer)
    with pytest.raises(TrustError, match="rollback"):
        Catalogue(store, writer).promote(f"{NAME}:{V1}", "stable", key, pub)


def test_frozen_metadata_expires_and_a_refresh_thaws_it(tmp_path: Path, store: LocalDirStore,
                                                        key: Ed25519PrivateKey,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = Anchor.single(key.public_key(), tmp_path / "trust")
    assert verify_for_consumer(store, NAME, consumer).manifest.version == V2
    monkeypatch.setitem(trust.EXPIRY, "timestamp", dt.timedelta(seconds=-1))
    trust.refresh_timestamp(store, Keys.single(key))  # what a frozen mirror keeps serving
    with pytest.raises(TrustError, match="expired") as e:
        verify_for_consumer(store, NAME, consumer)
    assert "trust refresh" in (e.value.hint or "")
    monkeypatch.setitem(trust.EXPIRY, "timestamp", dt.timedelta(days=7))
    trust.refresh_timestamp(store, Keys.single(key))
    assert verify_for_consumer(store, NAME, consumer).manifest.version == V2


def test_mixed_versions_are_refused(tmp_path: Path, store: LocalDirStore, key: Ed25519PrivateKey) -> None:
    """A validly signed older version of the image's targets role served under the current
    version's name (the snapshot names the version: mix-and-match)."""
    consumer = Anchor.single(key.public_key(), tmp_path / "trust")
    role = trust.role_name(NAME)
    cur = trust._current(store)
    assert cur is not None and set(cur.roles) == {role}
    v = cur.roles[role].signed.version
    assert v >= 2
    shutil.copy(store.root / f"tuf/{v - 1}.{role}.json", store.root / f"tuf/{v}.{role}.json")
    with pytest.raises(TrustError, match=f"Expected {role} v{v}, got v{v - 1}"):
        verify_for_consumer(store, NAME, consumer)


def test_a_staged_manifest_changed_in_the_store_is_refused(tmp_path: Path, store: LocalDirStore,
                                                            key: Ed25519PrivateKey) -> None:
    consumer = Anchor.single(key.public_key(), tmp_path / "trust")
    path = manifest_key(NAME, V1)
    staged = store.root / trust.stored_key(path, trusted_sha256(store, path))
    doc = json.loads(staged.read_text())
    staged.write_text(json.dumps({**doc, "channels": ["candidate", "stable"]}))
    with pytest.raises(TrustError, match=r"is not the images/.* the TUF targets list"):
        verify_for_consumer(store, f"{NAME}:{V1}", consumer)


def test_root_rotation_is_followed_and_a_foreign_root_is_refused(tmp_path: Path, store: LocalDirStore,
                                                                 key: Ed25519PrivateKey) -> None:
    old_consumer = Anchor.single(key.public_key(), tmp_path / "trust")
    assert verify_for_consumer(store, NAME, old_consumer).manifest.version == V2
    r1, r2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert trust.rotate_root(store, Keys.single(key), Keys(key, (r1, r2), 2)) == 2
    # a consumer that trusted root 1 walks to root 2 (signed by the old root and the new threshold)
    assert verify_for_consumer(store, NAME, old_consumer).manifest.version == V2
    # one that starts now, anchored in the first root's key, too
    fresh = Anchor.single(key.public_key(), tmp_path / "fresh")
    assert verify_for_consumer(store, NAME, fresh).manifest.version == V2
    # the old root key alone can no longer make a root
    with pytest.raises(TrustError, match="not signed by the root key"):
        trust.rotate_root(store, Keys.single(key), Keys.single(key))
    # a consumer anchored in other keys does not accept this catalogue
    stranger = Anchor(key.public_key(), (r1.public_key(), r2.public_key()), 2, tmp_path / "stranger")
    with pytest.raises(TrustError, match="first TUF root is not signed for the configured root keys"):
        verify_for_consumer(store, NAME, stranger)


def test_a_key_that_is_not_the_targets_key_cannot_publish(tmp_path: Path, store: LocalDirStore) -> None:
    other = Ed25519PrivateKey.generate()
    build = fake_build(tmp_path / "w", version="20261203.010000-cccc", seed=3, size=64 * 1024)
    with pytest.raises(UserError, match="not the catalogue's targets key"):
        publish(build, store, other)
    assert not (store.root / manifest_key(NAME, "20261203.010000-cccc")).exists()


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagefactory.cli", "--workdir", str(root / "w"),
                           "--config", str(root / "imagefactory.yaml"), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_a_catalogue_from_before_tuf_is_adopted_and_kept_fresh(tmp_path: Path) -> None:
    r = _cli(tmp_path, "keys", "generate", "-o", str(tmp_path / "keys"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "imagefactory.yaml").write_text(yaml.safe_dump({"signing": {
        "public_key": str(tmp_path / "keys/imagefactory.pub"),
        "private_key": str(tmp_path / "keys/imagefactory.key")}}))
    d = fake_build(tmp_path / "w", version=V1, size=64 * 1024)
    assert _cli(tmp_path, "publish", str(d)).returncode == 0
    shutil.rmtree(tmp_path / "w/catalogue/tuf")  # as a catalogue published before TUF
    r = _cli(tmp_path, "images", "verify", NAME)
    assert r.returncode == 1 and "has no TUF metadata" in r.stderr and "trust init" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = _cli(tmp_path, "--json", "trust", "init")
    assert r.returncode == 0 and json.loads(r.stdout)["manifests"] == 1, r.stderr
    r = _cli(tmp_path, "trust", "init")
    assert r.returncode == 2 and "already has TUF metadata" in r.stderr
    # the consumer's state (WORKDIR/trust) from before the init is gone with the root it trusted
    shutil.rmtree(tmp_path / "w/trust", ignore_errors=True)
    r = _cli(tmp_path, "images", "verify", NAME)
    assert r.returncode == 0, r.stderr
    status = json.loads(_cli(tmp_path, "--json", "trust", "status").stdout)
    ts = status["timestamp"]["version"]
    r = _cli(tmp_path, "--json", "trust", "refresh")
    assert r.returncode == 0 and json.loads(r.stdout)["timestamp_version"] == ts + 1, r.stderr
    r = _cli(tmp_path, "trust", "status")
    assert r.returncode == 0 and any(line.split()[:2] == ["timestamp", f"v{ts + 1}"]
                                     for line in r.stdout.splitlines()), r.stdout
    assert _cli(tmp_path, "images", "verify", NAME).returncode == 0


def test_signature_check_still_applies_behind_tuf(tmp_path: Path, store: LocalDirStore,
                                                  key: Ed25519PrivateKey) -> None:
    """A manifest the targets list but with a broken signature (only a key holder could list it):
    the manifest signature is checked as well, against the configured manifest key."""
    m1 = manifest_key(NAME, V1)
    doc = json.loads((store.root / m1).read_text())
    unsigned = (json.dumps({k: v for k, v in doc.items() if k != "signature"}) + "\n").encode()
    with store.lock("test"):
        trust.update(store, Keys.single(key), {m1: unsigned})
    with pytest.raises(signing.SignatureError, match="not signed"):
        verify_for_consumer(store, f"{NAME}:{V1}", Anchor.single(key.public_key(), tmp_path / "t"))
