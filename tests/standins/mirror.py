"""A local HTTP stand-in for github.com release downloads, raw.githubusercontent.com and update.rke2.io.

Layout and URL mapping: files live under ``root`` at their upstream URL paths, and every path segment is
stored on disk in its *quoted* form, ``quote(unquote(segment), safe="")``. So the release directory of
``v1.31.4+rke2r1`` is literally ``v1.31.4%2Brke2r1`` on disk, and both
``/rancher/rke2/releases/download/v1.31.4%2Brke2r1/<file>`` and ``.../v1.31.4+rke2r1/<file>`` serve it
(``+`` in a URL path is a literal plus; it is never turned into a space).

Endpoints:
- ``GET /v1-release/channels/<name>``: 302, ``Location: <url>/rancher/rke2/releases/tag/<quoted version>``
  (404 for an unknown channel), like update.rke2.io.
- ``GET /v1-release/channels``: the channel collection as JSON.
- ``GET /rancher/rke2/releases/tag/<version>``: a small HTML page when that release exists, else 404.
- anything else: the static file (404 if missing); HEAD works everywhere.
"""

from __future__ import annotations

import json
import shutil
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, unquote, urlsplit

from .release import RKE2_DOWNLOAD, version_dirname

CHANNELS_PREFIX = "/v1-release/channels"
RKE2_TAG_PREFIX = "/rancher/rke2/releases/tag/"


def upstream_bases(mirror_url: str) -> dict[str, str]:
    """The upstream base URLs product code uses, pointed at a mirror.

    Real values: https://github.com/rancher/rke2/releases/download, https://raw.githubusercontent.com/rancher/rke2,
    https://update.rke2.io/v1-release/channels, https://github.com/zarf-dev/zarf/releases/download,
    https://rpm.rancher.io.
    """
    u = mirror_url.rstrip("/")
    return {
        "rke2_release": f"{u}/rancher/rke2/releases/download",
        "rke2_source": f"{u}/rancher/rke2",
        "rke2_channels": f"{u}/v1-release/channels",
        "zarf_release": f"{u}/zarf-dev/zarf/releases/download",
        "rke2_rpm": f"{u}/rpm",
    }


def disk_path(root: Path, url_path: str) -> Path | None:
    """Map a request path to a file under ``root`` (segments stored quoted); None if it escapes root."""
    parts = []
    for seg in url_path.split("/"):
        if seg == "":
            continue
        name = unquote(seg)
        if name in (".", "..") or "/" in name or "\x00" in name:
            return None
        parts.append(quote(name, safe=""))
    return root.joinpath(*parts)


class ReleaseMirror:
    """Serve ``root`` on 127.0.0.1 (a free port) from a daemon thread. Use as a context manager."""

    def __init__(self, root: Path, channels: dict[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.root = Path(root)
        self.channels: dict[str, str] = dict(channels or {})
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._host = host
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> ReleaseMirror:
        if self._server is not None:
            return self
        mirror = self

        class Handler(_Handler):
            pass

        Handler.mirror = mirror
        server = ThreadingHTTPServer((self._host, 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="release-mirror", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> ReleaseMirror:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- properties ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ReleaseMirror is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def bases(self) -> dict[str, str]:
        return upstream_bases(self.url)

    def _record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)


class _Handler(BaseHTTPRequestHandler):
    mirror: ReleaseMirror
    server_version = "standin-release-mirror/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    # --- responses -----------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, head: bool, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _not_found(self, head: bool) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"Not Found\n", "text/plain; charset=utf-8", head)

    def _serve(self, head: bool) -> None:
        m = self.mirror
        m._record(self.path)
        path = urlsplit(self.path).path

        if path.rstrip("/") == CHANNELS_PREFIX:
            self._channel_list(head)
        elif path.startswith(CHANNELS_PREFIX + "/"):
            self._channel(unquote(path[len(CHANNELS_PREFIX) + 1 :]).strip("/"), head)
        elif path.startswith(RKE2_TAG_PREFIX):
            self._tag_page(unquote(path[len(RKE2_TAG_PREFIX) :]).strip("/"), head)
        else:
            self._file(disk_path(m.root, path), head)

    def _file(self, target: Path | None, head: bool) -> None:
        if target is None or not target.is_file():
            self._not_found(head)
            return
        size = target.stat().st_size
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not head:
            with target.open("rb") as f:
                shutil.copyfileobj(f, self.wfile)

    def _channel(self, name: str, head: bool) -> None:
        version = self.mirror.channels.get(name)
        if version is None:
            self._not_found(head)
            return
        location = f"{self.mirror.url}{RKE2_TAG_PREFIX}{version_dirname(version)}"
        body = f'<a href="{location}">Found</a>.\n'.encode()
        self._send(HTTPStatus.FOUND, body, "text/html; charset=utf-8", head, Location=location)

    def _channel_list(self, head: bool) -> None:
        base = f"{self.mirror.url}{CHANNELS_PREFIX}"
        data = [
            {
                "id": name,
                "type": "channel",
                "links": {"self": f"{base}/{quote(name, safe='')}"},
                "name": name,
                "latest": version,
            }
            for name, version in sorted(dict(self.mirror.channels).items())
        ]
        doc = {
            "type": "collection",
            "links": {"self": base},
            "actions": {},
            "resourceType": "channel",
            "data": data,
        }
        self._send(HTTPStatus.OK, json.dumps(doc).encode(), "application/json", head)

    def _tag_page(self, version: str, head: bool) -> None:
        if not (self.mirror.root / RKE2_DOWNLOAD / version_dirname(version)).is_dir():
            self._not_found(head)
            return
        body = f"<html><title>Release {version} · rancher/rke2 (stand-in)</title></html>\n".encode()
        self._send(HTTPStatus.OK, body, "text/html; charset=utf-8", head)
