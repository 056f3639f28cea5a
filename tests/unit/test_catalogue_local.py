"""The catalogue on the local (directory) store: publish order and layout, re-publishing,
channels, revocation, prune, pull/verify with tampering, concurrent publishers, index.html, and
the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagefactory.catalogue import signing
from imagefactory.catalogue.catalogue import (
    Catalogue,
    MissingBlobs,
    RevokedImage,
    pull,
    verify_for_consumer,
    verify_image,
)
from imagefactory.catalogue.manifest import manifest_key
from imagefactory.catalogue.publish import publish
from imagefactory.catalogue.stores import LocalDirStore
from imagefactory.catalogue.trust import Anchor, Keys, stored_key
from imagefactory.errors import BuildError, UserError
from tests.publishing import anchor, fake_build, trusted_sha256

NAME = "debian-12-base"
V1, V2, V3, V4 = (f"20261129.00000{i}-aaaa" for i in range(1, 5))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path) -> LocalDirStore:
    return LocalDirStore("local", tmp_path / "catalogue")


def _publish(tmp_path: Path, store: LocalDirStore, key: Ed25519PrivateKey, version: str, seed: int,
             **kw: Any) -> Any:
    d = tmp_path / "w" / "builds" / NAME / version
    if not d.exists():
        fake_build(tmp_path / "w", version=version, seed=seed, **kw)
    return publish(d, store, key)


def _check_no_dangling(store: LocalDirStore) -> None:
    """Every manifest's blobs exist with their size (the invariant readers rely on)."""
    for _, m, key in Catalogue(store).manifests():
        for f in m.files:
            info = store.stat(f.key)
            assert info is not None and info.size == f.size, f"{key} -> {f.key} missing"


def test_publish_layout_signature_index_and_page(tmp_path: Path, store: LocalDirStore,
                                                 key: Ed25519PrivateKey) -> None:
    r = _publish(tmp_path, store, key, V1, 1, rke2=True)
    assert (r.ref, r.unchanged, r.channels) == (f"{NAME}:{V1}", False, ["candidate"])
    assert r.uploaded_bytes == r.blob_bytes and r.files == 9
    root = store.root
    raw = json.loads((root / manifest_key(NAME, V1)).read_text())
    signing.verify(raw, key.public_key(), "published")
    for f in raw["files"]:
        assert (root / "blobs/sha256" / f["sha256"]).stat().st_size == f["size"]
    idx = json.loads((root / "index.json").read_text())
    entry = idx["images"][NAME][0]
    assert entry["version"] == V1 and entry["rke2"] == "v1.31.4+rke2r1" and entry["channels"] == ["candidate"]
    assert entry["links"]["stig_html"] == f"blobs/sha256/{raw['files'][5]['sha256']}"
    html = (root / "index.html").read_text()
    assert f'href="images/{NAME}/{V1}/manifest.json"' in html
    assert "STIG report" in html and "gate passed" in html
    assert not list(root.rglob(".*.partial"))


def test_republish_uploads_nothing_and_keeps_channels(tmp_path: Path, store: LocalDirStore,
                                                     key: Ed25519PrivateKey) -> None:
    _publish(tmp_path, store, key, V1, 1)
    Catalogue(store).promote(f"{NAME}:{V1}", "stable", key, key.public_key())
    again = _publish(tmp_path, store, key, V1, 1)
    assert again.unchanged and again.uploaded_bytes == 0 and again.channels == ["candidate", "stable"]
    # Same version, another image: versions are immutable.
    other = tmp_path / "other"
    fake_build(other, version=V1, seed=99)
    with pytest.raises(UserError, match="already published with another image"):
        publish(other / "builds" / NAME / V1, store, key)


