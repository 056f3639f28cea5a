"""The image upload action.

``POST /v1/harvester/harvesterhci.io.virtualmachineimages/<ns>/<name>?action=upload&size=<bytes>``

Models Harvester's upload handler (pkg/image/backingimage/upload.go) in front of Longhorn's
backing-image-manager: wait for the data source, then Longhorn's checks (size parameter, multiple of 512,
multipart part ``chunk``, one upload at a time), stream to a file, verify size and SHA-512. Errors are plain
text bodies (the handler writes ``err.Error()``), not Kubernetes Status objects. Any Longhorn-side error is
also recorded on the image as Imported=False reason UploadFailed (``FailUpload``); errors after data flowed
fail the backing image, which drives the image retry loop.

The body is never held in memory: it is parsed as a stream (Content-Length or chunked transfer encoding)
with a bounded buffer, and the ``chunk`` part goes to a temporary file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .controllers import IMAGES, qcow2_virtual_size
from .resources import ApiError

if TYPE_CHECKING:
    from email.message import Message

    from .double import HarvesterDouble

READ_SIZE = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024


class MalformedBody(Exception):
    pass


class BodyReader:
    """A request body read in bounded pieces, de-chunking ``Transfer-Encoding: chunked``."""

    def __init__(self, rfile: io.BufferedIOBase, headers: Message) -> None:
        self.rfile = rfile
        self.chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
        self.remaining = 0 if self.chunked else int(headers.get("Content-Length") or 0)
        self.chunk_left = 0
        self.eof = False
        self.max_read = 0  # largest single read from the socket
        self.max_chunk = 0  # largest HTTP chunk the client sent (shows whether the client streamed)
        self.total = 0

    def read(self, n: int) -> bytes:
        if self.eof:
            return b""
        if not self.chunked:
            if self.remaining == 0:
                self.eof = True
                return b""
            data = self.rfile.read(min(n, self.remaining))
            if not data:
                raise MalformedBody("unexpected EOF")
            self.remaining -= len(data)
        else:
            if self.chunk_left == 0:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError as e:
                    raise MalformedBody(f"invalid chunk size line {line!r}") from e
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self.eof = True
                    return b""
                self.chunk_left, self.max_chunk = size, max(self.max_chunk, size)
            data = self.rfile.read(min(n, self.chunk_left))
            if not data:
                raise MalformedBody("unexpected EOF")
            self.chunk_left -= len(data)
            if self.chunk_left == 0:
                self.rfile.readline(16)  # CRLF after the chunk data
        self.max_read = max(self.max_read, len(data))
        self.total += len(data)
        return data

    def drain(self, limit: int) -> bool:
        """Discard up to ``limit`` bytes so an early error response can be read by the client."""
        try:
            while not self.eof and limit > 0:
                limit -= len(self.read(min(READ_SIZE, limit)))
        except (MalformedBody, OSError):
            return False
        return self.eof


class MultipartStream:
    """Streaming multipart/form-data parser; its buffer never exceeds one read plus the boundary."""

    def __init__(self, reader: BodyReader, boundary: bytes) -> None:
        self.reader = reader
        self.dash_boundary = b"--" + boundary
        self.delimiter = b"\r\n--" + boundary
        self.buf = b""
        self.started = False
        self.in_part = False
        self.finished = False
        self.max_buffered = 0

    def _fill(self) -> bool:
        data = self.reader.read(READ_SIZE)
        self.buf += data
        self.max_buffered = max(self.max_buffered, len(self.buf))
        return bool(data)

    def next_part(self) -> dict[str, str] | None:
        """Headers of the next part (lower-case names), or None after the closing boundary."""
        while self.in_part:
            self.read(READ_SIZE)
        if self.finished:
            return None
        if not self.started:  # skip the preamble up to the first boundary
            while (i := self.buf.find(self.dash_boundary)) < 0:
                self.buf = self.buf[-len(self.dash_boundary) :]
                if not self._fill():
                    raise MalformedBody("multipart: NextPart: EOF")
            self.buf = self.buf[i + len(self.dash_boundary) :]
            self.started = True
        while len(self.buf) < 2:
            if not self._fill():
                raise MalformedBody("multipart: NextPart: EOF")
        if self.buf.startswith(b"--"):
            self.finished = True
            return None
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > MAX_HEADER_BYTES or not self._fill():
                raise MalformedBody("multipart: malformed MIME header")
        headers = {}
        for line in self.buf[:end].decode("utf-8", "replace").split("\r\n"):
            if ":" in line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        self.buf = self.buf[end + 4 :]
        self.in_part = True
        return headers

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the current part; b"" at its end."""
        if not self.in_part:
            return b""
        while True:
            i = self.buf.find(self.delimiter)
            if i >= 0:
                if i > n:
                    data, self.buf = self.buf[:n], self.buf[n:]
                    return data
                data, self.buf = self.buf[:i], self.buf[i + len(self.delimiter) :]
                self.in_part = False
                return data
            safe = len(self.buf) - len(self.delimiter) + 1
            if safe > 0:
                data, self.buf = self.buf[: min(safe, n)], self.buf[min(safe, n) :]
                return data
            if not self._fill():
                raise MalformedBody("multipart: NextPart: EOF")


