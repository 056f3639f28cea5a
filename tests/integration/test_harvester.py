"""Harvester image upload and RKE2 clusters against the Harvester API double (tests/harvester/):
an HTTPS Kubernetes-style API server on 127.0.0.1 that validates images and key pairs against the
real CRD schemas and simulates Harvester's controllers (it really sends HEAD and GET to the URLs it
is given, verifies SHA-512, creates StorageClasses, PVCs and VMIs). The S3 store here is Ceph RGW
(tests/rgw.py), which checks signatures as AWS S3 and MinIO do: a URL presigned for GET answers
HEAD with 403, as Harvester's URL check would see it. Product code only gets a kubeconfig, as
with a real cluster."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagefactory.catalogue import signing
from imagefactory.catalogue.catalogue import Catalogue, RevokedImage, verify_for_consumer
from imagefactory.catalogue.publish import publish
from imagefactory.catalogue.s3 import S3Store
from imagefactory.catalogue.stores import LocalDirStore
from imagefactory.clusters.harvester import HarvesterCluster
from imagefactory.clusters.spec import ClusterSpec
from imagefactory.errors import BuildError, UserError
from imagefactory.harvester.api import ApiError, HarvesterApi
from imagefactory.harvester.images import ImageUploader, UploadResult, multipart, object_name
from tests.harvester import HarvesterDouble
from tests.integration.conftest import S3Server
from tests.publishing import anchor, fake_build

pytestmark = pytest.mark.integration

GiB = 1024**3
KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMnXZ8mWq0+ZLq1mB3Iq8m3yv6o3l4vK1x3vP6bXqG2z ops@site"


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def harvester() -> Iterator[HarvesterDouble]:
    h = HarvesterDouble(tick=0.02).start()
    h.retry_backoff = 0.05
    h.add_vm_network()  # one VM network: multi-node clusters attach to it by default
    try:
        yield h
    finally:
        h.stop()
    assert h.errors == []


@pytest.fixture
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def qcow2_build(
    root: Path, version: str, virtual: int = 2 * GiB, tail: int = 0, name: str = "rke2-node-debian",
    disk: dict[str, Any] | None = None,
) -> Path:
    """A publishable build directory whose image is a real (empty) qcow2 of `virtual` bytes,
    optionally followed by `tail` random bytes (qcow2 ignores them: a big file, cheaply)."""
    d = fake_build(root, name=name, version=version, size=1024, rke2=True)
    img = d / "image.qcow2"
    img.unlink()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), str(virtual)], check=True)
    with open(img, "ab") as f:
        if tail:
            f.write(os.urandom(tail))
        else:  # as builds pad their images (builders/disk.convert)
            f.write(b"\0" * (-img.stat().st_size % 512))
    data = img.read_bytes()
    m = json.loads((d / "manifest.json").read_text())
    m["image"].update(
        size=len(data),
        virtual_size=virtual,
        sha256=hashlib.sha256(data).hexdigest(),
        sha512=hashlib.sha512(data).hexdigest(),
    )
    if disk is not None:  # the build's disk description (builders/rootfs.py): firmware, secure_boot
        m["disk"] = disk
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def local_store(tmp_path: Path, signer: Ed25519PrivateKey, *builds: Path) -> LocalDirStore:
    store = LocalDirStore("local", tmp_path / "catalogue")
    store.prepare()
    for b in builds:
        publish(b, store, signer, signer.public_key())
    return store


def s3_store(server: S3Server, signer: Ed25519PrivateKey, *builds: Path,
             anonymous_blobs: bool = True) -> S3Store:
    from imagefactory.config import S3StoreConfig

    cfg = S3StoreConfig.model_validate(
        {
            "type": "s3",
            "endpoint": server.endpoint,
            "bucket": f"h-{uuid.uuid4().hex[:12]}",
            "create_bucket": True,
            "retries": 3,
            "retry_wait": 0.05,
            "timeout": 20,
            "anonymous_blobs": anonymous_blobs,
        }
    )
    store = S3Store("s3", cfg, server.creds)
    store.prepare()
    for b in builds:
        publish(b, store, signer, signer.public_key())
    return store


def api_for(h: HarvesterDouble, tmp_path: Path, namespace: str = "default") -> HarvesterApi:
    path = h.kubeconfig(tmp_path / f"kubeconfig-{namespace}", namespace=namespace)
    return HarvesterApi(str(path), retries=4, backoff=0.05)


def uploader(api: HarvesterApi, tmp_path: Path) -> ImageUploader:
    return ImageUploader(api, poll=0.05, timeout=60, cache=tmp_path / "cache")


def cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    return next(
        (c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == ctype), {}
    )


def creates(h: HarvesterDouble, plural: str) -> int:
    return sum(
        1 for m, p, s in h.requests if m == "POST" and p.split("?")[0].endswith(f"/{plural}") and s < 300
    )


# --- image upload ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "sc_prefix"), [("v1.7.0", "longhorn-"), ("v1.8.0", "lh-")])
def test_download_from_s3_anonymous_blob_url(
    harvester: HarvesterDouble,
    rgw_server: S3Server,
    signer: Ed25519PrivateKey,
    tmp_path: Path,
    version: str,
    sc_prefix: str,
) -> None:
    harvester.version = version
    store = s3_store(rgw_server, signer, qcow2_build(tmp_path, "20261130.010000-aaaa"))
    api = api_for(harvester, tmp_path)
    r = uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
    assert r.source == "download" and not r.reused
    obj = harvester.get_object("virtualmachineimages", "default", r.name)
    assert obj is not None
    m = Catalogue(store).read_manifest("rke2-node-debian", "20261130.010000-aaaa")[0]
    assert obj["spec"]["checksum"] == m["image"]["sha512"] and len(obj["spec"]["checksum"]) == 128
    # the plain blob URL (the bucket policy lets anyone read blobs/), which the double HEADed and
    # fetched from RGW without credentials
    assert obj["spec"]["url"] == f"{rgw_server.endpoint}/{store.bucket}/{m['image']['key']}"
    assert obj["spec"]["displayName"] == "rke2-node-debian-20261130.010000-aaaa"
    labels = obj["metadata"]["labels"]
    assert labels["imagefactory.io/image"] == "rke2-node-debian"
    assert labels["imagefactory.io/version"] == "20261130.010000-aaaa"
    assert labels["imagefactory.io/digest"] == m["image"]["sha256"][:63]
    assert obj["metadata"]["annotations"]["imagefactory.io/sha256"] == m["image"]["sha256"]
    assert "field.cattle.io/description" in obj["metadata"]["annotations"]
    # the StorageClass is read from the status, whatever the version names it
    assert r.storage_class == obj["status"]["storageClassName"] and r.storage_class.startswith(sc_prefix)
    assert r.virtual_size == 2 * GiB and obj["status"]["progress"] == 100
    assert harvester.warnings == []
    # idempotent: the same digest is reused, nothing is created again
    before = creates(harvester, "virtualmachineimages")
    again = uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
    assert again.reused and again.name == r.name
    assert creates(harvester, "virtualmachineimages") == before


def test_an_upload_refused_after_its_200_fails_at_once(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Longhorn checks an upload's SHA-512 after the POST has answered 200; Harvester then retries
    the image, whose new data source waits for an upload (60 s each, three retries) that never
    comes. The uploader notices the failure count rising and stops with Longhorn's message."""
    harvester.upload_window = 60.0
    store = local_store(tmp_path, signer, qcow2_build(tmp_path, "20261206.020000-bbbb"))
    api = api_for(harvester, tmp_path)
    # what Harvester is told to expect differs from the bytes sent (as if they changed on the way)
    monkeypatch.setattr("imagefactory.harvester.images.verified_sha512", lambda *a: "ab" * 64)
    start = time.monotonic()
    with pytest.raises(BuildError) as e:
        uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
    assert time.monotonic() - start < 20  # not the 60 s upload window, nor the uploader's timeout
    assert "refused the uploaded bytes after the upload returned" in e.value.message
    assert f"the expected checksum {'ab' * 64} doesn't match the file actual checksum" in e.value.message
    assert harvester.uploads[-1]["status"] == 200


