"""An allow-list HTTP proxy on 127.0.0.1 for build VMs that otherwise have no egress.

The Packer build VM runs with `restrict=on` user networking; qemu's `guestfwd` connects
10.0.2.100:3142 in the guest to this proxy on the host. It forwards only requests whose URL starts
with one of the allowed prefixes (the recipe's package mirrors): plain HTTP GET/HEAD (apt) and
CONNECT to allowed HTTPS hosts (zypper against SCC/RMT; TLS stays end to end). Everything else
gets 403 and is logged, so a build cannot quietly reach anything but its package sources.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
CHUNK = 1 << 16


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
            while chunk := resp.read(CHUNK):
                self.wfile.write(chunk)

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow: tuple[str, ...] = ()
    refused: list[str]


class PackageProxy:
    """`with PackageProxy(prefixes) as p:` serves on 127.0.0.1:`p.port` until the block ends."""

    def __init__(self, allow: tuple[str, ...]) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.allow = tuple(a if a.endswith("/") or urlsplit(a).path else a + "/" for a in allow)
        self.server.refused = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

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
