"""The Harvester double, exercised through the official kubernetes client (and `requests` for uploads)."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.harvester import HarvesterDouble

GROUP, V = "harvesterhci.io", "v1beta1"
GIB = 2**30


# --- fixtures and helpers -------------------------------------------------------------------------------


def start_double(**kwargs: Any) -> HarvesterDouble:
    h = HarvesterDouble(tick=0.02, **kwargs).start()
    h.retry_backoff = 0.05
    return h


@pytest.fixture
def harvester() -> Iterator[HarvesterDouble]:
    h = start_double()
    try:
        yield h
    finally:
        h.stop()
    assert h.errors == []


def connect(h: HarvesterDouble, tmp_path: Path, namespace: str = "default") -> client.CustomObjectsApi:
    """load_kube_config as product code does; returns a CustomObjectsApi on the default configuration."""
    path = h.kubeconfig(tmp_path / f"kubeconfig-{id(h)}", namespace=namespace, context="harvester")
    config.load_kube_config(config_file=str(path), context="harvester")
    return client.CustomObjectsApi()


@pytest.fixture
def co(harvester: HarvesterDouble, tmp_path: Path) -> client.CustomObjectsApi:
    return connect(harvester, tmp_path)


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def status_of(e: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(e.body)
    return body


def cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def retries_exhausted(harvester: HarvesterDouble, name: str, what: str) -> dict[str, Any]:
    """The image once Harvester has given up on it (RetryLimitExceeded=True)."""
    img: dict[str, Any] = wait_for(
        lambda: (
            (o := harvester.get_object("virtualmachineimages", "default", name))
            and cond(o, "RetryLimitExceeded").get("status") == "True"
            and o
        ),
        what=what,
    )
    return img


def image_body(name: str, display: str, source: str = "download", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{V}",
        "kind": "VirtualMachineImage",
        "metadata": {"name": name},
        "spec": {"displayName": display, "sourceType": source, **spec},
    }


def create_image(co: client.CustomObjectsApi, body: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    created: dict[str, Any] = co.create_namespaced_custom_object(GROUP, V, ns, "virtualmachineimages", body)
    return created


def fake_qcow2(virtual_size: int, length: int) -> bytes:
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(16) + virtual_size.to_bytes(8, "big")
    return (header + bytes(range(256)) * ((length - len(header)) // 256 + 1))[:length]


class FileServer:
    """Plain-HTTP source for download images (like a presigned S3 URL), counting GETs per path."""

    def __init__(self, root: Path) -> None:
        self.gets: list[str] = []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.gets.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.root = root
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.url(name)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "files"
    root.mkdir()
    server = FileServer(root)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- generic Kubernetes behaviour -----------------------------------------------------------------------


def test_wrong_token_is_401(harvester: HarvesterDouble, tmp_path: Path) -> None:
    co = connect(harvester, tmp_path)
    harvester.token = "not-the-token-in-the-kubeconfig"
    with pytest.raises(ApiException) as e:
        co.list_namespaced_custom_object(GROUP, V, "default", "virtualmachineimages")
    assert e.value.status == 401
    assert status_of(e.value)["reason"] == "Unauthorized"


def test_version_and_harvester_server_version(
    harvester: HarvesterDouble, co: client.CustomObjectsApi, tmp_path: Path
) -> None:
    kubeconfig = harvester.kubeconfig(tmp_path / "kc", namespace="rke2", context="lab")
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert "namespace: rke2" in kubeconfig.read_text() and "current-context: lab" in kubeconfig.read_text()
    assert client.VersionApi().get_code().git_version == "v1.31.4+rke2r1"
    setting = co.get_cluster_custom_object(GROUP, V, "settings", "server-version")
    assert setting["kind"] == "Setting" and setting["value"] == "v1.8.0"
    harvester.version = "v1.6.1"
    assert co.get_cluster_custom_object(GROUP, V, "settings", "server-version")["value"] == "v1.6.1"


def test_custom_object_crud(harvester: HarvesterDouble, co: client.CustomObjectsApi) -> None:
    g, v, plural = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"
    nad = {
        "apiVersion": f"{g}/{v}",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "vlan100", "labels": {"network.harvesterhci.io/clusternetwork": "mgmt"}},
        "spec": {"config": json.dumps({"cniVersion": "0.3.1", "type": "bridge", "vlan": 100})},
    }
    created = co.create_namespaced_custom_object(g, v, "default", plural, nad)
    assert created["metadata"]["uid"] and created["metadata"]["generation"] == 1
    assert created["spec"] == nad["spec"]

    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(g, v, "default", plural, nad)
    assert e.value.status == 409 and status_of(e.value)["reason"] == "AlreadyExists"

    other = {**nad, "metadata": {"generateName": "net-"}}
    generated = co.create_namespaced_custom_object(g, v, "default", plural, other)
    assert generated["metadata"]["name"].startswith("net-") and len(generated["metadata"]["name"]) == 9

    listed = co.list_namespaced_custom_object(
        g, v, "default", plural, label_selector="network.harvesterhci.io/clusternetwork=mgmt"
    )
    assert listed["kind"] == "NetworkAttachmentDefinitionList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["vlan100"]
    by_field = co.list_namespaced_custom_object(
        g, v, "default", plural, field_selector="metadata.name=vlan100"
    )
    assert len(by_field["items"]) == 1
    exists = co.list_namespaced_custom_object(
        g, v, "default", plural, label_selector="!network.harvesterhci.io/clusternetwork"
    )
    assert [i["metadata"]["name"] for i in exists["items"]] == [generated["metadata"]["name"]]

    patched = co.patch_namespaced_custom_object(
        g, v, "default", plural, "vlan100", {"metadata": {"labels": {"team": "ops"}}}
    )
    assert patched["metadata"]["labels"] == {"network.harvesterhci.io/clusternetwork": "mgmt", "team": "ops"}
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    stale = dict(created, spec={"config": "{}"})  # resourceVersion of the first read
    with pytest.raises(ApiException) as e:
        co.replace_namespaced_custom_object(g, v, "default", plural, "vlan100", stale)
    assert e.value.status == 409 and status_of(e.value)["reason"] == "Conflict"
    fresh = dict(patched, spec={"config": "{}"})
    assert (
        co.replace_namespaced_custom_object(g, v, "default", plural, "vlan100", fresh)["metadata"][
            "generation"
        ]
        == 2
    )

    json_patched = co.patch_namespaced_custom_object(
        g,
        v,
        "default",
        plural,
        "vlan100",
        [{"op": "replace", "path": "/spec/config", "value": '{"a":1}'}],
        _content_type="application/json-patch+json",
    )
    assert json_patched["spec"]["config"] == '{"a":1}'
    with pytest.raises(ApiException) as e:  # a list sent as a merge patch is not an object
        co.patch_namespaced_custom_object(
            g, v, "default", plural, "vlan100", [{"op": "remove", "path": "/spec"}]
        )
    assert e.value.status == 400

    deleted = co.delete_namespaced_custom_object(g, v, "default", plural, "vlan100")
    assert deleted["metadata"]["name"] == "vlan100"  # custom resources answer with the deleted object
    for call in (co.get_namespaced_custom_object, co.delete_namespaced_custom_object):
        with pytest.raises(ApiException) as e:
            call(g, v, "default", plural, "vlan100")
        assert e.value.status == 404 and status_of(e.value)["reason"] == "NotFound"


def test_create_in_missing_namespace_is_404(co: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as e:
        create_image(co, image_body("x", "x", url="http://127.0.0.1/x"), ns="nope")
    assert e.value.status == 404 and 'namespaces "nope" not found' in status_of(e.value)["message"]


def test_core_secret_roundtrip(harvester: HarvesterDouble, co: client.CustomObjectsApi) -> None:
    core = client.CoreV1Api()
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="vm-cloudinit"),
        string_data={"userdata": "#cloud-config\n", "networkdata": ""},
    )
    core.create_namespaced_secret("default", body)
    secret = core.read_namespaced_secret("vm-cloudinit", "default")
    assert base64.b64decode(secret.data["userdata"]) == b"#cloud-config\n"
    assert secret.type == "Opaque"
    core.patch_namespaced_secret("vm-cloudinit", "default", {"metadata": {"labels": {"a": "b"}}})
    assert harvester.get_object("secrets", "default", "vm-cloudinit")["metadata"]["labels"] == {"a": "b"}
    status = core.delete_namespaced_secret("vm-cloudinit", "default")
    assert status["kind"] == "Status" and status["status"] == "Success"
    with pytest.raises(ApiException) as e:
        core.read_namespaced_secret("vm-cloudinit", "default")
    assert e.value.status == 404


def test_fail_next_burst_reaches_the_client(harvester: HarvesterDouble, co: client.CustomObjectsApi) -> None:
    harvester.fail_next(2, 503, method="GET", path_contains="/virtualmachineimages")
    for _ in range(2):
        with pytest.raises(ApiException) as e:
            co.list_namespaced_custom_object(GROUP, V, "default", "virtualmachineimages")
        assert e.value.status == 503 and status_of(e.value)["reason"] == "ServiceUnavailable"
    assert co.list_namespaced_custom_object(GROUP, V, "default", "virtualmachineimages")["items"] == []
    statuses = [s for m, p, s in harvester.requests if "virtualmachineimages" in p]
    assert statuses == [503, 503, 200]


# --- image admission ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"sourceType": "ftp"}, 'spec.sourceType: Unsupported value: "ftp"'),
        (
            {"retry": 11},
            "spec.retry: Invalid value: 11: spec.retry in body should be less than or equal to 10",
        ),
        ({"retry": "3"}, "spec.retry in body must be of type integer"),
        ({"displayName": None}, "spec.displayName: Required value"),
    ],
)
def test_image_schema_violations_are_422(
    co: client.CustomObjectsApi, spec: dict[str, Any], message: str
) -> None:
    body = image_body("img", "img", url="http://127.0.0.1/x.qcow2")
    body["spec"].update(spec)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    with pytest.raises(ApiException) as e:
        create_image(co, body)
    assert e.value.status == 422
    status = status_of(e.value)
    assert status["reason"] == "Invalid"
    assert status["message"].startswith('VirtualMachineImage.harvesterhci.io "img" is invalid: ')
    assert message in status["message"]


def test_unknown_fields_pruned_with_warning_per_version(tmp_path: Path) -> None:
    body = image_body("img", "img", url="http://127.0.0.1:1/x", backend="cdi", bogus=1)
    old = start_double(version="v1.4.0")
    try:
        data, _, headers = connect(old, tmp_path).create_namespaced_custom_object_with_http_info(
            GROUP, V, "default", "virtualmachineimages", body
        )
        assert "backend" not in data["spec"] and "bogus" not in data["spec"]
        assert 'unknown field "spec.backend"' in old.warnings and 'unknown field "spec.bogus"' in old.warnings
        assert (
            '299 - "unknown field \\"spec.backend\\""' in headers["Warning"]
        )  # the header reached the client
    finally:
        old.stop()
    new = start_double(version="v1.8.0")
    try:
        created = create_image(connect(new, tmp_path), body)
        assert created["spec"]["backend"] == "cdi" and new.warnings == ['unknown field "spec.bogus"']
        defaulted = create_image(
            connect(new, tmp_path), image_body("img2", "img2", url="http://127.0.0.1:1/x")
        )
        assert defaulted["spec"]["backend"] == "backingimage" and defaulted["spec"]["retry"] == 3
        assert defaulted["spec"]["storageClassParameters"] == {
            "numberOfReplicas": "3",
            "staleReplicaTimeout": "30",
            "migratable": "true",
        }
    finally:
        new.stop()


def test_image_webhook_rules(tmp_path: Path) -> None:
    h = start_double(version="v1.9.0")
    try:
        co = connect(h, tmp_path)
        with pytest.raises(ApiException) as e:
            create_image(co, image_body("a", "my image", url="http://127.0.0.1:1/x"))
        assert e.value.status == 422
        assert status_of(e.value)["message"].startswith(
            'admission webhook "validator.harvesterhci.io" denied the request: displayName is not a valid '
            "Kubernetes label value"
        )
        with pytest.raises(ApiException) as e:
            create_image(co, image_body("a", "ok", "download"))
        assert "url is required" in status_of(e.value)["message"]
        with pytest.raises(ApiException) as e:
            create_image(co, image_body("a", "ok", "upload", url="http://x"))
        assert 'url should be empty when image source type is "upload"' in status_of(e.value)["message"]

        first = create_image(co, image_body("a", "ubuntu-24.04", url="http://127.0.0.1:1/x"))
        assert first["metadata"]["labels"]["harvesterhci.io/imageDisplayName"] == "ubuntu-24.04"
        with pytest.raises(ApiException) as e:
            create_image(co, image_body("b", "ubuntu-24.04", url="http://127.0.0.1:1/y"))
        assert (
            e.value.status == 409 and "A resource with the same name exists" in status_of(e.value)["message"]
        )
        for patch, msg in (
            ({"spec": {"displayName": "other"}}, "displayName cannot be modified"),
            ({"spec": {"url": "http://127.0.0.1:1/z"}}, "url cannot be modified"),
        ):
            with pytest.raises(ApiException) as e:
                co.patch_namespaced_custom_object(GROUP, V, "default", "virtualmachineimages", "a", patch)
            assert msg in status_of(e.value)["message"]
    finally:
        h.stop()
    older = start_double(version="v1.8.0")  # no label injection before v1.8.2: the name is accepted
    try:
        created = create_image(
            connect(older, tmp_path), image_body("a", "my image", url="http://127.0.0.1:1/x")
        )
        assert "harvesterhci.io/imageDisplayName" not in (created["metadata"].get("labels") or {})
    finally:
        older.stop()


# --- image import ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "sc_prefix"), [("v1.7.0", "longhorn-"), ("v1.8.0", "lh-")])
def test_download_import(tmp_path: Path, files: FileServer, version: str, sc_prefix: str) -> None:
    data = fake_qcow2(10 * GIB, 300_032)  # a multiple of 512, as Longhorn needs
    url = files.put("golden.qcow2", data)
    h = start_double(version=version)
    try:
        h.download_rate = len(data) * 3  # ~0.33 s, so progress is observable
        co = connect(h, tmp_path)
        created = create_image(
            co, image_body("golden", "golden", url=url, checksum=hashlib.sha512(data).hexdigest())
        )
        seen: list[int] = []

        def imported() -> dict[str, Any] | None:
            img = h.get_object("virtualmachineimages", "default", "golden")
            seen.append(((img or {}).get("status") or {}).get("progress", 0))
            return img if cond(img, "Imported").get("status") == "True" else None

        img = wait_for(imported, what="Imported=True")
        st = img["status"]
        assert st["progress"] == 100 and st["size"] == len(data) and st["virtualSize"] == 10 * GIB
        assert max(seen[:-1]) <= 99 and any(0 < p < 100 for p in seen)
        assert (
            cond(img, "Initialized")["reason"] == "Initialized"
            and cond(img, "Imported")["reason"] == "Imported"
        )
        expected_sc = sc_prefix + (created["metadata"]["uid"] if sc_prefix == "lh-" else "golden")
        assert st["storageClassName"] == expected_sc and st["appliedUrl"] == url
        sc = h.get_object("storageclasses", None, expected_sc)
        assert sc is not None and sc["provisioner"] == "driver.longhorn.io"
        assert sc["parameters"]["backingImage"] == f"vmi-{created['metadata']['uid']}"
        assert sc["parameters"]["numberOfReplicas"] == "3"
    finally:
        h.stop()
    assert h.errors == []


def test_checksum_mismatch_retries_then_gives_up(
    harvester: HarvesterDouble, co: client.CustomObjectsApi, files: FileServer
) -> None:
    url = files.put("img.qcow2", fake_qcow2(GIB, 4096))
    wrong = hashlib.sha512(b"something else").hexdigest()
    create_image(co, image_body("img", "img", url=url, checksum=wrong, retry=2))
    img = retries_exhausted(harvester, "img", "RetryLimitExceeded")
    assert img["status"]["failed"] == 3 and img["status"]["lastFailedTime"]
    imported = cond(img, "Imported")
    assert imported["status"] == "False"
    assert imported["message"].startswith("retry attempted 2/2 failed due to error: the expected checksum ")
    assert "doesn't match the file actual checksum" in imported["message"]
    assert files.gets.count("/img.qcow2") == 3
    time.sleep(0.2)  # the controller has stopped retrying
    assert files.gets.count("/img.qcow2") == 3


def test_download_of_a_size_longhorn_cannot_write_fails(
    harvester: HarvesterDouble, co: client.CustomObjectsApi, files: FileServer
) -> None:
    """Longhorn writes backing images with direct I/O: 512-byte multiples only, downloads too."""
    data = fake_qcow2(GIB, 4096 + 100)
    url = files.put("odd.qcow2", data)
    create_image(co, image_body("odd", "odd", url=url, checksum=hashlib.sha512(data).hexdigest(), retry=1))
    img = wait_for(
        lambda: (
            (o := harvester.get_object("virtualmachineimages", "default", "odd"))
            and cond(o, "RetryLimitExceeded").get("status") == "True"
            and o
        ),
        what="RetryLimitExceeded",
    )
    message = cond(img, "Imported")["message"]
    assert "4196 should be a multiple of 512 bytes since Longhorn uses directIO" in message


def test_https_source_needs_its_ca_in_additional_ca(
    harvester: HarvesterDouble, co: client.CustomObjectsApi, tmp_path: Path
) -> None:
    """Go's default client verifies TLS: a store with a private CA fails Initialized until the CA
    is in Harvester's additional-ca setting."""
    import ssl

    from tests.harvester.double import _make_certs

    ca_pem, cert_pem, key_pem = _make_certs()
    (tmp_path / "cert.pem").write_bytes(cert_pem + key_pem)
    root = tmp_path / "tls"
    root.mkdir()
    data = fake_qcow2(GIB, 8192)
    (root / "img.qcow2").write_bytes(data)
    server = FileServer(root)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem")
    server.httpd.socket = ctx.wrap_socket(server.httpd.socket, server_side=True)
    url = server.url("img.qcow2").replace("http://", "https://")
    try:
        body = image_body("tls", "tls", url=url, checksum=hashlib.sha512(data).hexdigest(), retry=0)
        create_image(co, body)
        img = wait_for(
            lambda: (
                (o := harvester.get_object("virtualmachineimages", "default", "tls"))
                and cond(o, "Initialized").get("status") == "False"
                and o
            ),
            what="Initialized=False",
        )
        assert "x509: certificate signed by unknown authority" in cond(img, "Initialized")["message"]
        harvester.additional_ca = ca_pem.decode()
        create_image(co, image_body("tls2", "tls2", url=url, checksum=hashlib.sha512(data).hexdigest()))
        wait_for(
            lambda: cond(harvester.get_object("virtualmachineimages", "default", "tls2"), "Imported").get(
                "status") == "True",
            what="Imported=True",
        )
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def test_unreachable_url_fails_initialization(
    harvester: HarvesterDouble, co: client.CustomObjectsApi
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/gone.qcow2"
    create_image(co, image_body("img", "img", url=url, retry=1))
    img = wait_for(
        lambda: (
            (o := harvester.get_object("virtualmachineimages", "default", "img"))
            and cond(o, "RetryLimitExceeded").get("status") == "True"
            and o
        ),
        what="RetryLimitExceeded",
    )
    initialized = cond(img, "Initialized")
    assert initialized["status"] == "False" and "connection refused" in initialized["message"]
    assert img["status"]["failed"] == 2 and "storageClassName" not in img["status"]


def test_non_sha512_checksum_fails(
    harvester: HarvesterDouble, co: client.CustomObjectsApi, files: FileServer
) -> None:
    url = files.put("img.qcow2", b"x" * 1024)
    create_image(co, image_body("img", "img", url=url, checksum=hashlib.sha256(b"x").hexdigest(), retry=0))
    img = wait_for(
        lambda: (
            (o := harvester.get_object("virtualmachineimages", "default", "img"))
            and cond(o, "RetryLimitExceeded").get("status") == "True"
            and o
        ),
        what="RetryLimitExceeded",
    )
    assert "invalid checksum" in cond(img, "Initialized")["message"]
    assert cond(img, "Imported").get("status") != "True"


# --- upload ---------------------------------------------------------------------------------------------


def multipart(data: bytes, part: str = "chunk", piece: int = 64 * 1024) -> tuple[str, Iterator[bytes]]:
    """A streamed multipart body (requests sends a generator with chunked transfer encoding)."""
    boundary = "harvester-double-test-boundary"

    def gen() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{part}"; filename="disk.qcow2"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for i in range(0, len(data), piece):
            yield data[i : i + piece]
        yield f"\r\n--{boundary}--\r\n".encode()

    return f"multipart/form-data; boundary={boundary}", gen()


def upload(
    h: HarvesterDouble,
    name: str,
    data: bytes,
    size: int | None = None,
    part: str = "chunk",
    token: str | None = None,
    stream: bool = True,
) -> requests.Response:
    ctype, pieces = multipart(data, part)
    body: Iterator[bytes] | bytes = pieces if stream else b"".join(pieces)  # chunked vs Content-Length
    ca = Path(h.tmpdir, "test-ca.pem")
    ca.write_bytes(h.ca_pem)
    params = {"action": "upload"} | ({"size": str(size)} if size is not None else {})
    return requests.post(
        f"{h.url}/v1/harvester/harvesterhci.io.virtualmachineimages/default/{name}",
        params=params,
        data=body,
        verify=str(ca),
        timeout=30,
        headers={"Authorization": f"Bearer {token or h.token}", "Content-Type": ctype},
    )


def test_upload_streams_and_imports(harvester: HarvesterDouble, co: client.CustomObjectsApi) -> None:
    data = fake_qcow2(20 * GIB, 4 * 1024 * 1024)[: 4 * 1024 * 1024]
    create_image(co, image_body("up", "up", "upload", checksum=hashlib.sha512(data).hexdigest()))
    wait_for(lambda: cond(harvester.get_object("virtualmachineimages", "default", "up"), "Initialized"))
    resp = upload(harvester, "up", data, size=len(data))
    assert resp.status_code == 200 and resp.text == ""
    img = wait_for(
        lambda: (
            (o := harvester.get_object("virtualmachineimages", "default", "up"))
            and cond(o, "Imported").get("status") == "True"
            and o
        ),
        what="Imported",
    )
    assert img["status"]["progress"] == 100 and img["status"]["virtualSize"] == 20 * GIB
    rec = harvester.uploads[-1]
    assert rec["part"] == "chunk" and rec["bytes"] == len(data) and rec["size_param"] == str(len(data))
    assert rec["chunked"] and rec["max_chunk"] <= 64 * 1024
    assert rec["max_buffered"] <= 256 * 1024  # streamed, never the whole 4 MiB body
    assert rec["sha512"] == hashlib.sha512(data).hexdigest()


def test_upload_refusals(harvester: HarvesterDouble, co: client.CustomObjectsApi) -> None:
    data = b"\x01" * 2048
    create_image(co, image_body("up", "up", "upload"))
    create_image(co, image_body("dl", "dl", url="http://127.0.0.1:1/x"))
    wait_for(lambda: cond(harvester.get_object("virtualmachineimages", "default", "up"), "Initialized"))

    assert upload(harvester, "up", data, token="wrong").status_code == 401
    assert upload(harvester, "missing", data, size=2048).status_code == 404
    assert upload(harvester, "dl", data, size=2048).status_code == 400
    r = upload(harvester, "up", data)
    assert r.status_code == 400 and "size" in r.text
    r = upload(harvester, "up", data[:1000], size=1000)
    assert r.status_code == 400 and "should be a multiple of 512 bytes since Longhorn uses directIO" in r.text
    r = upload(harvester, "up", data, size=2048, part="file")
    assert r.status_code == 400 and "doesn't contain form 'chunk'" in r.text
    img = harvester.get_object("virtualmachineimages", "default", "up")
    assert cond(img, "Imported")["status"] == "False" and cond(img, "Imported")["reason"] == "UploadFailed"
    assert not img["status"].get("failed")  # refused requests do not fail the backing image

    ok = upload(harvester, "up", data, size=2048, stream=False)  # the data source still waits
    assert ok.status_code == 200 and not harvester.uploads[-1]["chunked"]
    wait_for(
        lambda: (
            cond(harvester.get_object("virtualmachineimages", "default", "up"), "Imported")["status"]
            == "True"
        ),
        what="Imported",
    )


def test_upload_size_and_checksum_mismatch(harvester: HarvesterDouble, co: client.CustomObjectsApi) -> None:
    data = b"\x02" * 4096
    create_image(co, image_body("short", "short", "upload", retry=0))
    create_image(
        co, image_body("sum", "sum", "upload", retry=0, checksum=hashlib.sha512(b"other").hexdigest())
    )
    for name in ("short", "sum"):
        wait_for(
            lambda n=name: cond(harvester.get_object("virtualmachineimages", "default", n), "Initialized")
        )
    r = upload(harvester, "short", data, size=8192)
    assert r.status_code == 500 and r.text.startswith("upload failed: ")
    img = harvester.get_object("virtualmachineimages", "default", "short")
    assert cond(img, "Imported")["status"] == "False" and cond(img, "Imported")["reason"] == "UploadFailed"
    assert cond(img, "RetryLimitExceeded")["status"] == "True" and img["status"]["failed"] == 1
    # The SHA-512 is checked after the POST has answered (backing-image-manager's postProcessSyncFile):
    # 200 first, the failure later.
    harvester.checksum_seconds = 1.0
    r2 = upload(harvester, "sum", data, size=4096)
    assert r2.status_code == 200 and r2.text == ""
    assert cond(harvester.get_object("virtualmachineimages", "default", "sum"), "RetryLimitExceeded") == {}
    img = retries_exhausted(harvester, "sum", "the checksum failure")
    assert cond(img, "Imported")["status"] == "False" and img["status"]["failed"] == 1
    assert hashlib.sha512(data).hexdigest() in cond(img, "Imported")["message"]


def test_upload_window_timeout(harvester: HarvesterDouble, co: client.CustomObjectsApi) -> None:
    harvester.upload_window = 0.2
    create_image(co, image_body("late", "late", "upload", retry=0))
    img = retries_exhausted(harvester, "late", "upload timeout")
    imported = cond(img, "Imported")
    assert imported["status"] == "False"
    assert "timeout waiting for the datasource file processing begin" in imported["message"]
    assert upload(harvester, "late", b"\0" * 512, size=512).status_code == 500


# --- keypairs -------------------------------------------------------------------------------------------


def test_keypair_fingerprint_and_rejection(harvester: HarvesterDouble, co: client.CustomObjectsApi) -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    line = (
        key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        + " ops@x"
    )
    blob = base64.b64decode(line.split()[1])
    digest = hashlib.md5(blob).hexdigest()
    expected = ":".join(digest[i : i + 2] for i in range(0, 32, 2))
    body = {
        "apiVersion": f"{GROUP}/{V}",
        "kind": "KeyPair",
        "metadata": {"name": "ops"},
        "spec": {"publicKey": line},
    }
    co.create_namespaced_custom_object(GROUP, V, "default", "keypairs", body)
    kp = wait_for(
        lambda: (
            (o := harvester.get_object("keypairs", "default", "ops"))
            and (o.get("status") or {}).get("fingerPrint")
            and o
        ),
        what="fingerprint",
    )
    assert kp["status"]["fingerPrint"] == expected and cond(kp, "validated")["status"] == "True"
    bad = {**body, "metadata": {"name": "bad"}, "spec": {"publicKey": "ssh-rsa AAAAnotakey"}}
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(GROUP, V, "default", "keypairs", bad)
    assert e.value.status == 422 and "not in valid OpenSSH public key format" in status_of(e.value)["message"]


# --- virtual machines -----------------------------------------------------------------------------------


def imported_image(h: HarvesterDouble, co: client.CustomObjectsApi, files: FileServer) -> dict[str, Any]:
    url = files.put("vm.qcow2", fake_qcow2(10 * GIB, 8192))
    create_image(co, image_body("golden", "golden", url=url))
    img: dict[str, Any] = wait_for(
        lambda: (
            (o := h.get_object("virtualmachineimages", "default", "golden"))
            and cond(o, "Imported").get("status") == "True"
            and o
        ),
        what="image import",
    )
    return img


def vm_body(
    name: str,
    sc: str,
    storage: str = "10Gi",
    secret: str | None = None,
    claim: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    pvc = f"{name}-disk-0"
    volumes: list[dict[str, Any]] = [{"name": "disk-0", "persistentVolumeClaim": {"claimName": claim or pvc}}]
    disks: list[dict[str, Any]] = [{"name": "disk-0", "disk": {"bus": "virtio"}}]
    if secret:
        volumes.append(
            {
                "name": "cloudinitdisk",
                "cloudInitNoCloud": {"secretRef": {"name": secret}, "networkDataSecretRef": {"name": secret}},
            }
        )
        disks.append({"name": "cloudinitdisk", "disk": {"bus": "virtio"}})
    template = [
        {
            "metadata": {"name": pvc, "annotations": {"harvesterhci.io/imageId": "default/golden"}},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "volumeMode": "Block",
                "resources": {"requests": {"storage": storage}},
                "storageClassName": sc,
            },
        }
    ]
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": name,
            "annotations": {"harvesterhci.io/volumeClaimTemplates": json.dumps(template)},
        },
        "spec": {
            "runStrategy": "RerunOnFailure",
            "template": {
                "spec": {
                    "domain": {
                        "cpu": {"cores": 2},
                        "devices": {
                            "disks": disks,
                            "interfaces": [{"name": "nic-0", "model": "virtio", "bridge": {}}],
                        },
                    },
                    "networks": [{"name": "nic-0", "multus": {"networkName": "default/vlan100"}}],
                    "volumes": volumes,
                }
            },
            **spec,
        },
    }


