"""Publishing against a real S3 server over HTTP on 127.0.0.1: moto (`python -m moto.server`) in a
subprocess, one instance without auth (presigned URLs work there) and one with IAM auth enforced
(credential and signature rejection). Faults are injected with a TCP proxy in front of the server
(`tests.publishing.FaultProxy`): a connection reset mid-part (retry), the server "down" for the
rest of a publish (fail cleanly, then resume from the parts already there), and the real server
killed mid-upload (moto keeps objects in memory, so its restart is a fresh upload). While faults
happen a watcher checks that no manifest ever names a missing blob."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagefactory.catalogue import signing
from imagefactory.catalogue.catalogue import Catalogue, RevokedImage, presigned_url, pull, verify_image
from imagefactory.catalogue.manifest import manifest_key, parse_duration
from imagefactory.catalogue.publish import publish
from imagefactory.catalogue.s3 import Credentials, S3Store
from imagefactory.catalogue.stores import PreconditionFailed
from imagefactory.catalogue.trust import stored_key
from imagefactory.config import S3StoreConfig
from imagefactory.errors import BuildError, UserError
from imagefactory.fsutil import file_identity
from tests.integration.conftest import S3Server
from tests.publishing import (
    FaultProxy,
    MotoServer,
    anchor,
    fake_build,
    iam_credentials,
    self_signed_cert,
    trusted_sha256,
)

pytestmark = pytest.mark.integration

NAME = "debian-12-base"
MiB = 1024**2
CREDS = Credentials("AKIDTEST", "not-checked-by-this-server", None, "test")


@pytest.fixture(scope="module")
def moto_iam() -> Iterator[tuple[MotoServer, tuple[str, str]]]:
    server = MotoServer(iam=True).start()
    try:
        yield server, iam_credentials(server.endpoint)
    finally:
        server.stop()


@pytest.fixture(params=["moto-iam", "rgw"])
def authenticating(request: pytest.FixtureRequest) -> tuple[str, tuple[str, str]]:
    """(endpoint, (access key, secret key)) of a server that checks credentials and signatures."""
    if request.param == "rgw":
        rgw: S3Server = request.getfixturevalue("rgw_server")
        return rgw.endpoint, (rgw.creds.access_key, rgw.creds.secret_key)
    server, creds = request.getfixturevalue("moto_iam")
    return server.endpoint, creds


@pytest.fixture
def bucket() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def config(endpoint: str, bucket: str, **kw: Any) -> S3StoreConfig:
    fields: dict[str, Any] = {"type": "s3", "endpoint": endpoint, "bucket": bucket, "create_bucket": True,
                              "retries": 3, "retry_wait": 0.05, "part_size": "5MiB", "parallel": 2,
                              "timeout": 20}
    return S3StoreConfig.model_validate(fields | kw)


def store(endpoint: str, bucket: str, creds: Credentials | None = CREDS, **kw: Any) -> S3Store:
    return S3Store("s3", config(endpoint, bucket, **kw), creds)


class Watcher:
    """Polls the store while something runs: every manifest's blobs must exist with their size."""

    def __init__(self, s: S3Store) -> None:
        self.store, self.violations, self.rounds = s, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for _, m, key in Catalogue(self.store).manifests():
                    for f in m.files:
                        info = self.store.stat(f.key)
                        if info is None or info.size != f.size:
                            self.violations.append(f"{key} -> {f.key}")
                self.rounds += 1
            except Exception:  # the server may be down on purpose; the check resumes after
                pass
            self._stop.wait(0.05)


def test_publish_pull_verify_channels_and_presigned_url(tmp_path: Path, s3: S3Server, bucket: str,
                                                        key: Ed25519PrivateKey) -> None:
    s = store(s3.endpoint, bucket, s3.creds)
    pub = key.public_key()
    d = fake_build(tmp_path / "w", size=12 * MiB, rke2=True)  # multipart: 3 parts of 5 MiB
    r = publish(d, s, key)
    assert r.uploaded_bytes == r.blob_bytes and not r.unchanged
    keys = {o.key for o in s.list("")}
    m = json.loads(s.get_bytes(manifest_key(NAME, r.ref.split(":")[1]))[0])
    tuf = {k for k in keys if k.startswith("tuf/") or re.search(r"/[0-9a-f]{64}\.[a-z]+\.json$", k)}
    assert {"tuf/1.root.json", "tuf/timestamp.json"} <= tuf  # the catalogue's TUF metadata and targets
    plain = {"index.json", "index.html", manifest_key(NAME, m["version"])}
    assert {f"blobs/sha256/{f['sha256']}" for f in m["files"]} | plain == keys - tuf
    signing.verify(m, pub, "s3 manifest")
    info = s.stat(m["image"]["key"])
    assert info is not None and info.sha256 == m["image"]["sha256"] and info.etag.endswith("-3")
    html = s.client.stat_object(bucket, "index.html")
    assert html.content_type.startswith("text/html")
    again = publish(d, s, key)  # re-publishing an unchanged image
    assert again.unchanged and again.uploaded_bytes == 0
    img, path = pull(s, NAME, tmp_path / "dl.qcow2", anchor(pub))
    assert path.read_bytes() == (d / "image.qcow2").read_bytes()
    assert verify_image(s, NAME, anchor(pub))["files"][0] == "image.qcow2"
    cat = Catalogue(s)
    cat.promote(img.ref, "stable", key, pub)
    _, url = presigned_url(s, f"{NAME}@stable", anchor(pub), parse_duration("24h"))
    assert url.startswith(f"{s3.endpoint}/{bucket}/blobs/sha256/") and "X-Amz-Expires=86400" in url
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == m["image"]["sha256"]
    ranged = urllib.request.Request(url, headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(ranged, timeout=30) as resp:
        assert resp.status == 206 and resp.read() == (d / "image.qcow2").read_bytes()[10:20]
    cat.revoke(img.ref, "superseded", key, pub)
    with pytest.raises(RevokedImage):
        presigned_url(s, img.ref, anchor(pub), parse_duration("1h"))
    with pytest.raises(RevokedImage):
        pull(s, img.ref, tmp_path / "again.qcow2", anchor(pub))


def test_pull_resumes_with_range(tmp_path: Path, s3: S3Server, bucket: str,
                                 key: Ed25519PrivateKey) -> None:
    d = fake_build(tmp_path / "w", size=8 * MiB, seed=5)
    publish(d, store(s3.endpoint, bucket, s3.creds), key)
    proxy = FaultProxy(s3.port)
    try:
        s = store(proxy.endpoint, bucket, s3.creds)
        img = Catalogue(s).read_manifest(NAME, "20261129.213544-a65a")[0]
        out = tmp_path / "x.qcow2"
        Path(f"{out}.part").write_bytes((d / "image.qcow2").read_bytes()[:6 * MiB])
        Path(f"{out}.part.sha256").write_text(img["image"]["sha256"])
        got: list[int] = []
        pull(s, NAME, out, anchor(key.public_key()), lambda label, total: got.append)
        assert out.read_bytes() == (d / "image.qcow2").read_bytes()
        assert sum(got) == 8 * MiB  # 6 MiB counted as already there, 2 MiB fetched
    finally:
        proxy.close()


def test_a_connection_reset_mid_part_is_retried(tmp_path: Path, s3: S3Server, bucket: str,
                                                key: Ed25519PrivateKey) -> None:
    d = fake_build(tmp_path / "w", size=30 * MiB, seed=7)
    proxy = FaultProxy(s3.port)
    try:
        s = store(proxy.endpoint, bucket, s3.creds)
        s.prepare()
        proxy.cut_after(8 * MiB)  # inside the second part
        with Watcher(store(s3.endpoint, bucket, s3.creds)) as w:
            r = publish(d, s, key)
        assert proxy.cuts == 1 and w.violations == [] and w.rounds > 0
        # Only the parts in flight at the reset were sent twice (2 parallel x 5 MiB), not the blob.
        assert r.uploaded_bytes == r.blob_bytes
        assert proxy.bytes_up < r.blob_bytes + 2 * 5 * MiB + 2 * MiB
        assert verify_image(store(s3.endpoint, bucket, s3.creds), NAME,
                            anchor(key.public_key()))["signature"] == "valid"
    finally:
        proxy.close()


def test_server_down_fails_cleanly_then_the_next_publish_resumes(tmp_path: Path, s3: S3Server,
                                                                 bucket: str, key: Ed25519PrivateKey) -> None:
    size = 40 * MiB
    d = fake_build(tmp_path / "w", size=size, seed=11)
    proxy = FaultProxy(s3.port)
    direct = store(s3.endpoint, bucket, s3.creds)
    direct.prepare()

    def down() -> None:
        proxy.refuse = True

    try:
        s = store(proxy.endpoint, bucket, s3.creds)
        proxy.on_bytes(17 * MiB, down)
        proxy.cut_after(17 * MiB)
        with Watcher(direct) as w, pytest.raises(BuildError, match="failed after 3 attempts") as e:
            publish(d, s, key)
        assert e.value.hint is not None and "resumes" in e.value.hint
        assert w.violations == []
        assert direct.stat(manifest_key(NAME, "20261129.213544-a65a")) is None  # nothing half-published
        assert direct.stat("index.json") is None
        sha256 = json.loads((d / "manifest.json").read_text())["image"]["sha256"]
        upload_id, parts = direct._find_upload(f"blobs/sha256/{sha256}")
        assert upload_id is not None and len(parts) >= 2  # what the next attempt resumes from
        proxy.refuse = False
        before = proxy.bytes_up
        with Watcher(direct) as w:
            r = publish(d, s, key)
        assert w.violations == [] and not r.unchanged
        image_sent = next(u["sent"] for u in r.uploads if u["path"] == "image.qcow2")
        assert image_sent <= size - len(parts) * 5 * MiB  # the parts already there were not sent again
        assert proxy.bytes_up - before < size
        assert verify_image(direct, NAME, anchor(key.public_key()))["content_checked"] is True
    finally:
        proxy.close()


def _cli_env(tmp_path: Path, endpoint: str, bucket: str, access: str, secret: str,
             key: Ed25519PrivateKey | None = None) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

    k = key or Ed25519PrivateKey.generate()
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "k.pub").write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    cfg = tmp_path / "imagefactory.yaml"
    cfg.write_text(f"stores:\n  minio:\n    type: s3\n    endpoint: {endpoint}\n    bucket: {bucket}\n"
                   "    create_bucket: true\n    retries: 3\n    retry_wait: 0.05\n    part_size: 5MiB\n"
                   "    parallel: 2\n    timeout: 20\n"
                   f"default_store: minio\nsigning:\n  public_key: {keys / 'k.pub'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEFACTORY_", "AWS_"))}
    env |= {"IMAGEFACTORY_CONFIG": str(cfg), "IMAGEFACTORY_STORE_MINIO_ACCESS_KEY": access,
            "IMAGEFACTORY_STORE_MINIO_SECRET_KEY": secret,
            signing.PRIVATE_KEY_ENV: k.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()).decode()}
    return env