@pytest.mark.parametrize("version", ["v1.4.0", "v1.8.0"])
def test_upload_streams_multipart_padded_to_512(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path, version: str
) -> None:
    harvester.version = version
    build = qcow2_build(tmp_path, "20261130.020000-bbbb", tail=48 * 1024**2 + 100)
    size = (build / "image.qcow2").stat().st_size
    assert size % 512  # the interesting case: Longhorn needs a multiple of 512
    store = local_store(tmp_path, signer, build)
    api = api_for(harvester, tmp_path)
    tracemalloc.start()
    try:
        r = uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.source == "upload" and r.virtual_size == 2 * GiB
    up = harvester.uploads[-1]
    padded = -(-size // 512) * 512
    assert up["part"] == "chunk" and int(up["size_param"]) == padded and up["bytes"] == padded
    assert up["status"] == 200 and not up["chunked"]
    # streamed: neither side held the 48 MiB body
    assert peak < 16 * 1024**2, peak
    obj = harvester.get_object("virtualmachineimages", "default", r.name)
    assert obj is not None
    data = (build / "image.qcow2").read_bytes() + b"\0" * (padded - size)
    assert obj["spec"]["checksum"] == hashlib.sha512(data).hexdigest() == up["sha512"]
    # backend only where the CRD has it (v1.5+): nothing pruned, no warnings
    assert ("backend" in obj["spec"]) == (version >= "v1.5")
    assert harvester.warnings == []


def test_multipart_body_is_exact() -> None:
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(b"x" * 1000)
        f.flush()
        body, length, ctype = multipart(Path(f.name), 1000, 1024, block=300)
        chunks = list(body)
    raw = b"".join(chunks)
    assert len(raw) == length and max(len(c) for c in chunks) <= 300 + 200
    boundary = ctype.split("boundary=")[1]
    assert raw.startswith(f"--{boundary}\r\n".encode()) and raw.endswith(f"\r\n--{boundary}--\r\n".encode())
    assert b'name="chunk"' in raw and b"x" * 1000 + b"\0" * 24 + b"\r\n--" in raw


def test_a_local_copy_that_is_not_what_was_signed_is_never_sent(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    build = qcow2_build(tmp_path, "20261130.030000-cccc", tail=4096 + 100)
    store = local_store(tmp_path, signer, build)
    img = verify_for_consumer(store, "rke2-node-debian", anchor(signer.public_key()))
    blob = store.path(img.manifest.image.key)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size: a size check alone would accept it
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    api = api_for(harvester, tmp_path)
    with pytest.raises(BuildError, match="is not the signed manifest's"):
        uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()), mode="upload")
    assert creates(harvester, "virtualmachineimages") == 0 and harvester.uploads == []


def test_bytes_that_change_during_the_upload_abort_it(tmp_path: Path) -> None:
    f = tmp_path / "image.qcow2"
    f.write_bytes(b"x" * 1000)
    body, _, _ = multipart(f, 1000, 1024, block=300, sha256=hashlib.sha256(b"y" * 1000).hexdigest())
    got = b""
    with pytest.raises(BuildError, match="changed while it was being uploaded"):
        for chunk in body:
            got += chunk
    assert got.count(b"x") < 1000 and b"--\r\n" not in got[-8:]  # never the last bytes, never the tail
    body, _, _ = multipart(f, 1000, 1024, block=300, sha256=hashlib.sha256(b"x" * 1000).hexdigest())
    assert b"x" * 1000 + b"\0" * 24 in b"".join(body)


def test_other_digest_under_the_same_name_needs_replace(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    store = local_store(tmp_path, signer, qcow2_build(tmp_path, "20261130.030000-cccc"))
    api = api_for(harvester, tmp_path)
    m = Catalogue(store).read_manifest("rke2-node-debian", "20261130.030000-cccc")[0]
    name = "rke2-node-debian-20261130-030000-cccc"
    api.create(
        ("harvesterhci.io", "v1beta1", "virtualmachineimages"),
        {
            "apiVersion": "harvesterhci.io/v1beta1",
            "kind": "VirtualMachineImage",
            "metadata": {"name": name, "annotations": {"imagefactory.io/sha256": "0" * 64}},
            "spec": {"displayName": "someone-elses", "sourceType": "download", "url": "http://127.0.0.1:9/x"},
        },
    )
    with pytest.raises(UserError) as e:
        uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
    assert "already exists with another image" in e.value.message and "--replace" in (e.value.hint or "")
    r = uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()), replace=True)
    assert r.name == name and not r.reused
    obj = harvester.get_object("virtualmachineimages", "default", name)
    assert obj and obj["metadata"]["annotations"]["imagefactory.io/sha256"] == m["image"]["sha256"]


def test_revoked_or_unsigned_images_are_refused(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    store = local_store(tmp_path, signer, qcow2_build(tmp_path, "20261130.040000-dddd"))
    api = api_for(harvester, tmp_path)
    with pytest.raises(signing.SignatureError):
        other = anchor(Ed25519PrivateKey.generate().public_key())
        uploader(api, tmp_path).upload(store, "rke2-node-debian", other)
    Catalogue(store).revoke(
        "rke2-node-debian:20261130.040000-dddd", "CVE in the kernel", signer, signer.public_key()
    )
    with pytest.raises(RevokedImage):
        uploader(api, tmp_path).upload(store, "rke2-node-debian:20261130.040000-dddd",
                                       anchor(signer.public_key()))
    assert harvester.objects("virtualmachineimages", "default") == []


def test_checksum_mismatch_reports_the_condition(
    harvester: HarvesterDouble, rgw_server: S3Server, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    build = qcow2_build(tmp_path, "20261130.050000-eeee")
    store = s3_store(rgw_server, signer, build)
    m = Catalogue(store).read_manifest("rke2-node-debian", "20261130.050000-eeee")[0]
    # The blob changes in the store after publishing (same size): Harvester's SHA-512 check catches it.
    bad = tmp_path / "bad.qcow2"
    data = bytearray((build / "image.qcow2").read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    key = f"blobs/sha256/{m['image']['sha256']}"
    store.client.fput_object(store.bucket, store.prefix + key, str(bad))
    with pytest.raises(BuildError) as e:
        uploader(api_for(harvester, tmp_path), tmp_path).upload(
            store, "rke2-node-debian", anchor(signer.public_key())
        )
    assert "doesn't match" in e.value.message, e.value.message
    obj = harvester.objects("virtualmachineimages", "default")[0]
    assert cond(obj, "RetryLimitExceeded").get("status") == "True"


def test_unreachable_url_fails_with_the_reason(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    store = LocalDirStore("local", tmp_path / "catalogue", url="http://127.0.0.1:9/catalogue")
    store.prepare()
    publish(qcow2_build(tmp_path, "20261130.060000-ffff"), store, signer, signer.public_key())
    with pytest.raises(BuildError) as e:
        uploader(api_for(harvester, tmp_path), tmp_path).upload(
            store, "rke2-node-debian", anchor(signer.public_key()), mode="download"
        )
    assert "failed" in e.value.message and (
        "refused" in e.value.message.lower() or "connect" in e.value.message.lower()
    ), e.value.message


def test_api_5xx_bursts_are_retried_then_reported(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    store = local_store(tmp_path, signer, qcow2_build(tmp_path, "20261130.070000-abab"))
    api = api_for(harvester, tmp_path)
    harvester.fail_next(3, status=503)
    r = uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
    assert r.storage_class
    assert sum(1 for _, _, s in harvester.requests if s == 503) == 3
    harvester.fail_next(50, status=500, method="GET")
    with pytest.raises(ApiError) as e:
        api.get(("harvesterhci.io", "v1beta1", "virtualmachineimages"), r.name)
    assert e.value.status == 500 and "HTTP 500" in e.value.message


def test_bad_credentials_are_a_user_error(harvester: HarvesterDouble, tmp_path: Path) -> None:
    path = harvester.kubeconfig(tmp_path / "kc")
    cfg = yaml.safe_load(path.read_text())
    cfg["users"][0]["user"]["token"] = "wrong-token-value"
    path.write_text(yaml.safe_dump(cfg))
    api = HarvesterApi(str(path), retries=2, backoff=0.01)
    with pytest.raises(UserError) as e:
        api.version()
    assert "401" in e.value.message and "wrong-token-value" not in str(e.value.message) + str(e.value.hint)


# --- clusters on Harvester ------------------------------------------------------------------------


def spec(**kw: Any) -> ClusterSpec:
    data: dict[str, Any] = {
        "name": "edge",
        "target": "harvester",
        "image": "rke2-node-debian",
        "servers": {"count": 1, "cpu": 2, "memory": "4GiB", "disk": "10GiB"},
        "agents": {"count": 2, "cpu": 2, "memory": "2GiB", "disk": "10GiB"},
        "ssh_authorized_keys": [KEY_LINE],
        "rke2": {"tls_san": ["edge.example"]},
    }
    data.update(kw)
    return ClusterSpec.model_validate(data)


def imported(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path, api: HarvesterApi
) -> UploadResult:
    store = local_store(tmp_path, signer, qcow2_build(tmp_path, "20261130.080000-cdcd"))
    return uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))


def secret_text(h: HarvesterDouble, name: str, key: str) -> str:
    s = h.get_object("secrets", "default", name)
    assert s is not None, name
    return base64.b64decode(s["data"][key]).decode()


def test_cluster_create_status_delete(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    cluster = HarvesterCluster(api, spec(), poll=0.05, ip_timeout=30)
    status = cluster.create(image)
    assert [(n.name, n.role, n.phase) for n in status.nodes] == [
        ("edge-agent-0", "agent", "Running"),
        ("edge-agent-1", "agent", "Running"),
        ("edge-server-0", "bootstrap", "Running"),
    ]
    assert status.running and all(n.ip for n in status.nodes)
    boot_ip = next(n.ip for n in status.nodes if n.role == "bootstrap")
    token = secret_text(harvester, "edge-token", "token")
    assert len(token) == 64
    for vm in ("edge-server-0", "edge-agent-0", "edge-agent-1"):
        ud = yaml.safe_load(secret_text(harvester, f"{vm}-cloudinit", "userdata"))
        join = yaml.safe_load(ud["write_files"][0]["content"])
        assert join["token"] == token and join["node-name"] == vm
        if vm == "edge-server-0":
            assert "server" not in join and join["tls-san"] == ["edge.example"]
        else:
            assert join["server"] == f"https://{boot_ip}:9345"
        assert KEY_LINE in ud["ssh_authorized_keys"]
        assert "dhcp4: true" in secret_text(harvester, f"{vm}-cloudinit", "networkdata")
        obj = harvester.get_object("virtualmachines", "default", vm)
        assert obj is not None
        claims = json.loads(obj["metadata"]["annotations"]["harvesterhci.io/volumeClaimTemplates"])
        assert claims[0]["spec"]["storageClassName"] == image.storage_class
        assert claims[0]["metadata"]["annotations"]["harvesterhci.io/imageId"] == f"default/{image.name}"
        assert claims[0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
        assert obj["spec"]["runStrategy"] == "RerunOnFailure"
        # Harvester's VM builder default, scoped to the pool: servers (etcd) spread over hosts
        pool = "servers" if vm.startswith("edge-server") else "agents"
        tmpl = obj["spec"]["template"]
        assert tmpl["metadata"]["labels"]["imagefactory.io/pool"] == pool
        anti = tmpl["spec"]["affinity"]["podAntiAffinity"]
        (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        selector = {"imagefactory.io/cluster": "edge", "imagefactory.io/pool": pool}
        assert term == {"weight": 100, "podAffinityTerm": {
            "labelSelector": {"matchLabels": selector}, "topologyKey": "kubernetes.io/hostname"}}
        seed = harvester.get_object("secrets", "default", f"{vm}-cloudinit")
        assert seed and seed["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    # the bootstrap server existed (with an IP) before any joiner was created
    vm_posts = [p for m, p, s in harvester.requests if m == "POST" and "/virtualmachines" in p and s < 300]
    assert len(vm_posts) == 3
    kp = harvester.get_object("keypairs", "default", "edge-ssh")
    assert kp and kp["spec"]["publicKey"] == KEY_LINE
    assert len(harvester.objects("persistentvolumeclaims", "default")) == 3
    # the image cannot go while the cluster's disks use it
    with pytest.raises(ApiError) as e:
        uploader(api, tmp_path).delete(image.name)
    assert e.value.status == 422 and "being used by volume default/edge-" in e.value.message
    assert "cluster delete" in (e.value.hint or "")
    removed = cluster.delete()
    assert {"virtualmachine/edge-server-0", "secret/edge-token", "keypair/edge-ssh"} <= set(removed)
    assert harvester.objects("virtualmachines", "default") == []
    assert harvester.objects("persistentvolumeclaims", "default") == []
    time.sleep(0.2)  # owner-reference garbage collection runs on the double's next tick
    assert [
        s["metadata"]["name"]
        for s in harvester.objects("secrets", "default")
        if s["metadata"]["name"].startswith("edge-")
    ] == []
    assert not cluster.status().exists
    uploader(api, tmp_path).delete(image.name)  # now it can
    assert harvester.objects("virtualmachineimages", "default") == []


def test_anti_affinity_required_or_none(harvester: HarvesterDouble, signer: Ed25519PrivateKey,
                                        tmp_path: Path) -> None:
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    s = spec(servers={"count": 1, "disk": "10GiB", "anti_affinity": "required"},
             agents={"count": 1, "disk": "10GiB", "anti_affinity": "none"})
    HarvesterCluster(api, s, poll=0.05, ip_timeout=30).create(image)
    server = harvester.get_object("virtualmachines", "default", "edge-server-0")
    agent = harvester.get_object("virtualmachines", "default", "edge-agent-0")
    assert server is not None and agent is not None
    (term,) = server["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"]["imagefactory.io/pool"] == "servers"
    assert "affinity" not in agent["spec"]["template"]["spec"]
    with pytest.raises(Exception, match="anti_affinity"):
        spec(servers={"anti_affinity": "sometimes"})


def test_vm_without_ip_then_create_again_continues(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    harvester.no_ip.add("edge-agent-1")
    cluster = HarvesterCluster(api, spec(), poll=0.05, ip_timeout=2)
    with pytest.raises(BuildError) as e:
        cluster.create(image)
    assert "edge-agent-1" in e.value.message and "no IP" in e.value.message
    assert "edge-server-0" not in e.value.message.split(":", 1)[1]
    uids = {
        v["metadata"]["name"]: v["metadata"]["uid"] for v in harvester.objects("virtualmachines", "default")
    }
    token = secret_text(harvester, "edge-token", "token")
    harvester.no_ip.clear()
    # the stuck VM gets its address after a restart of its VMI; here: delete the VMI as KubeVirt
    # would restart it under RerunOnFailure
    vmi = harvester.get_object("virtualmachineinstances", "default", "edge-agent-1")
    assert vmi is not None and not (vmi.get("status") or {}).get("interfaces", [{}])[0].get("ipAddress")
    api.delete(("kubevirt.io", "v1", "virtualmachineinstances"), "edge-agent-1")
    status = HarvesterCluster(api, spec(), poll=0.05, ip_timeout=30).create(image)
    assert status.running
    again = {
        v["metadata"]["name"]: v["metadata"]["uid"] for v in harvester.objects("virtualmachines", "default")
    }
    assert again == uids  # nothing recreated
    assert secret_text(harvester, "edge-token", "token") == token


def test_disk_smaller_than_the_image_is_refused(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    small = spec(agents={"count": 1, "disk": "1GiB"})
    with pytest.raises(UserError) as e:
        HarvesterCluster(api, small, poll=0.05).create(image)
    assert e.value.message.startswith("agents.disk") and "virtual size" in e.value.message
    assert harvester.objects("virtualmachines", "default") == []


def test_a_multi_node_cluster_goes_on_the_vm_network_where_its_nodes_can_form(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KubeVirt's masquerade binding gives every guest on the pod network 10.0.2.2: three RKE2
    nodes there all register that node IP (the double's guest model, tests/harvester/guest.py),
    which is what the pod-network default of before did. By default a multi-node cluster now
    attaches to the namespace's only VM network, where each guest has its own address."""
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    HarvesterCluster(api, spec(), poll=0.05, ip_timeout=30).create(image)
    vm = harvester.get_object("virtualmachines", "default", "edge-agent-1")
    assert vm is not None
    assert vm["spec"]["template"]["spec"]["networks"] == [
        {"name": "nic-0", "multus": {"networkName": "default/vm-net"}}]
    ips = harvester.rke2_node_ips()
    assert len(ips) == 3 and len(set(ips.values())) == 3 and None not in ips.values(), ips
    assert harvester.rke2_problems() == []
    # the same cluster on the pod network (the old default): the double sees it cannot form
    HarvesterCluster(api, spec(), poll=0.05).delete()
    monkeypatch.setattr(HarvesterCluster, "_network", lambda self: None)
    HarvesterCluster(api, spec(), poll=0.05, ip_timeout=30).create(image)
    assert harvester.rke2_problems() == [
        "edge-agent-0, edge-agent-1, edge-server-0 all register node IP 10.0.2.2"]


def test_a_multi_node_cluster_without_one_vm_network_is_refused(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    harvester.add_vm_network("vlan200", vlan=200)  # two VM networks: which one is not ours to guess
    with pytest.raises(UserError) as e:
        HarvesterCluster(api, spec(), poll=0.05).create(image)
    assert "cannot use the pod network" in e.value.message and "10.0.2.2" in e.value.message
    assert "default/vlan200, default/vm-net" in (e.value.hint or "")
    assert harvester.objects("virtualmachines", "default") == []
    # a one-node cluster stays on the pod network, where it works
    HarvesterCluster(api, spec(agents={"count": 0}), poll=0.05, ip_timeout=30).create(image)
    vm = harvester.get_object("virtualmachines", "default", "edge-server-0")
    assert vm is not None and vm["spec"]["template"]["spec"]["networks"] == [{"name": "default", "pod": {}}]
    assert harvester.rke2_problems() == [] and harvester.rke2_node_ips() == {"edge-server-0": "10.0.2.2"}


def _ssd_class(h: HarvesterDouble) -> None:
    h.add_object({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                  "metadata": {"name": "longhorn-ssd"}, "provisioner": "driver.longhorn.io",
                  "allowVolumeExpansion": True,
                  "parameters": {"numberOfReplicas": "2", "diskSelector": "ssd", "staleReplicaTimeout": "30",
                                 "migratable": "true"}})


def test_image_storage_follows_a_template_storage_class(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Harvester's webhook replaces an image's storageClassParameters with the allow-listed
    parameters of the StorageClass named in its annotation (else the default's): the way to
    choose replicas and disk/node selectors for an image is that annotation."""
    store = local_store(tmp_path, signer, qcow2_build(tmp_path, "20261206.030000-cccc"))
    api = api_for(harvester, tmp_path)
    ssd = ImageUploader(api, poll=0.05, timeout=60, cache=tmp_path / "cache", storage_class="longhorn-ssd")
    with pytest.raises(UserError, match="StorageClass longhorn-ssd does not exist"):
        ssd.upload(store, "rke2-node-debian", anchor(signer.public_key()))
    assert harvester.objects("virtualmachineimages", "default") == []
    _ssd_class(harvester)
    r = ssd.upload(store, "rke2-node-debian", anchor(signer.public_key()))
    sc = harvester.get_object("storageclasses", None, r.storage_class)
    assert sc is not None and sc["parameters"]["diskSelector"] == "ssd"
    assert sc["parameters"]["numberOfReplicas"] == "2" and sc["parameters"]["backingImage"].startswith("vmi-")


def test_data_disks_with_their_storage_classes(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    s = spec(servers={"count": 1, "cpu": 2, "memory": "4GiB", "disk": "10GiB",
                      "data_disks": [{"size": "20GiB", "storage_class": "longhorn-ssd"}]},
             agents={"count": 1, "cpu": 2, "memory": "2GiB", "disk": "10GiB",
                     "data_disks": [{"size": "5GiB"}]})
    with pytest.raises(UserError) as e:
        HarvesterCluster(api, s, poll=0.05).create(image)
    assert e.value.message.startswith("servers.data_disks.0.storage_class: StorageClass longhorn-ssd")
    assert harvester.objects("virtualmachines", "default") == []
    _ssd_class(harvester)
    HarvesterCluster(api, s, poll=0.05, ip_timeout=30).create(image)
    wait_for_pvcs = time.monotonic() + 10
    while len(harvester.objects("persistentvolumeclaims", "default")) < 4 \
            and time.monotonic() < wait_for_pvcs:
        time.sleep(0.05)
    pvcs = {p["metadata"]["name"].rsplit("-", 1)[0]: p
            for p in harvester.objects("persistentvolumeclaims", "default")}
    assert pvcs["edge-server-0-disk-1"]["spec"]["storageClassName"] == "longhorn-ssd"
    assert pvcs["edge-server-0-disk-1"]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert pvcs["edge-agent-0-disk-1"]["spec"]["storageClassName"] == "harvester-longhorn"  # the default
    assert pvcs["edge-agent-0-disk-0"]["spec"]["storageClassName"] == image.storage_class
    vm = harvester.get_object("virtualmachines", "default", "edge-server-0")
    assert vm is not None
    tpl = vm["spec"]["template"]["spec"]
    assert [d["name"] for d in tpl["domain"]["devices"]["disks"]] == ["disk-0", "disk-1", "cloudinitdisk"]
    disks = tpl["domain"]["devices"]["disks"]
    assert disks[0]["bootOrder"] == 1 and "bootOrder" not in disks[1]
    assert "tpm" not in tpl["domain"]["devices"]


def test_images_shared_from_harvester_public(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """An image in harvester-public serves VMs in any namespace: the disk's imageId names the
    image's namespace, not the VM's."""
    public = api_for(harvester, tmp_path, namespace="harvester-public")
    image = imported(harvester, signer, tmp_path, public)
    assert image.namespace == "harvester-public"
    harvester.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "edge"}})
    edge = api_for(harvester, tmp_path, namespace="edge")
    HarvesterCluster(edge, spec(agents={"count": 0}), poll=0.05, ip_timeout=30).create(image)
    vm = harvester.get_object("virtualmachines", "edge", "edge-server-0")
    assert vm is not None
    [claim] = json.loads(vm["metadata"]["annotations"]["harvesterhci.io/volumeClaimTemplates"])
    assert claim["metadata"]["annotations"]["harvesterhci.io/imageId"] == f"harvester-public/{image.name}"
    assert harvester.objects("virtualmachineimages", "edge") == []


def test_reserved_memory_per_pool(harvester: HarvesterDouble, signer: Ed25519PrivateKey,
                                  tmp_path: Path) -> None:
    """Harvester keeps reserved memory from the guest (its VM mutator: guest = limits.memory -
    reservedMemory); a pool's `reserved_memory` is that annotation."""
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    s = spec(servers={"count": 1, "cpu": 2, "memory": "4GiB", "disk": "10GiB", "reserved_memory": "256MiB"},
             agents={"count": 0})
    HarvesterCluster(api, s, poll=0.05, ip_timeout=30).create(image)
    vm = harvester.get_object("virtualmachines", "default", "edge-server-0")
    assert vm is not None and vm["metadata"]["annotations"]["harvesterhci.io/reservedMemory"] == "256Mi"
    assert vm["spec"]["template"]["spec"]["domain"]["memory"]["guest"] == "3840Mi"


def test_fixed_addresses_and_a_second_nic(harvester: HarvesterDouble, signer: Ed25519PrivateKey,
                                          tmp_path: Path) -> None:
    """A VM network without DHCP (Harvester has no IPAM): each node gets its fixed address from
    `network.addresses` through cloud-init's network config, matched by a MAC of ours, RKE2's
    node-ip pinned to it; a second NIC on a storage network gets DHCP without holding the boot."""
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    # the cluster network named: with the storage network there are two VM networks to choose from
    net = {"nad": "default/vm-net", "extra_nads": ["default/storage"],
           "addresses": {"cidr": "10.5.0.0/24", "first": 21, "gateway": "10.5.0.1", "dns": ["10.5.0.2"]}}
    with pytest.raises(UserError, match="extra_nads: NetworkAttachmentDefinition default/storage"):
        HarvesterCluster(api, spec(network=net), poll=0.05).create(image)
    assert harvester.objects("virtualmachines", "default") == []
    harvester.add_vm_network("storage", vlan=300)
    HarvesterCluster(api, spec(network=net), poll=0.05, ip_timeout=30).create(image)
    want = {"edge-server-0": "10.5.0.21", "edge-agent-0": "10.5.0.22", "edge-agent-1": "10.5.0.23"}
    for name, ip in want.items():
        vm = harvester.get_object("virtualmachines", "default", name)
        assert vm is not None
        tpl = vm["spec"]["template"]["spec"]
        assert [n["multus"]["networkName"] for n in tpl["networks"]] == ["default/vm-net", "default/storage"]
        macs = [i["macAddress"] for i in tpl["domain"]["devices"]["interfaces"]]
        nd = yaml.safe_load(secret_text(harvester, f"{name}-cloudinit", "networkdata"))
        assert nd["ethernets"]["nic0"] == {"match": {"macaddress": macs[0]}, "dhcp4": False,
                                           "addresses": [f"{ip}/24"],
                                           "routes": [{"to": "default", "via": "10.5.0.1"}],
                                           "nameservers": {"addresses": ["10.5.0.2"]}}
        assert nd["ethernets"]["nic1"]["match"] == {"macaddress": macs[1]}
        assert nd["ethernets"]["nic1"]["optional"] is True
        ud = yaml.safe_load(secret_text(harvester, f"{name}-cloudinit", "userdata"))
        join = next(f for f in ud["write_files"] if f["path"].startswith("/etc/rancher/rke2/config.yaml.d/"))
        assert yaml.safe_load(join["content"])["node-ip"] == ip
    # the joiners' server URL is the bootstrap server's fixed address, read back from its VMI
    agent = yaml.safe_load(secret_text(harvester, "edge-agent-0-cloudinit", "userdata"))
    join = next(f for f in agent["write_files"] if f["path"].startswith("/etc/rancher/rke2/config.yaml.d/"))
    assert yaml.safe_load(join["content"])["server"] == "https://10.5.0.21:9345"
    assert harvester.rke2_node_ips() == want and harvester.rke2_problems() == []


def test_vms_carry_harvesters_guest_cluster_labels(harvester: HarvesterDouble, signer: Ed25519PrivateKey,
                                                    tmp_path: Path) -> None:
    """Harvester finds a guest cluster's VMs (load balancer backends, cloud provider) by
    `guestcluster.harvesterhci.io/name` with the node driver as creator, on the VM and its pods."""
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    HarvesterCluster(api, spec(agents={"count": 0}), poll=0.05, ip_timeout=30).create(image)
    vm = harvester.get_object("virtualmachines", "default", "edge-server-0")
    assert vm is not None
    guest = {"guestcluster.harvesterhci.io/name": "edge",
             "harvesterhci.io/creator": "docker-machine-driver-harvester"}
    assert guest.items() <= vm["metadata"]["labels"].items()
    assert guest.items() <= vm["spec"]["template"]["metadata"]["labels"].items()
    vmi = harvester.get_object("virtualmachineinstances", "default", "edge-server-0")
    assert vmi is not None and guest.items() <= vmi["metadata"]["labels"].items()
    HarvesterCluster(api, spec(agents={"count": 0}), poll=0.05).delete()
    HarvesterCluster(api, spec(agents={"count": 0}, guest_cluster_labels=False), poll=0.05,
                     ip_timeout=30).create(image)
    vm = harvester.get_object("virtualmachines", "default", "edge-server-0")
    assert vm is not None and "guestcluster.harvesterhci.io/name" not in vm["metadata"]["labels"]
    assert vm["metadata"]["labels"]["harvesterhci.io/creator"] == "imagefactory"


def test_an_upload_through_rancher_that_its_ingress_refuses(
        harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path) -> None:
    """A Rancher-generated kubeconfig reaches Harvester through `/k8s/clusters/<id>`; Rancher's
    ingress (RKE2's ingress-nginx, 1 MiB bodies by default) answers a bigger upload with 413.
    Everything else works through the proxy; the upload is a clear error naming the proxy, and
    the empty upload image is not left behind."""
    harvester.rancher_cluster = "c-m-7xk2p9qd"
    api = api_for(harvester, tmp_path)
    assert "/k8s/clusters/c-m-7xk2p9qd" in api.target.server
    small = local_store(tmp_path / "small", signer, qcow2_build(tmp_path / "small", "20261206.040000-dddd"))
    trusted = anchor(signer.public_key())
    assert uploader(api, tmp_path).upload(small, "rke2-node-debian", trusted).source == "upload"
    big_build = qcow2_build(tmp_path / "big", "20261206.050000-eeee", tail=3 * 1024**2)
    big = local_store(tmp_path / "big", signer, big_build)
    with pytest.raises(UserError) as e:
        uploader(api, tmp_path).upload(big, "rke2-node-debian", anchor(signer.public_key()))
    assert "refused by Rancher's proxy" in e.value.message and "HTTP 413" in e.value.message
    assert "kubeconfig for Harvester itself" in (e.value.hint or "")
    names = [o["metadata"]["name"] for o in harvester.objects("virtualmachineimages", "default")]
    assert names == ["rke2-node-debian-20261206-040000-dddd"]  # the refused one is gone
    assert any(status == 413 for _, _, status in harvester.requests)


def test_harvesters_http_proxy_setting_is_used_for_downloads(
        harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Harvester fetches with the proxy of its `http-proxy` setting, by Go's rules: a site store
    not in noProxy goes through the proxy. The uploader warns before creating the image, and the
    double's fetch goes through the (here unreachable) proxy and fails with Go's proxyconnect
    error. No packet leaves loopback: the URL's host is only ever named to the proxy."""
    from tests.publishing import free_port

    harvester.add_object({"apiVersion": "harvesterhci.io/v1beta1", "kind": "Setting",
                          "metadata": {"name": "http-proxy"},
                          "value": json.dumps({"httpProxy": f"http://127.0.0.1:{free_port()}",
                                               "noProxy": "localhost,127.0.0.1,cattle-system.svc"})})
    store = LocalDirStore("site", tmp_path / "catalogue", url="http://minio.site.example:9000/catalogue")
    store.prepare()
    publish(qcow2_build(tmp_path, "20261206.060000-ffff"), store, signer, signer.public_key())
    # this host cannot reach the site's store either; what Harvester does with it is the point here
    monkeypatch.setattr("imagefactory.harvester.images.download_problem", lambda *a, **k: None)
    with pytest.raises(BuildError) as e:
        uploader(api_for(harvester, tmp_path), tmp_path).upload(store, "rke2-node-debian",
                                                                anchor(signer.public_key()))
    assert "through its http-proxy http://127.0.0.1:" in caplog.text and "add it to noProxy" in caplog.text
    assert "proxyconnect tcp: dial tcp 127.0.0.1:" in e.value.message, e.value.message


def test_tpm_on_request(harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path) -> None:
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    HarvesterCluster(api, spec(agents={"count": 0}, tpm=True), poll=0.05, ip_timeout=30).create(image)
    vm = harvester.get_object("virtualmachines", "default", "edge-server-0")
    assert vm is not None and vm["spec"]["template"]["spec"]["domain"]["devices"]["tpm"] == {}


def test_vlan_network_needs_its_nad(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    vlan = spec(network={"type": "vlan", "nad": "default/vlan100"}, agents={"count": 0})
    with pytest.raises(UserError) as e:
        HarvesterCluster(api, vlan, poll=0.05).create(image)
    assert "default/vlan100" in e.value.message
    harvester.add_object(
        {
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {
                "name": "vlan100",
                "namespace": "default",
                "labels": {"network.harvesterhci.io/clusternetwork": "mgmt"},
            },
            "spec": {"config": '{"cniVersion":"0.3.1","name":"vlan100","type":"bridge","vlan":100}'},
        }
    )
    HarvesterCluster(api, vlan, poll=0.05, ip_timeout=30).create(image)
    vm = harvester.get_object("virtualmachines", "default", "edge-server-0")
    assert vm is not None
    tpl = vm["spec"]["template"]["spec"]
    assert tpl["networks"] == [{"name": "nic-0", "multus": {"networkName": "default/vlan100"}}]
    assert tpl["domain"]["devices"]["interfaces"][0]["bridge"] == {}
    ud = yaml.safe_load(secret_text(harvester, "edge-server-0-cloudinit", "userdata"))
    assert any("qemu-guest-agent" in str(c) for c in ud["bootcmd"])  # bridge IPs come from the agent


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_upload_and_cluster_json(harvester: HarvesterDouble, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    private, public = signing.generate(keys, "t")
    signer = signing.load_private_key(str(private))
    store_dir = tmp_path / "catalogue"
    store = LocalDirStore("site", store_dir)
    store.prepare()
    publish(qcow2_build(tmp_path, "20261130.090000-efef"), store, signer, signer.public_key())
    kubeconfig = harvester.kubeconfig(tmp_path / "kubeconfig")
    config = tmp_path / "imagefactory.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "stores": {"site": {"type": "local", "path": str(store_dir)}},
                "default_store": "site",
                "signing": {"public_key": str(public)},
                "harvester": {"kubeconfig": str(kubeconfig), "poll": 0.05, "vm_ip_timeout": 30},
            }
        )
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "imagefactory.cli",
                "--json",
                "--config",
                str(config),
                "--workdir",
                str(tmp_path / "work"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = cli("harvester", "upload", "rke2-node-debian@candidate")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["source"] == "upload" and out["storage_class"].startswith("lh-") and out["reused"] is False
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "cli",
                "target": "harvester",
                "image": "rke2-node-debian",
                "servers": {"count": 1, "disk": "4GiB"},
                "agents": {"count": 1},
            }
        )
    )
    r = cli("cluster", "create", "-f", str(spec_file))
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["running"] and {n["role"] for n in st["nodes"]} == {"bootstrap", "agent"}
    token = secret_text(harvester, "cli-token", "token")
    r2 = cli("cluster", "status", "-f", str(spec_file))
    assert r2.returncode == 0 and json.loads(r2.stdout)["nodes"] == st["nodes"]
    for text in (r.stdout, r.stderr, r2.stdout, r2.stderr):
        assert token not in text and harvester.token not in text  # no secret is ever printed
    r = cli("cluster", "delete", "-f", str(spec_file))
    assert r.returncode == 0 and "virtualmachine/cli-server-0" in json.loads(r.stdout)["removed"]
    # bad input: exit 2 with file and hint, no traceback
    r = cli("harvester", "upload", "rke2-node-debian", "--kubeconfig", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no such kubeconfig" in r.stderr and "Traceback" not in r.stderr
    r = cli("harvester", "upload", "no-such-image")
    assert r.returncode == 2 and "no-such-image" in r.stderr


def test_object_names_are_dns_labels() -> None:
    from imagefactory.catalogue.manifest import Manifest

    raw = json.loads(
        json.dumps(
            {
                "name": "rke2-node-debian",
                "version": "20261130.010000-AAAA",
                "build_id": "x",
                "created": "x",
                "published": "x",
                "os": {"family": "debian", "release": "12", "arch": "amd64"},
                "image": {
                    "file": "image.qcow2",
                    "format": "qcow2",
                    "size": 1,
                    "sha256": "a" * 64,
                    "sha512": "b" * 128,
                },
            }
        )
    )
    m = Manifest.model_validate(raw)
    assert object_name(m) == "rke2-node-debian-20261130-010000-aaaa"


# --- a store that answers HEAD as S3 does ---------------------------------------------------------


class _SignedGetOnly(LocalDirStore):
    """A directory served over HTTP the way S3, MinIO and Ceph RGW serve a URL presigned for GET:
    GET answers, HEAD gets 403 (the signature covers the method)."""

    def presign(self, key: str, expires: Any) -> str:
        return f"{self.url}/{key}?X-Amz-Credential=AKIDTEST&X-Amz-Signature=5ec7e75ec7e7"


@pytest.fixture
def signed_get_only(tmp_path: Path) -> Iterator[str]:
    import functools
    import http.server
    import threading

    root = tmp_path / "catalogue"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_error(403, "SignatureDoesNotMatch")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_url_that_refuses_head_is_uploaded_instead(harvester: HarvesterDouble, signer: Ed25519PrivateKey,
                                                     tmp_path: Path, signed_get_only: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Harvester HEADs a download URL first and fails the image on >= 400 (CheckURLAndUpdate);
    the double would not (its controller's HEAD reaches this server, but the product never
    sends it the URL): by default the image is uploaded instead, the log says why, and no
    signature of the presigned URL is logged."""
    store = _SignedGetOnly("s3ish", tmp_path / "catalogue", signed_get_only)
    for b in (qcow2_build(tmp_path, "20261205.010000-aaaa"),):
        publish(b, store, signer, signer.public_key())
    api = api_for(harvester, tmp_path)
    r = uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
    assert r.source == "upload"
    obj = harvester.get_object("virtualmachineimages", "default", r.name)
    assert obj is not None and obj["spec"]["sourceType"] == "upload" and "url" not in obj["spec"]
    assert "HEAD answered 403" in caplog.text and "uploading instead" in caplog.text
    assert "X-Amz-Signature" not in caplog.text and "5ec7e75ec7e7" not in caplog.text


def test_download_on_request_fails_before_creating_anything(harvester: HarvesterDouble,
                                                            signer: Ed25519PrivateKey, tmp_path: Path,
                                                            signed_get_only: str) -> None:
    store = _SignedGetOnly("s3ish", tmp_path / "catalogue", signed_get_only)
    publish(qcow2_build(tmp_path, "20261205.020000-bbbb"), store, signer, signer.public_key())
    api = api_for(harvester, tmp_path)
    with pytest.raises(UserError) as e:
        uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()),
                                       mode="download")
    assert "HEAD answered 403" in e.value.message and "--upload" in (e.value.hint or "")
    assert "5ec7e75ec7e7" not in e.value.message + (e.value.hint or "")
    assert creates(harvester, "virtualmachineimages") == 0


def test_a_presigned_url_fails_harvesters_head_on_a_real_s3_server(
        harvester: HarvesterDouble, rgw_server: S3Server, signer: Ed25519PrivateKey, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without anonymous blob reads the store can only hand out a URL presigned for GET, and RGW
    (like AWS S3 and MinIO) answers Harvester's HEAD on it with 403: --download fails before
    anything is created, the default uploads instead. Were the product not to check (the code
    before d08ff25), the double's controller fails the import on that HEAD as Harvester does."""
    store = s3_store(rgw_server, signer, qcow2_build(tmp_path, "20261206.010000-aaaa"), anonymous_blobs=False)
    api = api_for(harvester, tmp_path)
    with pytest.raises(UserError) as e:
        uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()),
                                       mode="download")
    assert "HEAD answered 403" in e.value.message and "anonymous_blobs" in (e.value.hint or "")
    assert "X-Amz-Signature" not in e.value.message and creates(harvester, "virtualmachineimages") == 0
    monkeypatch.setattr("imagefactory.harvester.images.download_problem", lambda *a, **k: None)
    with pytest.raises(BuildError) as failed:
        uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()),
                                       mode="download")
    assert "got 403 status code" in failed.value.message, failed.value.message
    assert "X-Amz-Signature" not in failed.value.message + (failed.value.hint or "")
    monkeypatch.undo()
    r = uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
    assert r.source == "upload" and not r.reused


def test_a_size_longhorn_cannot_write_is_not_downloaded(harvester: HarvesterDouble, rgw_server: S3Server,
                                                        signer: Ed25519PrivateKey, tmp_path: Path) -> None:
    """Longhorn writes backing images with direct I/O: a download whose size is not a multiple of
    512 would fail after the whole transfer; the upload pads it."""
    build = qcow2_build(tmp_path, "20261205.030000-cccc", tail=1000)
    store = s3_store(rgw_server, signer, build)
    api = api_for(harvester, tmp_path)
    with pytest.raises(UserError, match="not a multiple of 512"):
        uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()),
                                       mode="download")
    r = uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
    assert r.source == "upload" and r.size is not None and r.size % 512 == 0


def test_registry_credentials_travel_in_the_cloudinit_secret_only(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """The spec's registry credentials reach every node in its user-data Secret (as the token does),
    never in the VirtualMachine object, its annotations or the image."""
    api = api_for(harvester, tmp_path)
    image = imported(harvester, signer, tmp_path, api)
    (tmp_path / "reg.yaml").write_text("username: site\npassword: registry-secret-42\n")
    s = spec(agents={"count": 1, "cpu": 2, "memory": "2GiB", "disk": "10GiB"}, directory=tmp_path,
             registries={"configs": {"registry.site": {"auth_file": "reg.yaml"}}})
    HarvesterCluster(api, s, poll=0.05, ip_timeout=30).create(image)
    for vm in ("edge-server-0", "edge-agent-0"):
        ud = yaml.safe_load(secret_text(harvester, f"{vm}-cloudinit", "userdata"))
        reg = next(f for f in ud["write_files"] if f["path"] == "/etc/rancher/rke2/registries.yaml")
        assert reg["permissions"] == "0600"
        assert yaml.safe_load(reg["content"])["configs"]["registry.site"]["auth"]["password"] == \
            "registry-secret-42"
        assert "registry-secret-42" not in json.dumps(harvester.get_object("virtualmachines", "default", vm))


@pytest.mark.parametrize(("disk", "want", "smm"), [
    ({"firmware": "hybrid", "secure_boot": True}, {"bootloader": {"efi": {"secureBoot": True}}}, True),
    ({"firmware": "uefi", "secure_boot": False}, {"bootloader": {"efi": {"secureBoot": False}}}, False),
    ({"firmware": "bios"}, None, False),
    (None, None, False),  # a manifest from before `boot` was recorded: BIOS, as before
])
def test_vm_firmware_follows_the_image(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path,
    disk: dict[str, Any] | None, want: dict[str, Any] | None, smm: bool,
) -> None:
    """UEFI (with Secure Boot and SMM when the image was built for it) for an image that boots on
    UEFI; the double refuses Secure Boot without SMM as KubeVirt's webhook does."""
    api = api_for(harvester, tmp_path)
    store = local_store(tmp_path, signer, qcow2_build(tmp_path, "20261130.080000-efef", disk=disk))
    image = uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
    HarvesterCluster(api, spec(agents={"count": 0}), poll=0.05, ip_timeout=30).create(image)
    vm = harvester.get_object("virtualmachines", "default", "edge-server-0")
    domain = vm["spec"]["template"]["spec"]["domain"]
    assert domain.get("firmware") == want
    assert (domain.get("features") or {}).get("smm") == ({"enabled": True} if smm else None)


def test_firmware_the_image_cannot_boot_is_refused_before_anything_is_created(
    harvester: HarvesterDouble, signer: Ed25519PrivateKey, tmp_path: Path
) -> None:
    api = api_for(harvester, tmp_path)
    store = local_store(tmp_path, signer, qcow2_build(tmp_path, "20261130.080000-abab",
                                                      disk={"firmware": "uefi", "secure_boot": True}))
    image = uploader(api, tmp_path).upload(store, "rke2-node-debian", anchor(signer.public_key()))
    with pytest.raises(UserError, match="boots on UEFI only"):
        HarvesterCluster(api, spec(firmware="bios"), poll=0.05, ip_timeout=30).create(image)
    assert harvester.get_object("virtualmachines", "default", "edge-server-0") is None
    assert harvester.get_object("secrets", "default", "edge-token") is None