def test_vm_lifecycle(harvester: HarvesterDouble, co: client.CustomObjectsApi, files: FileServer) -> None:
    sc = imported_image(harvester, co, files)["status"]["storageClassName"]
    core = client.CoreV1Api()
    core.create_namespaced_secret(
        "default",
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="cp-0-cloudinit"), string_data={"userdata": "#cloud-config\n"}
        ),
    )
    harvester.no_ip.add("quiet")
    vm = co.create_namespaced_custom_object(
        "kubevirt.io", "v1", "default", "virtualmachines", vm_body("cp-0", sc, secret="cp-0-cloudinit")
    )
    co.create_namespaced_custom_object(
        "kubevirt.io", "v1", "default", "virtualmachines", vm_body("quiet", sc)
    )

    def running(name: str) -> dict[str, Any] | None:
        vmi = harvester.get_object("virtualmachineinstances", "default", name)
        return vmi if ((vmi or {}).get("status") or {}).get("phase") == "Running" else None

    vmi = wait_for(lambda: running("cp-0"), what="VMI Running")
    iface = vmi["status"]["interfaces"][0]
    assert iface["name"] == "nic-0" and iface["ipAddress"].startswith("10.52.") and iface["ipAddresses"]
    assert vmi["metadata"]["ownerReferences"][0]["uid"] == vm["metadata"]["uid"]
    quiet = wait_for(lambda: running("quiet"), what="quiet VMI Running")
    assert "ipAddress" not in quiet["status"]["interfaces"][0]
    pvc = harvester.get_object("persistentvolumeclaims", "default", "cp-0-disk-0")
    assert pvc["status"]["phase"] == "Bound" and pvc["metadata"]["annotations"]["harvesterhci.io/imageId"]
    wait_for(
        lambda: (
            harvester.get_object("virtualmachines", "default", "cp-0")["status"]["printableStatus"]
            == "Running"
        ),
        what="VM Running",
    )

    with pytest.raises(ApiException) as e:  # the image's StorageClass is in use
        co.delete_namespaced_custom_object(GROUP, V, "default", "virtualmachineimages", "golden")
    assert (
        e.value.status == 422 and "being used by volume default/cp-0-disk-0" in status_of(e.value)["message"]
    )

    # Secret owned by the VM (as the UI does) is garbage collected; PVCs only when listed for removal.
    owner = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "name": "cp-0",
        "uid": vm["metadata"]["uid"],
    }
    core.patch_namespaced_secret("cp-0-cloudinit", "default", {"metadata": {"ownerReferences": [owner]}})
    co.patch_namespaced_custom_object(
        "kubevirt.io",
        "v1",
        "default",
        "virtualmachines",
        "cp-0",
        {"metadata": {"annotations": {"harvesterhci.io/removedPersistentVolumeClaims": "cp-0-disk-0"}}},
    )
    co.delete_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachines", "cp-0")
    co.delete_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachines", "quiet")
    wait_for(lambda: not harvester.objects("virtualmachineinstances"), what="VMIs deleted")
    wait_for(
        lambda: harvester.get_object("persistentvolumeclaims", "default", "cp-0-disk-0") is None,
        what="PVC gone",
    )
    wait_for(lambda: harvester.get_object("secrets", "default", "cp-0-cloudinit") is None, what="secret GC")
    assert harvester.get_object("persistentvolumeclaims", "default", "quiet-disk-0") is not None


