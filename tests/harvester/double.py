"""A Harvester API test double: a small HTTPS server speaking Kubernetes REST conventions.

Product code talks to it exactly as to Harvester, with the official ``kubernetes`` client (kubeconfig with
a bearer token and CA data) and one raw HTTPS upload call. Behaviour follows the contract in the project's
Harvester API reference: CRD schema validation and pruning, the Harvester/KubeVirt webhooks, and simulated
controllers for images (download/upload import with retries), keypairs, PVCs, VMs and VMIs.

Usage::

    with HarvesterDouble(version="v1.8.0", tick=0.02) as h:
        kubeconfig = h.kubeconfig(tmp_path / "kubeconfig", namespace="images")
        h.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "images"}})
        h.upload_window = 1.0
        ...  # run product code against ``kubeconfig``; inspect h.objects(...), h.requests, h.uploads

Test-only knobs are plain attributes (see ``__init__``); they may be changed while the double runs.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import guest
from .admission import DEFAULT_SC_ANNOTATION, DEFAULT_SC_PARAMS, LONGHORN_DRIVER, Admission
from .api import Api, Response
from .controllers import Controllers
from .resources import BY_PLURAL, JSON, parse_version, resource_of
from .store import Store

SEED_NAMESPACES = ("default", "kube-system", "harvester-public", "harvester-system", "longhorn-system")
DEFAULT_STORAGE_CLASS = "harvester-longhorn"


@dataclass
class _Fault:
    remaining: int
    status: int
    method: str | None
    path_contains: str | None


class HarvesterDouble:
    """Context manager; serves on https://127.0.0.1:<random port> from a background thread."""

    def __init__(self, version: str = "v1.8.0", token: str | None = None, tick: float = 0.05) -> None:
        parse_version(version)  # fail early on a typo
        self._version = version
        self.token = token or secrets.token_urlsafe(24)
        self.tick = tick
        self.store = Store()
        self.lock = self.store.lock  # one lock for all state: simple and deadlock-free
        # --- knobs ---
        self.no_ip: set[str] = set()  # VM names whose VMI never reports an IP (no guest agent)
        self.upload_window = 60.0  # Longhorn data source waits this long for an upload to begin
        self.retry_backoff = 0.2  # seconds between image retries (real Harvester: 10 s)
        self.download_rate: int | None = None  # bytes/s throttle of the simulated download
        self.additional_ca: str | None = None  # PEM: Harvester's `additional-ca` setting
        self.datasource_wait = 5.0  # upload handler waits this long for the data source (real: 60 s)
        # Reached through Rancher (`https://<rancher>/k8s/clusters/<id>`, as Rancher-generated
        # kubeconfigs point): the prefix is required and stripped, and Rancher's ingress refuses
        # request bodies above `rancher_body_limit` with nginx's 413 (RKE2's ingress-nginx default
        # proxy-body-size is 1m; Harvester docs, "HTTP 413 Error in Rancher Multi-Cluster Management").
        self.rancher_cluster: str | None = None
        self.rancher_body_limit: int | None = 1024 * 1024
        # an upload's SHA-512 is checked this long after the POST answered (real: reading the file)
        self.checksum_seconds = 0.3
        self.kube_version = "v1.31.4+rke2r1"  # GET /version gitVersion
        # --- records for assertions ---
        self.requests: list[tuple[str, str, int]] = []
        self.warnings: list[str] = []
        self.uploads: list[dict[str, Any]] = []
        self.errors: list[str] = []  # internal errors of the double; tests should assert it stays empty
        self._faults: list[_Fault] = []
        self.admission = Admission(self.store, lambda: self._version)
        self.controllers = Controllers(self)
        self.api = Api(self)
        self.url = ""
        self.ca_pem = b""
        self.tmpdir = ""
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> HarvesterDouble:
        self.tmpdir = tempfile.mkdtemp(prefix="harvester-double-")
        self.ca_pem, cert_pem, key_pem = _make_certs()
        cert_file, key_file = Path(self.tmpdir, "tls.crt"), Path(self.tmpdir, "tls.key")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        self._server = _Server(self, ctx)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._seed()
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                daemon=True,
                name="harvester-double-http",
            ),
            threading.Thread(target=self.controllers.run, daemon=True, name="harvester-double-controllers"),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self.controllers.stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
        for t in self._threads:
            t.join(5)
        self.controllers.join(5)
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> HarvesterDouble:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _seed(self) -> None:
        for ns in SEED_NAMESPACES:
            self.add_object(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                }
            )
        self.add_object(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": DEFAULT_STORAGE_CLASS, "annotations": {DEFAULT_SC_ANNOTATION: "true"}},
                "provisioner": LONGHORN_DRIVER,
                "parameters": dict(DEFAULT_SC_PARAMS),
                "reclaimPolicy": "Delete",
                "allowVolumeExpansion": True,
                "volumeBindingMode": "Immediate",
            }
        )
        # How clients read the Harvester version: the cluster-scoped Setting "server-version".
        self.add_object(
            {
                "apiVersion": "harvesterhci.io/v1beta1",
                "kind": "Setting",
                "metadata": {"name": "server-version"},
                "default": "",
                "value": self._version,
            }
        )

    # --- version ----------------------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return self._version

    @version.setter
    def version(self, value: str) -> None:
        parse_version(value)
        self._version = value
        self.store.mutate(
            BY_PLURAL["settings"], None, "server-version", None, lambda o: o.__setitem__("value", value)
        )

    # --- client configuration ---------------------------------------------------------------------------

    def kubeconfig(self, path: Path, *, namespace: str = "default", context: str = "harvester") -> Path:
        """Write a kubeconfig (mode 0600) with CA data, the bearer token and a context with ``namespace``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "harvester-double",
                    "cluster": {
                        "server": self.url
                        + (f"/k8s/clusters/{self.rancher_cluster}" if self.rancher_cluster else ""),
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "harvester-double", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": context,
                    "context": {
                        "cluster": "harvester-double",
                        "user": "harvester-double",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": context,
        }
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(config, f)
        path.chmod(0o600)  # also when the file existed with wider permissions
        return path

    # --- state ------------------------------------------------------------------------------------------

    def objects(self, kind_plural: str, namespace: str | None = None) -> list[JSON]:
        return self.store.list(BY_PLURAL[kind_plural], namespace)

    def get_object(self, plural: str, namespace: str | None, name: str) -> JSON | None:
        return self.store.get(BY_PLURAL[plural], namespace, name)

    def rke2_problems(self, namespace: str = "default") -> list[str]:
        """Why RKE2 on this namespace's running VMs would not form one cluster (tests/harvester/guest.py)."""
        return guest.cluster_problems(self, namespace)

    def rke2_node_ips(self, namespace: str = "default") -> dict[str, str | None]:
        return guest.rke2_node_ips(self, namespace)

    def add_vm_network(self, name: str = "vm-net", namespace: str = "default", vlan: int = 100) -> JSON:
        """A Harvester VM network: a bridge NetworkAttachmentDefinition on the mgmt cluster network,
        labelled as Harvester's network controller labels them."""
        return self.add_object({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"network.harvesterhci.io/clusternetwork": "mgmt",
                                    "network.harvesterhci.io/type": "L2VlanNetwork",
                                    "network.harvesterhci.io/vlan-id": str(vlan)}},
            "spec": {"config": json.dumps({"cniVersion": "0.3.1", "name": name, "type": "bridge",
                                           "bridge": "mgmt-br", "promiscMode": True, "vlan": vlan,
                                           "ipam": {}})},
        })

    def add_object(self, obj: JSON) -> JSON:
        """Seed an object as if a cluster admin had created it earlier (no admission, no webhooks)."""
        res = resource_of(obj)
        obj = dict(obj)
        if res.namespaced:
            obj["metadata"] = {"namespace": "default", **obj.get("metadata", {})}
        return self.store.insert(res, obj)

    # --- faults -----------------------------------------------------------------------------------------

    def fail_next(
        self, count: int, status: int = 503, method: str | None = None, path_contains: str | None = None
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` (a Status body) instead of serving."""
        with self.lock:
            self._faults.append(_Fault(count, status, method.upper() if method else None, path_contains))

    def _take_fault(self, method: str, path: str) -> int | None:
        with self.lock:
            for f in self._faults:
                if (
                    f.remaining > 0
                    and f.method in (None, method)
                    and (f.path_contains is None or f.path_contains in path)
                ):
                    f.remaining -= 1
                    return f.status
            return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3 expects
    server: _Server
    timeout = 120  # idle keep-alive connections are dropped after this

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded in double.requests instead

    def _serve(self) -> None:
        d = self.server.double
        path = self.path
        resp: Response | None = None
        if d.rancher_cluster is not None:
            prefix = f"/k8s/clusters/{d.rancher_cluster}"
            length = int(self.headers.get("Content-Length") or 0)
            if not path.startswith(prefix + "/"):
                resp = Response(404, b'{"type":"error","status":"404","message":"not found"}')
            elif d.rancher_body_limit is not None and length > d.rancher_body_limit:
                # nginx answers before the body is read; its lingering close reads and discards
                # the rest so that the client gets the answer
                while length > 0 and (chunk := self.rfile.read(min(length, 1 << 20))):
                    length -= len(chunk)
                resp = Response(413, NGINX_413, content_type="text/html")
            else:
                path = path[len(prefix):]
        if resp is None:
            resp = d.api.serve(self.command, path, self.headers, self.rfile)
        with d.lock:
            d.requests.append((self.command, path, resp.status))
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(resp.body)))
            for k, v in resp.headers:
                self.send_header(k, v)
            if resp.close:  # the request body was not (fully) read: the connection cannot be reused
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def do_HEAD(self) -> None:
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()


NGINX_413 = (b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
             b"<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n"
             b"</body>\r\n</html>\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, double: HarvesterDouble, ctx: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.double = double
        self.ctx = ctx
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the per-connection thread, so a slow or broken client cannot block accept().
        request.settimeout(30)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            request.close()
            return
        with self._conns_lock:
            self._conns.add(tls)
        try:
            _Handler(tls, client_address, self)
        except (ssl.SSLError, OSError):
            pass
        finally:
            with self._conns_lock:
                self._conns.discard(tls)
            with contextlib.suppress(OSError):
                tls.close()

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


def _make_certs() -> tuple[bytes, bytes, bytes]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it: (ca_pem, cert_pem, key_pem)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "harvester-double-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "harvester-double")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem
