"""Helpers for the publishing tests and benchmark: fake build directories shaped like real ones
(a random-bytes "image.qcow2", a manifest.json with the keys `imagefactory build` writes, STIG
reports and checklists, junit.xml, build.log) and a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from imagefactory.catalogue.trust import Anchor
from imagefactory.fsutil import file_identity

PACKAGES = [{"name": "base-files", "version": "12.4+deb12u15"},
            {"name": "openssh-server", "version": "1:9.2p1-2"},
            {"name": "auditd", "version": "1:3.0.9-1"},
            {"name": "linux-image-6.1.0-50-cloud-amd64", "version": "6.1.0-50"}]


_TRUST_STATE: Path | None = None


def anchor(public: Ed25519PublicKey) -> Anchor:
    """A consumer's trust for tests: `public` as manifest and root key, the trusted TUF metadata
    kept for the whole test process (per store location, as a workdir keeps it)."""
    global _TRUST_STATE
    if _TRUST_STATE is None:
        import atexit
        import shutil
        import tempfile

        _TRUST_STATE = Path(tempfile.mkdtemp(prefix="imagefactory-trust-"))
        atexit.register(shutil.rmtree, _TRUST_STATE, True)  # nothing left behind by the test run
    return Anchor.single(public, _TRUST_STATE)


def trusted_sha256(store: Any, path: str) -> str:
    """The sha256 the store's current TUF targets give `path` (what a consumer reads)."""
    from imagefactory.catalogue import trust

    cur = trust._current(store)
    role = cur.role_of(path) if cur else None
    assert role is not None
    return str(role.targets[path].hashes["sha256"])


def write_random(path: Path, size: int, seed: int = 0) -> tuple[str, str]:
    """A file of `size` pseudo-random bytes (incompressible, cheap to make); (sha256, sha512)."""
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    block = hashlib.sha512(f"{seed}".encode()).digest() * 16384  # 1 MiB pattern per seed
    counter = 0
    with open(path, "wb") as f:
        left = size
        while left:
            # Vary every MiB so no two parts are equal (parts dedupe nothing by accident).
            chunk = hashlib.sha256(f"{seed}-{counter}".encode()).digest() + block[32:]
            chunk = chunk[:min(left, len(chunk))]
            f.write(chunk)
            h256.update(chunk)
            h512.update(chunk)
            left -= len(chunk)
            counter += 1
    return h256.hexdigest(), h512.hexdigest()