def test_vm_admission(harvester: HarvesterDouble, co: client.CustomObjectsApi, files: FileServer) -> None:
    sc = imported_image(harvester, co, files)["status"]["storageClassName"]
    create_image(co, image_body("pending", "pending", "upload"))  # initialized, never imported
    pending_sc = wait_for(
        lambda: (
            (harvester.get_object("virtualmachineimages", "default", "pending") or {}).get("status") or {}
        ).get("storageClassName"),
        what="pending SC",
    )
    broken_disk = vm_body("c", sc)
    broken_disk["spec"]["template"]["spec"]["domain"]["devices"]["disks"].append(
        {"name": "ghost", "disk": {}}
    )
    efi_default = vm_body("g", sc)  # KubeVirt: an EFI bootloader's secureBoot defaults to true
    efi_default["spec"]["template"]["spec"]["domain"]["firmware"] = {"bootloader": {"efi": {}}}
    efi_smm_off = vm_body("h", sc)
    efi_smm_off["spec"]["template"]["spec"]["domain"].update(
        firmware={"bootloader": {"efi": {"secureBoot": True}}}, features={"smm": {"enabled": False}})
    cases = [
        (efi_default, "EFI SecureBoot enabled. SecureBoot requires SMM, which is currently disabled"),
        (efi_smm_off, "SecureBoot requires SMM"),
        (vm_body("a", sc, storage="1Gi"), "smaller than the virtual size"),
        (vm_body("b", "no-such-sc"), "storageclass no-such-sc not found"),
        (broken_disk, "'ghost' not found"),
        (vm_body("d", sc, runStrategy="Sometimes"), "Invalid RunStrategy"),
        (vm_body("e", sc, claim="unknown-pvc"), "unknown-pvc not found"),
        (vm_body("f", pending_sc), "is not ready"),
    ]
    for body, message in cases:
        with pytest.raises(ApiException) as e:
            co.create_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachines", body)
        assert e.value.status == 422, message
        assert message in status_of(e.value)["message"]


def test_vm_with_missing_cloudinit_secret_never_runs(
    harvester: HarvesterDouble, co: client.CustomObjectsApi, files: FileServer
) -> None:
    sc = imported_image(harvester, co, files)["status"]["storageClassName"]
    co.create_namespaced_custom_object(
        "kubevirt.io", "v1", "default", "virtualmachines", vm_body("lost", sc, secret="does-not-exist")
    )
    wait_for(
        lambda: (
            (harvester.get_object("virtualmachines", "default", "lost").get("status") or {}).get(
                "printableStatus"
            )
            == "Error"
        ),
        what="printableStatus Error",
    )
    time.sleep(0.2)
    assert harvester.get_object("virtualmachineinstances", "default", "lost")["status"]["phase"] != "Running"
