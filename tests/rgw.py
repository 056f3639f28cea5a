"""A real, signature-checking S3 server for the tests: Ceph's RADOS Gateway from Debian's packages
(`radosgw`, `ceph-mon`, `ceph-osd`, 16.2.x), as a throwaway single-host cluster on 127.0.0.1.

One monitor, one OSD on `memstore` (objects in RAM, nothing on disk but the daemons' small state),
one radosgw with the beast frontend; no manager; cephx off between the daemons (`auth none`: the
cluster is reachable only from this host and lives for one test module). S3 clients are still
authenticated: radosgw checks SigV4 signatures, presigned URLs (method, expiry), Content-MD5 and
`x-amz-content-sha256` against its own user database (`radosgw-admin user create`).

Where it differs from AWS S3 / MinIO (Ceph 16.2.15, measured; see ../shared/reference/machine.md):
CompleteMultipartUpload answers with an empty ETag (HEAD afterwards has the multipart ETag);
`If-Match` with a quoted ETag -> 412 (unquoted -> 200); `If-Match` on a missing key -> 412 (AWS:
404); deleted objects stay in the GC queue (2 h) although they are gone from the API at once.
Not modelled here: anything of a multi-host cluster (replication, recovery, several gateways),
bucket policies beyond what the single user needs, TLS (plain HTTP on loopback).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tests.publishing import free_port

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool")
ACCESS_KEY = "RGWTESTACCESSKEY0001"


def missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_ports(n: int) -> list[int]:
    """`n` distinct free ports (the OS hands out a new one per bound socket)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class RgwServer:
    """Start with `start()`, stop with `stop()` (daemons killed by PID, the data dir removed)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="imagefactory-rgw-"))
        self.port = free_port()
        self.secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.access_key = ACCESS_KEY
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conf = self.dir / "ceph.conf"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_conf(self, mon_port: int, msgr_min: int) -> None:
        d = self.dir
        self.fsid = str(uuid.uuid4())
        self.conf.write_text(f"""[global]
fsid = {self.fsid}
mon_host = v2:127.0.0.1:{mon_port}
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_port_min = {msgr_min}
ms_bind_port_max = {msgr_min + 40}
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
keyring = /dev/null
run_dir = {d}/run
pid_file = {d}/run/$name.pid
admin_socket = {d}/run/$name.asok
log_file = {d}/log/$name.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_max_pg_per_osd = 1000
mon_warn_on_pool_no_redundancy = false

[mon]
mon_data = {d}/mon-$id
paxos_propose_interval = 0.1

[osd]
osd_data = {d}/osd-$id
osd_objectstore = memstore
memstore_device_bytes = 4294967296
osd_check_max_object_name_len_on_startup = false
osd_class_update_on_start = false

[client.rgw.a]
rgw_data = {d}/rgw
rgw_frontends = beast endpoint=127.0.0.1:{self.port}
ms_mon_client_mode = crc secure
""")

    def _run(self, *argv: str, timeout: float = 60) -> str:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return r.stdout

    def _daemon(self, *argv: str) -> None:
        # Own session: the daemons must not get the test run's Ctrl-C before we stop them in order.
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True))

    def _wait(self, what: str, ready: object, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]!r} exited with {p.returncode} while waiting for {what}; "
                                       f"logs in {self.dir / 'log'}")
            try:
                if ready():  # type: ignore[operator]
                    return
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"RGW test cluster: {what} not ready after {timeout:.0f} s; "
                           f"logs in {self.dir / 'log'}")

    def start(self) -> RgwServer:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        d = self.dir
        for sub in ("run", "log", "mon-a", "osd-0", "rgw"):
            (d / sub).mkdir()
        while True:  # the daemons' messenger range must hold neither the mon's port nor radosgw's
            mon_port, msgr_min = _free_ports(2)
            if not {mon_port, self.port} & set(range(msgr_min, msgr_min + 41)):
                break
        # The messenger range must not collide with the mon's port or radosgw's.
        self._write_conf(mon_port, msgr_min)
        c = ("-c", str(self.conf))
        keyring = d / "mon.keyring"
        self._run("ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", "mon.",
                  "--cap", "mon", "allow *")
        monmap = d / "monmap"
        self._run("monmaptool", "--create", "--clobber", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]",
                  "--fsid", self.fsid, str(monmap))
        self._run("ceph-mon", *c, "-i", "a", "--mkfs", "--monmap", str(monmap), "--keyring", str(keyring))
        self._daemon("ceph-mon", *c, "-i", "a", "-f")
        self._wait("the monitor", lambda: bool(self._run("ceph", *c, "-s", "--connect-timeout", "5",
                                                         timeout=15)))
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("ceph", *c, "osd", "new", osd_uuid).strip()
        if osd_id != "0":
            (d / "osd-0").rename(d / f"osd-{osd_id}")
        self._run("ceph-osd", *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid, timeout=120)
        self._daemon("ceph-osd", *c, "-i", osd_id, "-f")
        self._wait("the OSD", lambda: f"osd.{osd_id} up" in self._run("ceph", *c, "osd", "dump", timeout=15))
        self._daemon("radosgw", *c, "-n", "client.rgw.a", "-f")
        self._wait("radosgw", self._http_up, timeout=120)
        self._run("radosgw-admin", *c, "user", "create", "--uid=imagefactory", "--display-name=imagefactory",
                  f"--access-key={self.access_key}", f"--secret-key={self.secret_key}")

    def _http_up(self) -> bool:
        with contextlib.suppress(urllib.error.HTTPError):  # any HTTP answer: the frontend serves
            urllib.request.urlopen(self.endpoint, timeout=2).close()
        return True

    def cpu_seconds(self) -> float:
        """User + system CPU time of the three daemons so far."""
        total = 0
        for p in self.procs:
            try:
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        total = 0
        for p in self.procs:
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
            except OSError:
                continue
            total += next((int(line.split()[1]) for line in status.splitlines()
                           if line.startswith("VmRSS:")), 0)
        return total / 1024

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_rgw() -> RgwServer:
    """An RGW server, or an error naming what is missing: ci/bootstrap.sh installs Ceph, and a test
    that cannot reach a real S3 server fails rather than skips."""
    if gone := missing():
        raise RuntimeError(f"Ceph RGW not installed ({', '.join(gone)} missing): run ci/bootstrap.sh "
                           "(ci/debian-packages.txt has radosgw, ceph-mon, ceph-osd)")
    return RgwServer().start()