def fake_build(root: Path, name: str = "debian-12-base", version: str = "20261129.213544-a65a",
               size: int = 3 * 1024**2, seed: int = 0, rke2: bool = False, tests_ok: bool | None = True,
               gate: bool | None = True) -> Path:
    """`<root>/builds/<name>/<version>/` with everything a tested, STIG-reported build has."""
    d = root / "builds" / name / version
    d.mkdir(parents=True)
    sha256, sha512 = write_random(d / "image.qcow2", size, seed)
    m: dict[str, Any] = {
        "schema": 1, "name": name, "version": version, "build_id": version,
        "created": "2026-11-29T21:35:44+00:00", "imagefactory_version": "0.1.0", "builder": "rootfs",
        "os": {"family": "debian", "release": "12", "arch": "amd64"}, "inputs": None,
        "recipe": {"name": name, "digest": "42" * 32, "files": [f"/recipes/{name}.yaml"], "merged": {}},
        "source": {"type": "mmdebstrap", "mirror": "http://deb.debian.org/debian", "suite": "bookworm"},
        "packages": PACKAGES, "kernel": "6.1.0-50-cloud-amd64",
        "image": {"file": "image.qcow2", "format": "qcow2", "compression": "zstd", "size": size,
                  "virtual_size": 4 * 1024**3, "sha256": sha256, "sha512": sha512},
        "tests": {"ok": tests_ok, "passed": 47, "failed": 0, "errors": 0, "skipped": 0, "boot_seconds": 60.0,
                  "test_seconds": 90.0, "suites": ["hygiene", "recipe", "stig"], "accelerator": "tcg",
                  "failures": [], "junit": "junit.xml"},
        "stig": {"report": {"gate": None if gate is None else {"passed": gate, "open_by_cat": {"1": 0, "2": 3,
                                                                                              "3": 1}},
                            "benchmarks": [{"benchmark": "ubuntu2204", "target": "debian", "release": "V2R8",
                                            "rules": 200, "open": {"1": 0, "2": 3, "3": 1}, "waived": 2}],
                            "report": "stig-report.json"}},
        "steps": [{"name": "bootstrap", "seconds": 50.0}], "build_seconds": 60.2,
    }
    m["image"]["identity"] = file_identity(d / "image.qcow2")  # as the build's checksum step records it
    if rke2:
        m["rke2"] = {"version": "v1.31.4+rke2r1", "prefix": "/usr/local",
                     "images": ["rke2-images-core.linux-amd64.tar.zst"],
                     "preloaded": {"rke2-images-core.linux-amd64.tar.zst": [
                         "docker.io/rancher/mirrored-pause:3.6",
                         "docker.io/rancher/rke2-runtime:v1.31.4-rke2r1"]}}
        m["zarf"] = {"version": "v0.84.0", "dir": "/usr/local/bin", "init_package": [], "packages": []}
        m["inputs"] = {
            "key": "ab" * 32, "rke2": {"version": "v1.31.4+rke2r1"}, "zarf": {"version": "v0.84.0"},
            "artifacts": [{"name": "rke2.linux-amd64.tar.gz", "sha256": "cd" * 32, "role": "rke2-bundle",
                           "url": "https://github.com/rancher/rke2/releases/download/x"},
                          {"name": "rke2-images-core.linux-amd64.tar.zst", "sha256": "dd" * 32,
                           "role": "rke2-images", "url": "https://github.com/rancher/rke2/releases/download/y"},
                          {"name": "zarf_v0.84.0_Linux_amd64", "sha256": "ef" * 32, "role": "zarf-binary",
                           "url": "https://github.com/zarf-dev/zarf/x"}]}
    (d / "manifest.json").write_text(json.dumps(m, indent=2))
    (d / "junit.xml").write_text('<testsuites><testsuite name="hygiene" tests="47"/></testsuites>\n')
    (d / "build.log").write_text(f"build {version} of {name}\n")
    (d / "stig-report.json").write_text(json.dumps({"image": {"name": name, "build_id": version}}))
    (d / "stig-report.html").write_text(f"<html><body>STIG report {name} {version}</body></html>\n")
    (d / "stig-results.json").write_text("{}\n")
    (d / "checklists").mkdir()
    (d / "checklists/ubuntu2204-debian.cklb").write_text('{"title": "checklist"}\n')
    (d / "checklists/ubuntu2204-debian.ckl").write_text("<CHECKLIST/>\n")
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """`python -m moto.server` on 127.0.0.1:<port> in a subprocess (killable, restartable)."""

    # any key works without IAM mode (moto checks no signature); named like RgwServer's
    access_key = "AKIDTEST"
    secret_key = "not-checked-by-this-server"

    def __init__(self, iam: bool = False, port: int | None = None) -> None:
        self.iam = iam
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        env = dict(os.environ)
        # IAM mode: the first requests (creating the user, its policy and key) need no auth.
        if self.iam:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far."""
        if self.proc is None:
            return 0.0
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        if self.proc is None:
            return 0.0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def iam_credentials(endpoint: str) -> tuple[str, str]:
    """A user with full S3 rights on a moto server in IAM mode (uses the 3 unauthenticated calls)."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap")
    iam.create_user(UserName="publisher")
    iam.put_user_policy(UserName="publisher", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="publisher")["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of a server, to break connections on purpose.

    `cut_after(n)`: once `n` more client->server bytes have passed, every open connection is
    reset (a dropped link mid-part; later connections work). `refuse = True`: new connections
    are accepted and reset at once (the server is "down"). `on_bytes(n, fn)`: call `fn` once
    after `n` bytes (e.g. kill the real server mid-upload). `bytes_up` counts what the client
    sent, so a test can tell a resumed upload from a full one. `rate` (bytes/s, None = no cap)
    throttles client->server traffic: a slow link.
    """

    def __init__(self, upstream_port: int, tls: tuple[Path, Path] | None = None) -> None:
        import ssl
        import threading

        self.upstream = upstream_port
        # With (cert, key): terminate TLS here and speak plain HTTP to the server behind.
        self.tls: ssl.SSLContext | None = None
        if tls is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(str(tls[0]), str(tls[1]))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.bytes_up = 0
        self.rate: float | None = None
        self._rate_start: float | None = None
        self.refuse = False
        self.cuts = 0
        self._cut_at: int | None = None
        self._hooks: list[tuple[int, Any]] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def cut_after(self, n: int) -> None:
        with self._lock:
            self._cut_at = self.bytes_up + n

    def on_bytes(self, n: int, fn: Any) -> None:
        with self._lock:
            self._hooks.append((self.bytes_up + n, fn))

    def down(self) -> None:
        """The link goes down: open connections are reset and new ones refused (until `refuse`
        is set False again)."""
        self.refuse = True
        self._reset_all()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._reset_all()

    def _reset_all(self) -> None:
        import struct

        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:  # SO_LINGER 0: a reset, like a dead server or a broken link, not a clean FIN
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            except OSError:
                pass

    def _accept(self) -> None:
        import threading

        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.refuse:
                self._conns.add(client)
                self._reset_all()
                continue
            if self.tls is not None:
                try:
                    client.settimeout(10)
                    client = self.tls.wrap_socket(client, server_side=True)
                    client.settimeout(None)
                except OSError:  # the client refused our certificate: that is the test
                    client.close()
                    continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(4096 if self.rate else 65536):
                dst.sendall(data)
                if not up:
                    continue
                fire, cut, wait = [], False, 0.0
                with self._lock:
                    if self.rate:  # all connections share the link's rate
                        self._rate_start = self._rate_start or time.monotonic() - self.bytes_up / self.rate
                        wait = self._rate_start + (self.bytes_up + len(data)) / self.rate - time.monotonic()
                    self.bytes_up += len(data)
                    if self._cut_at is not None and self.bytes_up >= self._cut_at:
                        self._cut_at, cut = None, True
                        self.cuts += 1
                    due = [h for h in self._hooks if self.bytes_up >= h[0]]
                    self._hooks = [h for h in self._hooks if h not in due]
                    fire = [fn for _, fn in due]
                for fn in fire:
                    fn()
                if self.rate and wait > 0:
                    time.sleep(wait)
                if cut:
                    self._reset_all()
                    return
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA): (cert.pem, key.pem)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagefactory test S3")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