def test_channels_revoke_and_consumers(tmp_path: Path, store: LocalDirStore, key: Ed25519PrivateKey) -> None:
    pub = key.public_key()
    for i, v in enumerate((V1, V2, V3), 1):
        _publish(tmp_path, store, key, v, i)
    cat = Catalogue(store)
    assert cat.resolve(NAME)[1] == V3 and cat.resolve(f"{NAME}@candidate")[1] == V3
    with pytest.raises(UserError, match="channel 'stable' has no usable version"):
        cat.resolve(f"{NAME}@stable")
    cat.promote(f"{NAME}:{V2}", "stable", key, pub)
    assert verify_for_consumer(store, f"{NAME}@stable", anchor(pub)).manifest.version == V2
    m = cat.revoke(f"{NAME}:{V3}", "CVE-2026-0001 <script>alert(1)</script>", key, pub)
    assert m.revoked is not None and m.revoked.reason.startswith("CVE-2026-0001")
    signing.verify(json.loads((store.root / manifest_key(NAME, V3)).read_text()), pub, "re-signed")
    assert cat.resolve(NAME)[1] == V2  # newest usable
    for attempt in (lambda: verify_for_consumer(store, f"{NAME}:{V3}", anchor(pub)),
                    lambda: pull(store, f"{NAME}:{V3}", tmp_path, anchor(pub)),
                    lambda: verify_image(store, f"{NAME}:{V3}", anchor(pub))):
        with pytest.raises(RevokedImage, match="is revoked: CVE-2026-0001"):
            attempt()
    with pytest.raises(RevokedImage, match="cannot be promoted"):
        cat.promote(f"{NAME}:{V3}", "stable", key, pub)
    with pytest.raises(UserError, match="revoke names one version"):
        cat.revoke(NAME, "x", key, pub)
    html = (store.root / "index.html").read_text()
    assert "REVOKED" in html and "&lt;script&gt;" in html and "<script>" not in html
    rows = {e["version"]: e for e in cat.entries()}
    assert rows[V3]["revoked"]["reason"].startswith("CVE") and rows[V2]["heads"] == ["candidate", "stable"]
    assert rows[V1]["heads"] == [] and rows[V2]["channels"] == ["candidate", "stable"]


def test_prune_keeps_newest_and_channel_heads_and_collects_blobs(tmp_path: Path, store: LocalDirStore,
                                                                 key: Ed25519PrivateKey) -> None:
    import datetime as dt

    pub = key.public_key()
    for i, v in enumerate((V1, V2, V3, V4), 1):
        _publish(tmp_path, store, key, v, i)
    cat = Catalogue(store, Keys.single(key))
    cat.promote(f"{NAME}:{V1}", "stable", key, pub)
    cat.revoke(f"{NAME}:{V4}", "bad", key, pub)
    dry = cat.prune(1, dry_run=True)
    assert dry.deleted == [f"{NAME}:{V2}"] and (store.root / manifest_key(NAME, V2)).exists()
    assert dry.protected == {f"{NAME}:{V3}": ["candidate"], f"{NAME}:{V1}": ["stable"]}
    v2_image = store.root / "blobs/sha256" / json.loads(
        (store.root / manifest_key(NAME, V2)).read_text())["image"]["sha256"]
    kept_grace = cat.prune(1)  # the default grace keeps fresh unreferenced blobs
    assert kept_grace.deleted == [f"{NAME}:{V2}"] and kept_grace.blobs_deleted == 0 and v2_image.exists()
    size = v2_image.stat().st_size
    r = cat.prune(1, blob_grace=dt.timedelta(0))
    # V2's own blobs (image, SBOM, log, reports) go; those it shared (junit.xml) stay.
    assert r.deleted == [] and r.blobs_deleted >= 4 and r.bytes_freed > size and not v2_image.exists()
    assert [e["version"] for e in cat.entries()] == [V1, V3, V4]
    _check_no_dangling(store)
    with pytest.raises(UserError, match="at least 1"):
        cat.prune(0)


def test_pull_resumes_and_detects_tampering(tmp_path: Path, store: LocalDirStore,
                                            key: Ed25519PrivateKey) -> None:
    pub = key.public_key()
    _publish(tmp_path, store, key, V1, 1)
    img = verify_for_consumer(store, NAME, anchor(pub))
    blob = store.root / img.manifest.image.key
    data = blob.read_bytes()
    out = tmp_path / "dl" / "x.qcow2"
    out.parent.mkdir()
    # A partial download of this image (marker matches) is continued, not restarted.
    Path(f"{out}.part").write_bytes(data[:1000])
    Path(f"{out}.part.sha256").write_text(img.manifest.image.sha256)
    seen: list[int] = []
    pull(store, NAME, out, anchor(pub), lambda label, total: seen.append)
    assert out.read_bytes() == data and sum(seen) == len(data)
    assert not Path(f"{out}.part").exists() and not Path(f"{out}.part.sha256").exists()
    # A partial of some other image is thrown away.
    out2 = tmp_path / "dl" / "y.qcow2"
    Path(f"{out2}.part").write_bytes(b"X" * 5000)
    pull(store, NAME, out2, anchor(pub))
    assert out2.read_bytes() == data
    with pytest.raises(UserError, match="already exists"):
        pull(store, NAME, out2, anchor(pub))
    # The blob changed in the store (same size): pull and full verify refuse, --quick cannot tell.
    blob.write_bytes(b"\0" * 10 + data[10:])
    with pytest.raises(BuildError, match="does not match its signed manifest"):
        pull(store, NAME, tmp_path / "dl" / "z.qcow2", anchor(pub))
    assert not list((tmp_path / "dl").glob("z.qcow2*"))
    with pytest.raises(BuildError, match=r"image.qcow2: blobs/sha256/\w+ has sha256"):
        verify_image(store, NAME, anchor(pub))
    assert verify_image(store, NAME, anchor(pub), full=False)["content_checked"] is False
    blob.unlink()
    with pytest.raises(BuildError, match=r"image blob .* is missing"):
        verify_for_consumer(store, NAME, anchor(pub))


def test_tampered_unsigned_and_foreign_manifests_are_refused(tmp_path: Path, store: LocalDirStore,
                                                             key: Ed25519PrivateKey) -> None:
    pub = key.public_key()
    _publish(tmp_path, store, key, V1, 1)
    path = store.root / manifest_key(NAME, V1)
    good = json.loads(path.read_text())
    # The plain manifest changed (a channel added without the key): consumers read the copy the
    # signed TUF targets name, so the change has no effect, and promote does not build on it.
    path.write_text(json.dumps({**good, "channels": ["candidate", "stable"]}))
    with pytest.raises(UserError, match="channel 'stable' has no usable version"):
        verify_for_consumer(store, f"{NAME}@stable", anchor(pub))
    assert verify_for_consumer(store, f"{NAME}:{V1}", anchor(pub)).manifest.channels == ("candidate",)
    # The copy the targets name changed: refused by its hash, whatever its signature says.
    staged = store.root / stored_key(manifest_key(NAME, V1), trusted_sha256(store, manifest_key(NAME, V1)))
    staged.write_text(json.dumps({**good, "channels": ["candidate", "stable"]}))
    with pytest.raises(signing.SignatureError, match=r"is not the .* the TUF targets list"):
        verify_for_consumer(store, f"{NAME}:{V1}", anchor(pub))
    with pytest.raises(signing.SignatureError, match=r"is not the .* the TUF targets list"):
        Catalogue(store).promote(f"{NAME}:{V1}", "stable", key, pub)  # never re-signs it either
    staged.write_text(json.dumps({k: v for k, v in good.items() if k != "signature"}))
    with pytest.raises(signing.SignatureError, match=r"is not the .* the TUF targets list"):
        pull(store, f"{NAME}:{V1}", tmp_path, anchor(pub))
    staged.write_text(json.dumps(good, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    assert verify_for_consumer(store, f"{NAME}:{V1}", anchor(pub)).manifest.version == V1
    # Another key: the store's first TUF root is not made for it.
    other = Anchor.single(Ed25519PrivateKey.generate().public_key(), tmp_path / "other-trust")
    with pytest.raises(signing.SignatureError, match="first TUF root is not signed for the configured"):
        verify_for_consumer(store, f"{NAME}:{V1}", other)
    # A correctly signed manifest copied to another version's place is not in the targets.
    fake = store.root / manifest_key(NAME, V2)
    fake.parent.mkdir(parents=True)
    fake.write_text(json.dumps(good))
    with pytest.raises(UserError, match="not in its signed TUF targets"):
        verify_for_consumer(store, f"{NAME}:{V2}", anchor(pub))


def test_concurrent_publishers_keep_the_index_consistent(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    versions = [f"20261129.0000{i:02d}-cccc" for i in range(6)]
    for i, v in enumerate(versions):
        fake_build(tmp_path / "w", version=v, seed=i, size=512 * 1024)
    errors: list[BaseException] = []

    def run(v: str) -> None:
        try:  # each publisher has its own store object, as separate processes would
            publish(tmp_path / "w/builds" / NAME / v, LocalDirStore("local", tmp_path / "cat"), key)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = LocalDirStore("local", tmp_path / "cat")
    cat = Catalogue(store)
    assert [e["version"] for e in cat.entries()] == versions
    idx = cat.index()
    assert idx["images"] == cat.rebuild_index()["images"]
    _check_no_dangling(store)


def test_a_blob_removed_before_commit_is_uploaded_again(tmp_path: Path, store: LocalDirStore,
                                                        key: Ed25519PrivateKey,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    d = fake_build(tmp_path / "w", version=V1, seed=1)
    real_lock = store.lock
    calls = []

    @contextlib.contextmanager
    def racing_lock(what: str) -> Iterator[None]:
        if not calls:  # a prune ran between our upload and our commit
            for f in (store.root / "blobs/sha256").iterdir():
                f.unlink()
        calls.append(what)
        with real_lock(what):
            yield

    monkeypatch.setattr(store, "lock", racing_lock)
    r = publish(d, store, key)
    assert len(calls) == 2 and r.uploaded_bytes > r.blob_bytes
    _check_no_dangling(store)
    raw = json.loads((store.root / manifest_key(NAME, V1)).read_text())
    with pytest.raises(MissingBlobs):
        (store.root / "blobs/sha256" / raw["image"]["sha256"]).unlink()
        Catalogue(store, Keys.single(key)).commit({**raw, "version": V2})


def test_local_blob_upload_resumes_and_verifies(tmp_path: Path) -> None:
    import hashlib

    store = LocalDirStore("local", tmp_path / "cat")
    src = tmp_path / "blob"
    src.write_bytes(b"abc" * 100000)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    key = f"blobs/sha256/{sha}"
    partial = store.root / "blobs/sha256" / f".{sha}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(src.read_bytes()[:1234])
    t = store.put_file(key, src, sha256=sha, size=300000, content_type="x")
    assert t.sent == 300000 - 1234 and not t.skipped and not partial.exists()
    assert store.put_file(key, src, sha256=sha, size=300000, content_type="x").skipped
    with pytest.raises(BuildError, match="does not match its manifest"):
        store.put_file("blobs/sha256/" + "0" * 64, src, sha256="0" * 64, size=300000, content_type="x")
    assert not list(partial.parent.glob(".*"))


# --- the CLI ------------------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IMAGEFACTORY_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "imagefactory.cli", "--workdir", str(cwd / "w"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120, env=env)


def test_cli_publish_list_show_pull_promote_revoke(tmp_path: Path) -> None:
    fake_build(tmp_path / "w", version=V1, seed=1)
    fake_build(tmp_path / "w", version=V2, seed=2, rke2=True)
    r = cli("publish", NAME, cwd=tmp_path)
    assert r.returncode == 2 and "no signing key" in r.stderr and "Traceback" not in r.stderr
    assert cli("keys", "generate", "-o", "keys", cwd=tmp_path).returncode == 0
    (tmp_path / "imagefactory.yaml").write_text("signing: {public_key: keys/imagefactory.pub, "
                                                "private_key: keys/imagefactory.key}\n")
    r = cli("--json", "publish", f"w/builds/{NAME}/{V1}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["uploaded_bytes"] > 0
    r = cli("--json", "publish", NAME, cwd=tmp_path)  # a recipe name: its newest build
    assert r.returncode == 0 and json.loads(r.stdout)["ref"] == f"{NAME}:{V2}"
    again = json.loads(cli("--json", "publish", NAME, cwd=tmp_path).stdout)
    assert again["unchanged"] is True and again["uploaded_bytes"] == 0
    rows = json.loads(cli("--json", "images", "list", "--rke2", cwd=tmp_path).stdout)
    assert [r["version"] for r in rows] == [V2]
    assert len(json.loads(cli("--json", "images", "list", "--os", "debian-12", cwd=tmp_path).stdout)) == 2
    assert json.loads(cli("--json", "images", "list", "--os", "ubuntu", cwd=tmp_path).stdout) == []
    assert cli("images", "promote", f"{NAME}:{V1}", "--channel", "stable", cwd=tmp_path).returncode == 0
    rows = json.loads(cli("--json", "images", "list", "--channel", "stable", cwd=tmp_path).stdout)
    assert [r["version"] for r in rows] == [V1]
    shown = json.loads(cli("--json", "images", "show", f"{NAME}@stable", cwd=tmp_path).stdout)
    assert shown["signature"] == "valid" and shown["manifest"]["channels"] == ["candidate", "stable"]
    r = cli("--json", "images", "pull", f"{NAME}@stable", "-o", "out.qcow2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    built = tmp_path / "w/builds" / NAME / V1 / "image.qcow2"
    assert (tmp_path / "out.qcow2").read_bytes() == built.read_bytes()
    assert cli("images", "revoke", f"{NAME}:{V1}", "--reason", "superseded", cwd=tmp_path).returncode == 0
    r = cli("images", "pull", f"{NAME}:{V1}", cwd=tmp_path)
    assert r.returncode == 2 and "is revoked: superseded" in r.stderr and "Traceback" not in r.stderr
    r = cli("images", "url", NAME, "--expires", "1h", cwd=tmp_path)
    assert r.returncode == 2 and "without a URL" in r.stderr
    r = cli("images", "url", NAME, "--expires", "30d", cwd=tmp_path)
    assert r.returncode == 2 and "longer than 7 days" in r.stderr
    listed = cli("images", "list", cwd=tmp_path)
    assert listed.returncode == 0 and "REVOKED" in listed.stdout
    r = cli("--json", "images", "prune", "--keep", "1", "--dry-run", cwd=tmp_path)
    assert json.loads(r.stdout)["deleted"] == [f"{NAME}:{V1}"]
    assert json.loads(cli("--json", "images", "verify", NAME, cwd=tmp_path).stdout)["signature"] == "valid"
    assert json.loads(cli("--json", "images", "list", "--builds", cwd=tmp_path).stdout) == []
    r = cli("images", "show", "nothing", cwd=tmp_path)
    assert r.returncode == 2 and "no such image" in r.stderr