def form_name(headers: dict[str, str]) -> str | None:
    m = re.search(r'\bname="([^"]*)"', headers.get("content-disposition", ""))
    return m[1] if m else None


@dataclass
class UploadResult:
    status: int
    text: str
    body_consumed: bool


def handle_upload(
    d: HarvesterDouble,
    rfile: io.BufferedIOBase,
    headers: Message,
    namespace: str,
    name: str,
    query: dict[str, list[str]],
) -> UploadResult:
    reader = BodyReader(rfile, headers)
    content_type = headers.get("Content-Type") or ""
    entry: dict[str, Any] = {
        "namespace": namespace,
        "name": name,
        "size_param": query["size"][0] if query.get("size") else None,
        "content_type": content_type,
        "chunked": reader.chunked,
        "parts": [],
        "part": None,
        "bytes": 0,
        "max_buffered": 0,
        "max_read": 0,
        "max_chunk": 0,
        "sha512": None,
        "status": None,
        "error": None,
    }
    with d.lock:
        d.uploads.append(entry)

    def done(status: int, text: str = "") -> UploadResult:
        entry.update(status=status, error=text or None, max_read=reader.max_read, max_chunk=reader.max_chunk)
        consumed = reader.eof or reader.drain(8 * 1024 * 1024)
        return UploadResult(status, text, consumed)

    image = d.store.get(IMAGES, namespace, name)
    if image is None:
        return done(404, f'virtualmachineimages.harvesterhci.io "{name}" not found')
    source = image["spec"].get("sourceType")
    if source != "upload":
        return done(
            400,
            f'image {namespace}/{name} has sourceType "{source}": the upload action is only '
            'available for sourceType "upload"',
        )
    claimed = d.controllers.claim_upload(namespace, name, d.datasource_wait)
    if isinstance(claimed, ApiError):
        if claimed.code == 400:  # refused by Longhorn: recorded on the image by FailUpload
            run = d.controllers.images.get(image["metadata"]["uid"])
            if run is not None:
                d.controllers.fail_upload(run, claimed.message)
        return done(claimed.code, claimed.message)
    run = claimed

    def refuse(msg: str) -> UploadResult:
        text = f"upload failed: {msg}"
        d.controllers.release_upload(run)
        d.controllers.fail_upload(run, text)
        return done(400, text)

    def failed(msg: str, progress: int) -> UploadResult:
        text = f"upload failed: {msg}"
        d.controllers.fail_upload(run, text)
        d.controllers.fail(run, "Imported", msg, progress)
        return done(500, text)

    raw_size = entry["size_param"]
    try:
        size = int(raw_size or "")
    except ValueError:
        return refuse(
            f'failed to parse the size parameter: strconv.ParseInt: parsing "{raw_size or ""}": '
            "invalid syntax"
        )
    if size % 512 != 0:
        return refuse(
            f"the uploaded file size {size} should be a multiple of 512 bytes since Longhorn uses directIO"
        )
    m = re.match(r'multipart/form-data\s*;.*\bboundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not m:
        return refuse("request Content-Type isn't multipart/form-data")
    stream = MultipartStream(reader, m[1].encode())
    fd, tmp_path = tempfile.mkstemp(prefix=f"upload-{name}-", dir=d.tmpdir)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, received, head, last = hashlib.sha512(), 0, b"", 0.0
            while (part := stream.next_part()) is not None:
                pname = form_name(part)
                entry["parts"].append(pname)
                if pname != "chunk":
                    continue  # backing-image-manager ignores other form fields
                entry["part"] = pname
                while data := stream.read(READ_SIZE):
                    out.write(data)
                    digest.update(data)
                    received += len(data)
                    head += data[: max(0, 32 - len(head))]
                    entry["bytes"] = received
                    if time.monotonic() - last >= max(d.tick, 0.05):
                        d.controllers.importing(run, received, size)
                        last = time.monotonic()
                break
            entry["max_buffered"] = stream.max_buffered
        if entry["part"] is None:
            return refuse("the uploaded request doesn't contain form 'chunk'")
        actual = digest.hexdigest()
        entry["sha512"] = actual
        if received != size:
            return failed(
                f"the uploaded file size {received} doesn't match the expected size {size} given by "
                "the size parameter",
                min(99, received * 100 // max(size, 1)),
            )
        expected = image["spec"].get("checksum", "")
        if expected and expected != actual:
            # backing-image-manager answers the upload first and computes the SHA-512 afterwards
            # ("GetFileChecksum is time consuming, so we make it async as post process function to
            # prevent client timeout": sync_file.go finishProcessingNoLock -> go postProcessSyncFile).
            # The POST succeeds; the backing image fails `checksum_seconds` later, and Harvester's
            # retry loop re-initializes the image, whose new data source waits for an upload that
            # nobody sends: `upload_window` later it fails again, until RetryLimitExceeded.
            msg = f"the expected checksum {expected} doesn't match the file actual checksum {actual}"
            later = threading.Timer(d.checksum_seconds, d.controllers.fail, (run, "Imported", msg, 99))
            later.daemon = True
            later.start()
            return done(200)
        d.controllers.imported(run, received, qcow2_virtual_size(head, received))
        return done(200)
    except (MalformedBody, OSError) as e:
        entry["max_buffered"] = stream.max_buffered
        return failed(f"failed to receive the file: {e}", 0)
    finally:
        os.unlink(tmp_path)