def cli(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagefactory.cli", "--workdir", str(tmp_path / "w"), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_killed_server_fails_cleanly_and_a_restarted_one_gets_the_image(tmp_path: Path, bucket: str) -> None:
    server = MotoServer().start()
    proxy = FaultProxy(server.port)
    try:
        fake_build(tmp_path / "w", size=40 * MiB, seed=13)
        env = _cli_env(tmp_path, proxy.endpoint, bucket, "AKIDTEST", "secret")
        proxy.on_bytes(12 * MiB, server.kill)  # the real server dies mid-upload
        r = cli(env, tmp_path, "publish", NAME)
        assert r.returncode == 1, r.stderr
        assert "failed after 3 attempts" in r.stderr and "Traceback" not in r.stderr
        assert "hint: check that the server is reachable; publishing again resumes" in r.stderr
        server.start()  # same port, empty (moto keeps everything in memory): a fresh upload
        r = cli(env, tmp_path, "--json", "publish", NAME)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["uploaded_bytes"] == out["blob_bytes"]
        r = cli(env, tmp_path, "--json", "images", "verify", NAME)
        assert r.returncode == 0 and json.loads(r.stdout)["content_checked"] is True, r.stderr
    finally:
        proxy.close()
        server.stop()


def test_wrong_credentials_are_one_clear_error(tmp_path: Path, authenticating: tuple[str, tuple[str, str]],
                                               bucket: str) -> None:
    endpoint, (access, secret) = authenticating
    fake_build(tmp_path / "w", size=6 * MiB)
    for acc, sec in ((access, "wrong-secret-value"), ("AKIANOSUCHKEY0000000", "wrong-secret-value")):
        start = time.monotonic()
        r = cli(_cli_env(tmp_path, endpoint, bucket, acc, sec), tmp_path, "publish", NAME)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("credentials rejected") == 1
        assert "error: store minio" in r.stderr and "credentials rejected" in r.stderr
        assert "hint: credentials used: $IMAGEFACTORY_STORE_MINIO_*" in r.stderr
        assert "wrong-secret-value" not in r.stderr + r.stdout and "Traceback" not in r.stderr
        assert "retrying" not in r.stderr and time.monotonic() - start < 30  # not retried
    # The same commands with the right key work against the authenticating server.
    env = _cli_env(tmp_path, endpoint, bucket, access, secret)
    r = cli(env, tmp_path, "--json", "publish", NAME)
    assert r.returncode == 0, r.stderr
    assert json.loads(cli(env, tmp_path, "--json", "images", "verify", NAME).stdout)["signature"] == "valid"


def test_rejection_codes_are_named(tmp_path: Path, authenticating: tuple[str, tuple[str, str]],
                                   bucket: str) -> None:
    endpoint, (access, _) = authenticating
    d = fake_build(tmp_path / "w", size=1 * MiB)
    k = Ed25519PrivateKey.generate()
    # A HEAD answers 403 without a body (AccessDenied); a PUT names the reason.
    with pytest.raises(UserError, match=r"credentials rejected \((SignatureDoesNotMatch|AccessDenied)\)"):
        publish(d, store(endpoint, bucket, Credentials(access, "nope", None, "test")), k)
    with pytest.raises(UserError, match=r"credentials rejected \((InvalidAccessKeyId|AccessDenied)\)"):
        publish(d, store(endpoint, bucket, Credentials("AKIANOSUCHKEY0000000", "nope", None, "t")), k)


def test_an_image_changed_after_its_build_is_hashed_and_refused(tmp_path: Path, s3: S3Server, bucket: str,
                                                                key: Ed25519PrivateKey) -> None:
    """The build records the image's identity with its hash, and publish hashes it again only if
    that identity changed: a byte changed after the build (same size) is found either way."""
    s = store(s3.endpoint, bucket, s3.creds)
    d = fake_build(tmp_path / "w", size=12 * MiB)
    image = d / "image.qcow2"
    assert json.loads((d / "manifest.json").read_text())["image"]["identity"] == file_identity(image)
    with open(image, "r+b") as f:
        f.seek(7 * MiB)
        f.write(b"x")
    with pytest.raises(BuildError, match="does not match its manifest"):
        publish(d, s, key)
    assert not [o.key for o in s.list("") if o.key.startswith("manifests/")]


def test_an_image_written_during_its_upload_is_refused(tmp_path: Path, s3: S3Server, bucket: str,
                                                       key: Ed25519PrivateKey) -> None:
    """Trusting the build's hash holds only while the file is the one hashed: a write during the
    upload (after the part it touches was sent) aborts the upload."""
    s = store(s3.endpoint, bucket, s3.creds)
    d = fake_build(tmp_path / "w", size=12 * MiB)
    image = d / "image.qcow2"
    touched: list[int] = []

    def progress(what: str, total: int) -> Any:
        def advance(n: int) -> None:
            if what.startswith("upload image") and not touched:
                with open(image, "r+b") as f:  # a byte of the first part, already read
                    f.write(b"x")
                touched.append(n)
        return advance

    with pytest.raises(BuildError, match="changed while it was being uploaded"):
        publish(d, s, key, progress=progress)
    assert touched
    assert not [o.key for o in s.list("") if o.key.startswith(("manifests/", "blobs/"))
                and o.size == 12 * MiB]


def test_tampered_blob_and_manifest_are_refused(tmp_path: Path, s3: S3Server, bucket: str,
                                                key: Ed25519PrivateKey) -> None:
    s = store(s3.endpoint, bucket, s3.creds)
    pub = key.public_key()
    d = fake_build(tmp_path / "w", size=2 * MiB)
    r = publish(d, s, key)
    m = json.loads(s.get_bytes(r.manifest_key)[0])
    blob = (d / "image.qcow2").read_bytes()
    s.client._put_object(bucket, m["image"]["key"], b"\x00" + blob[1:])  # same size, one byte differs
    with pytest.raises(BuildError, match="does not match its signed manifest"):
        pull(s, NAME, tmp_path / "x.qcow2", anchor(pub))
    assert not list(tmp_path.glob("x.qcow2*"))
    with pytest.raises(BuildError, match="fail verification"):
        verify_image(s, NAME, anchor(pub))
    s.client._put_object(bucket, m["image"]["key"], blob)
    verify_image(s, NAME, anchor(pub))
    # consumers read the manifest copy the signed TUF targets name (the plain key is for people)
    s.put_bytes(r.manifest_key, json.dumps({**m, "channels": ["candidate", "stable"]}).encode())
    verify_image(s, NAME, anchor(pub))
    staged = stored_key(r.manifest_key, trusted_sha256(s, r.manifest_key))
    s.put_bytes(staged, json.dumps({**m, "channels": ["candidate", "stable"]}).encode())
    with pytest.raises(signing.SignatureError, match=r"is not the .* the TUF targets list"):
        pull(s, NAME, tmp_path / "y.qcow2", anchor(pub))
    with pytest.raises(signing.SignatureError, match=r"is not the .* the TUF targets list"):
        presigned_url(s, NAME, anchor(pub), parse_duration("1h"))
    s.put_bytes(staged, json.dumps({k: v for k, v in m.items() if k != "signature"}).encode())
    with pytest.raises(signing.SignatureError, match=r"is not the .* the TUF targets list"):
        verify_image(s, NAME, anchor(pub))


def test_concurrent_publishers_keep_one_consistent_index(tmp_path: Path, s3: S3Server, bucket: str,
                                                         key: Ed25519PrivateKey) -> None:
    versions = [f"20261129.0000{i:02d}-dddd" for i in range(5)]
    for i, v in enumerate(versions):
        fake_build(tmp_path / "w", version=v, seed=100 + i, size=1 * MiB)
    direct = store(s3.endpoint, bucket, s3.creds)
    direct.prepare()
    env = _cli_env(tmp_path, s3.endpoint, bucket, s3.creds.access_key, s3.creds.secret_key, key)
    errors: list[BaseException] = []

    def in_thread(v: str) -> None:
        try:
            publish(tmp_path / "w/builds" / NAME / v, store(s3.endpoint, bucket, s3.creds), key)
        except BaseException as e:
            errors.append(e)

    with Watcher(direct) as w:
        # Two separate processes (the CLI) and three threads, all at once.
        procs = [subprocess.Popen([sys.executable, "-m", "imagefactory.cli", "--workdir", str(tmp_path / "w"),
                                   "publish", f"{NAME}:{v}"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for v in versions[:2]]
        threads = [threading.Thread(target=in_thread, args=(v,)) for v in versions[2:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    assert errors == [] and all(rc == 0 for rc, _ in results), results
    assert w.violations == []
    cat = Catalogue(direct)
    assert [e["version"] for e in cat.entries()] == versions
    assert cat.index()["images"] == cat.rebuild_index()["images"]  # the index equals the manifests
    first = json.loads(direct.get_bytes(manifest_key(NAME, versions[0]))[0])
    assert first["signature"]["key_id"] == signing.key_id(key.public_key())


def test_conditional_writes_hold_on_this_server(s3: S3Server, bucket: str) -> None:
    """The catalogue's compare-and-swap and lock rest on If-None-Match / If-Match. RGW 16 refuses a
    quoted ETag that matches (412); the store notices (the object still has that ETag) and sends
    ETags unquoted from then on - and a stale ETag is still refused, on every server."""
    s = store(s3.endpoint, bucket, s3.creds)
    s.prepare()
    first = s.put_bytes("x.json", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        s.put_bytes("x.json", b"2", if_none_match=True)
    second = s.put_bytes("x.json", b"2", if_match=first)  # the matching ETag is taken
    assert s._quote_if_match is (s3.kind != "rgw")  # only RGW needed the unquoted form
    with pytest.raises(PreconditionFailed):
        s.put_bytes("x.json", b"3", if_match=first)  # stale: refused, not retried into a write
    assert s.get_bytes("x.json")[0] == b"2"
    s._delete_if("x.json", second)  # (RGW 16 ignores If-Match on DELETE: see S3Store._release)
    assert s.stat("x.json") is None


def test_catalogue_lock_waits_for_a_live_holder_and_takes_over_an_expired_one(
        tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagefactory.catalogue import s3 as s3mod

    s = store(s3.endpoint, bucket, s3.creds)
    s.prepare()
    live = json.dumps({"owner": "someone", "host": "builder-7", "pid": 4242, "what": "publishing x",
                       "ttl": 600})
    s.put_bytes(s3mod.LOCK_KEY, live.encode())
    monkeypatch.setattr(s3mod, "LOCK_WAIT", 1.0)
    held = r"lock is held by builder-7 pid 4242 \(publishing x\)"
    with pytest.raises(BuildError, match=held), s.lock("test"):
        pass
    stale = json.dumps({"owner": "someone", "host": "builder-7", "pid": 4242, "what": "x", "ttl": 1})
    s.put_bytes(s3mod.LOCK_KEY, stale.encode())
    time.sleep(2.1)  # older than its TTL by the server's clock (Last-Modified vs Date, 1 s resolution)
    with s.lock("test"):
        holder = json.loads(s.get_bytes(s3mod.LOCK_KEY)[0])
        assert holder["owner"] != "someone" and holder["pid"] == os.getpid()
    assert s.stat(s3mod.LOCK_KEY) is None  # released


def test_a_lock_taken_over_after_it_expired_is_not_released_by_its_old_holder(s3: S3Server,
                                                                              bucket: str) -> None:
    """The old holder's release must leave the new holder's lease alone - on RGW too, which deletes
    an object whatever ETag a DELETE's If-Match names."""
    from imagefactory.catalogue import s3 as s3mod

    s = store(s3.endpoint, bucket, s3.creds)
    s.prepare()
    theirs = json.dumps({"owner": "someone-else", "host": "builder-9", "pid": 1, "what": "x", "ttl": 600})
    with s.lock("test"):
        s.put_bytes(s3mod.LOCK_KEY, theirs.encode())  # ours expired and was taken over meanwhile
    assert s.get_bytes(s3mod.LOCK_KEY)[0] == theirs.encode()


def test_tls_is_verified_by_default_and_a_ca_bundle_is_honoured(tmp_path: Path, s3: S3Server, bucket: str,
                                                                 key: Ed25519PrivateKey) -> None:
    cert, pem_key = self_signed_cert(tmp_path)
    proxy = FaultProxy(s3.port, tls=(cert, pem_key))
    try:
        d = fake_build(tmp_path / "w", size=1 * MiB)
        with pytest.raises(UserError, match="TLS verification failed") as e:
            publish(d, store(proxy.endpoint, bucket, s3.creds), key)
        assert e.value.hint is not None and "ca_bundle" in e.value.hint
        r = publish(d, store(proxy.endpoint, bucket, s3.creds, ca_bundle=str(cert)), key)
        assert r.uploaded_bytes == r.blob_bytes
        with pytest.raises(UserError, match="does not exist"):
            store(proxy.endpoint, bucket, s3.creds, ca_bundle=str(tmp_path / "missing.pem"))
    finally:
        proxy.close()
