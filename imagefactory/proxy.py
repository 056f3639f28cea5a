"""An allow-list HTTP proxy on 127.0.0.1 for build VMs that otherwise have no egress.

The Packer build VM runs with `restrict=on` user networking; qemu's `guestfwd` connects
10.0.2.100:3142 in the guest to this proxy on the host. It forwards only requests whose URL starts
with one of the allowed prefixes (the recipe's package mirrors): plain HTTP GET/HEAD (apt) and
CONNECT to allowed HTTPS hosts (zypper against SCC/RMT; TLS stays end to end). Everything else
gets 403 and is logged, so a build cannot quietly reach anything but its package sources.

With a cache (the workdir's content-addressed one, shared with `debcache`), apt's packages are
kept across builds, and only under the exact SHA256 of the repository index that named them: the
proxy reads every Packages index that passes through it (plain, .gz, .xz, by-hash) into a map
`pool path -> SHA256`; a `pool/....deb` request whose path that map knows is answered from the
cache when the cache holds that hash (re-hashed before it is served), and otherwise fetched,
passed on, and kept if it hashes to the index's SHA256. apt verifies every package against its
own signed index anyway; the map only decides what may be kept and served. A package the proxy
has seen no index for is passed through and not kept. zypper's HTTPS (CONNECT, end to end) is not
cached.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import re
import select
import socket
import threading
import urllib.error
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from .artifacts import Cache, sha256_file

log = logging.getLogger(__name__)
CHUNK = 1 << 16
INDEX = re.compile(r"/binary-[^/]+/(Packages(\.gz|\.xz)?|by-hash/SHA256/[0-9a-f]{64})$")
POOL = re.compile(r"/(pool/.+\.u?deb)$")
MAX_INDEX = 256 << 20  # an uncompressed Packages of a big archive component is ~100 MB


def index_hashes(data: bytes) -> dict[str, str]:
    """`Filename -> SHA256` of a Packages index, plain or compressed ({} if it is not one)."""
    try:
        if data[:6] == b"\xfd7zXZ\x00":
            data = lzma.LZMADecompressor().decompress(data, max_length=MAX_INDEX)
        elif data[:2] == b"\x1f\x8b":
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, MAX_INDEX)
    except (lzma.LZMAError, zlib.error, EOFError, gzip.BadGzipFile):
        return {}
    out = {}
    for stanza in data.decode("utf-8", "replace").split("\n\n"):
        name = re.search(r"^Filename: (\S+)$", stanza, re.M)
        sha = re.search(r"^SHA256: ([0-9a-f]{64})$", stanza, re.M)
        if name and sha:
            out[name.group(1)] = sha.group(1)
    return out


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("proxy: " + format, *args)

    def _allowed(self, url: str) -> bool:
        return any(url.startswith(p) for p in self.server.allow)

    def _refuse(self, what: str) -> None:
        log.warning("proxy: refused %s (allowed: %s)", what, ", ".join(self.server.allow))
        self.server.refused.append(what)
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._forward(head=False)

    def do_HEAD(self) -> None:
        self._forward(head=True)

    def _forward(self, head: bool) -> None:
        url = self.path
        if not url.startswith("http://") or not self._allowed(url):
            self._refuse(url)
            return
        cache, path = self.server.cache, urlsplit(url).path
        pool = POOL.search(path) if cache is not None and not head and not self.headers.get("Range") else None
        # apt quotes '+' and friends in pool URLs (libstdc%2b%2b6); the index names them plainly
        sha = self.server.hashes.get(unquote(pool.group(1))) if pool else None
        if sha and cache is not None and self._from_cache(cache, sha):
            return
        keep = INDEX.search(path) is not None and cache is not None and not head
        req = urllib.request.Request(url, method="HEAD" if head else "GET")
        for h in ("Range", "If-Modified-Since", "If-Range", "Accept"):
            if self.headers.get(h):
                req.add_header(h, self.headers[h])
        try:
            resp = urllib.request.urlopen(req, timeout=120)
        except urllib.error.HTTPError as e:
            resp = e
        except (urllib.error.URLError, OSError) as e:
            log.warning("proxy: %s: %s", url, e)
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with resp:
            self.send_response(resp.status)
            for k, v in resp.headers.items():
                if k.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                    self.send_header(k, v)
            length = resp.headers.get("Content-Length")
            if length is None and not head:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if head:
                return
            if keep and resp.status == 200:
                # An index is read whole and its hashes recorded before apt has it: apt may ask
                # for the packages it names as soon as it holds it.
                data = resp.read()
                found = index_hashes(data)
                with self.server.lock:
                    self.server.hashes.update(found)
                self.wfile.write(data)
                return
            digest = hashlib.sha256() if sha else None
            tmp = cache.tmpfile() if sha and cache is not None and resp.status == 200 else None
            if tmp:
                with self.server.lock:
                    self.server.partial.add(tmp)
            sent, last = 0, b""
            try:
                with open(tmp, "wb") if tmp else _Null() as out:
                    # one chunk held back: the client has the whole package only once it is kept
                    while chunk := resp.read(CHUNK):
                        self.wfile.write(last)
                        last = chunk
                        sent += len(chunk)
                        if digest is not None and tmp:
                            digest.update(chunk)
                            out.write(chunk)
                with self.server.lock:
                    self.server.fetched_bytes += sent if pool else 0
                if tmp and sha and digest is not None and cache is not None and digest.hexdigest() == sha:
                    cache.put(tmp, sha, url)  # the index's hash: kept for the next build
                    with self.server.lock:
                        self.server.kept += 1
                self.wfile.write(last)
            finally:
                if tmp:
                    tmp.unlink(missing_ok=True)
                    with self.server.lock:
                        self.server.partial.discard(tmp)

    def _from_cache(self, cache: Cache, sha: str) -> bool:
        """Answer from the cache if it holds `sha` (re-hashed first); False to fetch instead."""
        if not cache.has(sha):
            return False
        f = cache.path(sha)
        if sha256_file(f) != sha:
            log.warning("proxy: cached %s is corrupt; dropped", f)
            f.unlink(missing_ok=True)
            return False
        with self.server.lock:  # counted before the client can see the answer
            self.server.hits += 1
            self.server.hit_bytes += f.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.debian.binary-package")
        self.send_header("Content-Length", str(f.stat().st_size))
        self.end_headers()
        with open(f, "rb") as src:
            while chunk := src.read(CHUNK):
                self.wfile.write(chunk)
        return True

    def do_CONNECT(self) -> None:
        host, _, port = self.path.partition(":")
        if not self._allowed(f"https://{host}/") or port not in ("443", ""):
            self._refuse(f"CONNECT {self.path}")
            return
        try:
            upstream = socket.create_connection((host, int(port or 443)), timeout=60)
        except OSError as e:
            log.warning("proxy: CONNECT %s: %s", self.path, e)
            self.send_response(502)
            self.end_headers()
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        conns = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(conns, [], [], 120)
                if not readable:
                    break
                for s in readable:
                    data = s.recv(CHUNK)
                    if not data:
                        return
                    (upstream if s is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()
            self.close_connection = True


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *a: object) -> None:
        pass

    def write(self, data: bytes) -> int:
        return len(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow: tuple[str, ...] = ()
    refused: list[str]
    cache: Cache | None = None
    hashes: dict[str, str]  # pool path -> SHA256, from the indexes that passed through
    lock: threading.Lock
    hits: int = 0
    hit_bytes: int = 0
    fetched_bytes: int = 0  # packages (pool files) fetched upstream
    kept: int = 0  # of those, kept in the cache (an index named them, the hash matched)
    partial: set[Path]  # downloads in progress (removed when the proxy stops: Ctrl-C mid-transfer)


class PackageProxy:
    """`with PackageProxy(prefixes, cache) as p:` serves on 127.0.0.1:`p.port` until the block ends."""

    def __init__(self, allow: tuple[str, ...], cache: Cache | None = None) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.allow = tuple(a if a.endswith("/") or urlsplit(a).path else a + "/" for a in allow)
        self.server.refused = []
        self.server.cache = cache
        self.server.hashes = {}
        self.server.lock = threading.Lock()
        self.server.partial = set()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def cache_hits(self) -> int:
        """Packages answered from the cache."""
        return self.server.hits

    def stats(self) -> dict[str, int]:
        """For the manifest, like the rootfs builder's `source.package_cache`."""
        s = self.server
        return {"reused_files": s.hits, "reused_bytes": s.hit_bytes, "downloaded_bytes": s.fetched_bytes,
                "kept_files": s.kept}

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def refused(self) -> list[str]:
        return list(self.server.refused)

    def __enter__(self) -> PackageProxy:
        self.thread.start()
        log.info("package proxy on 127.0.0.1:%d for %s", self.port, ", ".join(self.server.allow))
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.server.lock:
            for tmp in self.server.partial:
                tmp.unlink(missing_ok=True)
