"""The S3 store, through the MinIO Python SDK (MinIO, Ceph RGW, AWS S3 and other S3 servers).

Transfers
- Blobs up to `part_size` go in one PUT with `Content-MD5`, whose returned ETag must equal the
  local MD5. Larger ones go as a multipart upload whose parts (`part_size`, `parallel` at once)
  are read once from disk while the blob's sha256 is computed; each part's integrity in transit is
  checked by the server against what the SDK computed from our bytes (the signed SigV4 payload
  hash over HTTP, Content-MD5 over HTTPS), and its ETag recorded. After completion the object's
  size and multipart ETag (MD5 of the part ETags: the object is exactly those parts) must match,
  and the local bytes must have the blob's sha256 - or the upload is aborted; only then does
  `put_file` return, so a manifest is never written over unverified data. A file whose sha256
  was computed by the build, with its identity (`fsutil.file_identity`: device, inode, size,
  mtime) recorded then and unchanged before and after the upload, is not hashed again - git's
  index makes the same bet; any write to it changes mtime, and one during the upload aborts it.
  Otherwise every byte is hashed twice on this side (sha256 of the blob, the SDK's per-part
  hash). The blob's sha256 is stored as `x-amz-meta-sha256`: a later publish
  that finds the blob with that sha256 and size uploads nothing.
- Resume: an interrupted multipart upload is left on the server. The next attempt finds it
  (ListMultipartUploads on the blob's key), lists its parts and re-sends only parts whose size or
  MD5 (computed locally for those parts only) differ. Blobs are content-addressed, so any upload
  found under a key holds the same bytes. Uploads nobody resumes are the server's to clean up
  (MinIO `api stale_uploads_expiry`; a lifecycle rule `AbortIncompleteMultipartUpload` elsewhere).
- `fput_object` is not used: it neither resumes nor exposes the per-part checks, hence the SDK's
  (stable, if underscore-named) multipart calls `_create_multipart_upload`, `_upload_part`,
  `_list_multipart_uploads`, `_list_parts`, `_complete_multipart_upload` and `_put_object` (the
  only way to send conditional headers). They are used in this module only.
- Retries: every request goes through tenacity (exponential back-off from `retry_wait`, at most
  `retries` attempts); urllib3's own retries are off so there is exactly one retry policy.
  Connection errors, timeouts, 5xx and SlowDown are retried; a single PUT whose ETag is not its
  MD5 is sent again. Rejected credentials, a missing bucket and TLS failures are not retried: they are one
  clear `UserError`. Downloads resume with HTTP Range from the bytes already written.

Locking (S3 has no locks): a lease object `<prefix>.lock` created with `If-None-Match: *`
(honoured by MinIO, AWS S3 since 2024, Ceph RGW, moto), holding an owner token and a TTL. A
lease older than its TTL by the *server's* clock (its Last-Modified against the server's Date
header, so client clocks do not matter) is taken over with `If-Match` on its ETag, so two
publishers cannot both break it. After acquiring, the lease is read back and must carry our
token (a cheap guard against servers that ignore the condition); release reads the lease and
deletes it only while it carries our token, with `If-Match` on the ETag just read (Ceph RGW 16
ignores If-Match on DELETE). ETags in If-Match are quoted, or unquoted once the server has shown
it needs that (`_conditional`: RGW 16 answers 412 to a quoted ETag that matches).

Credentials: `IMAGEFACTORY_STORE_<NAME>_ACCESS_KEY`/`_SECRET_KEY`/`_SESSION_TOKEN` (NAME upper-cased,
`-` as `_`), else the store's `credentials_file` (YAML `access_key`, `secret_key`,
`session_token`; refused unless mode 0600/0400), else `IMAGEFACTORY_S3_ACCESS_KEY`/`_SECRET_KEY`/
`_SESSION_TOKEN`, else anonymous. Never from argv or the config file itself; never logged (the
credentials object's repr names only where they came from).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import certifi
import urllib3
import yaml
from minio import Minio
from minio.datatypes import Part
from minio.error import InvalidResponseError, S3Error, ServerError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from ..config import S3StoreConfig
from ..errors import BuildError, ImageFactoryError, UserError
from ..fsutil import file_identity
from .signing import check_secret_file
from .stores import CHUNK, NotFound, ObjectInfo, PreconditionFailed, Progress, Transfer, check_key

log = logging.getLogger(__name__)
T = TypeVar("T")

CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                    "InvalidToken", "TokenRefreshRequired", "InvalidSecurity"}
TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
                   "OperationAborted", "ServiceNotReady"}
LOCK_KEY = ".lock"
LOCK_TTL = 120.0  # seconds; a catalogue mutation is a handful of small PUTs
LOCK_WAIT = 300.0  # give up waiting for another publisher after this long
BLOBS = "blobs/"  # the content-addressed part of the layout (catalogue.manifest: blobs/sha256/<hex>)
POLICY_SID = "ImagefactoryAnonymousBlobReads"


@dataclass(frozen=True)
class Credentials:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = ""


def _env_name(store: str) -> str:
    return "IMAGEFACTORY_STORE_" + store.upper().replace("-", "_")


def credentials_for(store: str, cfg: S3StoreConfig) -> Credentials | None:
    """See the module docstring for the order."""
    env = os.environ
    for prefix in (_env_name(store), None, "IMAGEFACTORY_S3"):
        if prefix is None:
            if cfg.credentials_file:
                return _credentials_file(Path(cfg.credentials_file), store)
            continue
        access, secret = env.get(f"{prefix}_ACCESS_KEY"), env.get(f"{prefix}_SECRET_KEY")
        if access or secret:
            if not (access and secret):
                raise UserError(f"${prefix}_ACCESS_KEY and ${prefix}_SECRET_KEY must be set together")
            return Credentials(access, secret, env.get(f"{prefix}_SESSION_TOKEN"), f"${prefix}_*")
    return None


def _credentials_file(path: Path, store: str) -> Credentials:
    raw = check_secret_file(path, f"credentials file of store '{store}'")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        data = None  # the parser's message could quote the secret: say only what is wrong
    if not isinstance(data, dict) or not isinstance(data.get("access_key"), str) \
            or not isinstance(data.get("secret_key"), str):
        raise UserError(f"{path}: expected YAML with access_key and secret_key (strings)")
    unknown = set(data) - {"access_key", "secret_key", "session_token"}
    if unknown:
        raise UserError(f"{path}: unknown keys {', '.join(sorted(unknown))}",
                        hint="allowed: access_key, secret_key, session_token")
    token = data.get("session_token")
    return Credentials(data["access_key"], data["secret_key"], str(token) if token else None, str(path))


class _PartMismatch(Exception):
    """The server's ETag for what we sent is not the MD5 we computed: corrupted on the way."""


def _transient(e: BaseException) -> bool:
    if isinstance(e, S3Error):
        return e.code in TRANSIENT_CODES
    if isinstance(e, ServerError):
        return e.status_code >= 500
    if isinstance(e, InvalidResponseError):
        code = getattr(e, "_code", 0)
        return isinstance(code, int) and code >= 500
    if isinstance(e, urllib3.exceptions.SSLError):
        return False
    return isinstance(e, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError | _PartMismatch)


def _md5_b64(data: bytes) -> tuple[str, str]:
    h = hashlib.md5(data, usedforsecurity=False)
    return h.hexdigest(), base64.b64encode(h.digest()).decode()


class S3Store:
    """A catalogue in a bucket (under `prefix`); see the module docstring."""

    def __init__(self, name: str, cfg: S3StoreConfig, credentials: Credentials | None) -> None:
        self.name = name
        self.cfg = cfg
        self.credentials = credentials
        scheme, host = cfg.endpoint.split("://", 1)
        secure = scheme == "https"
        ca = cfg.ca_bundle or os.environ.get("SSL_CERT_FILE") or certifi.where()
        if secure and cfg.ca_bundle and not Path(cfg.ca_bundle).is_file():
            raise UserError(f"stores.{name}.ca_bundle: {cfg.ca_bundle} does not exist")
        if secure and not cfg.verify_tls:
            log.warning("store %s: TLS certificate verification is OFF (verify_tls: false)", name)
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(30.0, cfg.timeout), read=cfg.timeout),
            maxsize=cfg.parallel + 4, cert_reqs="CERT_REQUIRED" if cfg.verify_tls else "CERT_NONE",
            ca_certs=ca, retries=False)
        c = credentials
        self.client = Minio(host.rstrip("/"), access_key=c.access_key if c else None,
                            secret_key=c.secret_key if c else None,
                            session_token=c.session_token if c else None,
                            secure=secure, region=cfg.region, http_client=http)
        self.bucket = cfg.bucket
        self.prefix = cfg.prefix.strip("/") + "/" if cfg.prefix.strip("/") else ""
        self._quote_if_match = True  # see _conditional

    def __repr__(self) -> str:
        return f"S3Store({self.name!r}, {self.cfg.endpoint!r}, bucket={self.bucket!r})"

    def describe(self) -> str:
        where = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"{self.name} ({self.cfg.endpoint}, bucket {where})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    # --- error handling ---------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request with the retry policy; map what is left to our errors."""
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("store %s: %s: %s; retrying (attempt %d of %d)", self.name, what,
                        _short(exc), state.attempt_number + 1, self.cfg.retries)

        retrying = Retrying(stop=stop_after_attempt(self.cfg.retries), reraise=True,
                            wait=wait_exponential(multiplier=self.cfg.retry_wait, max=30),
                            retry=retry_if_exception(_transient), before_sleep=before_sleep)
        try:
            return retrying(fn)
        except (ImageFactoryError, PreconditionFailed):
            raise
        except Exception as e:
            raise self._error(e, what) from None

    def _error(self, e: Exception, what: str) -> ImageFactoryError:
        where = f"store {self.describe()}: {what}"
        if isinstance(e, S3Error):
            if e.code in CREDENTIAL_CODES:
                src = self.credentials.source if self.credentials else "none (anonymous)"
                return UserError(f"{where}: credentials rejected ({e.code})",
                                 hint=f"credentials used: {src}; check the access key, secret key and "
                                      "the bucket policy")
            if e.code == "NoSuchBucket":
                return UserError(f"{where}: bucket '{self.bucket}' does not exist",
                                 hint=f"create it, or set stores.{self.name}.create_bucket: true")
            if e.code == "NoSuchKey":
                return NotFound(f"{where}: not found")
            return BuildError(f"{where}: {e.code}: {e.message}")
        if isinstance(e, urllib3.exceptions.SSLError):
            return UserError(f"{where}: TLS verification failed: {_short(e)}",
                             hint=f"set stores.{self.name}.ca_bundle to the CA that signed the server "
                                  "certificate")
        if _transient(e):
            return BuildError(f"{where}: failed after {self.cfg.retries} attempts: {_short(e)}",
                              hint="check that the server is reachable; publishing again resumes "
                                   "where this attempt stopped")
        return BuildError(f"{where}: {_short(e)}")

    # --- small objects ----------------------------------------------------------------------

    def prepare(self) -> None:
        if self.cfg.create_bucket and not self._call("check bucket", lambda: self.client.bucket_exists(
                self.bucket)):
            self._call("create bucket", lambda: self.client.make_bucket(self.bucket))
        if self.cfg.anonymous_blobs:
            self._allow_anonymous_blobs()

    def stat(self, key: str) -> ObjectInfo | None:
        def go() -> ObjectInfo | None:
            try:
                o = self.client.stat_object(self.bucket, self._key(key))
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return None
                raise
            meta = o.metadata or {}
            return ObjectInfo(key, int(o.size or 0), (o.etag or "").strip('"'), o.last_modified,
                              meta.get("x-amz-meta-sha256"))

        return self._call(f"stat {key}", go)

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/json",
                  if_match: str | None = None, if_none_match: bool = False) -> str:
        md5_hex, md5_b64 = _md5_b64(data)
        headers: dict[str, str | list[str] | tuple[str]] = {"Content-Type": content_type,
                                                             "Content-MD5": md5_b64}
        if if_none_match:
            headers["If-None-Match"] = "*"

        def go() -> str:
            if if_match is not None:
                headers["If-Match"] = self._if_match(if_match)
            try:
                r = self.client._put_object(self.bucket, self._key(key), data, dict(headers))
            except S3Error as e:
                if e.code in ("PreconditionFailed", "ConditionalRequestConflict") or \
                        (e.code == "NoSuchKey" and if_match is not None):
                    raise PreconditionFailed(key) from None
                raise
            etag = (r.etag or "").strip('"')
            if etag and etag != md5_hex:
                raise _PartMismatch(key)
            return etag

        return self._conditional(key, if_match, lambda: self._call(f"write {key}", go))

    def _if_match(self, etag: str) -> str:
        return f'"{etag}"' if self._quote_if_match else etag

    def _conditional(self, key: str, if_match: str | None, request: Callable[[], T]) -> T:
        """`request` with its If-Match fallback: RFC 9110 quotes the ETag, and AWS S3, MinIO and moto
        take it quoted, but Ceph RGW 16 answers 412 to a quoted ETag that matches (it compares the
        raw header). A 412 while the object still has that very ETag can only be that: from then
        on this store sends it unquoted (RGW's form, which MinIO and AWS accept too) and the
        request is repeated once. A 412 for an object that really changed stays a 412."""
        try:
            return request()
        except PreconditionFailed:
            if if_match is None or not self._quote_if_match:
                raise
            info = self.stat(key)
            if info is None or info.etag != if_match:
                raise
            log.info("store %s: the server refuses a quoted If-Match ETag that matches (Ceph RGW); "
                     "sending ETags unquoted", self.name)
            self._quote_if_match = False
            return request()

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        def go() -> tuple[bytes, str]:
            try:
                r = self.client.get_object(self.bucket, self._key(key))
            except S3Error as e:
                if e.code == "NoSuchKey":
                    raise NotFound(f"store {self.describe()}: {key} not found") from None
                raise
            try:
                return r.read(), str(r.headers.get("ETag", "")).strip('"')
            finally:
                r.close()
                r.release_conn()

        return self._call(f"read {key}", go)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        def go() -> list[ObjectInfo]:
            out = []
            for o in self.client.list_objects(self.bucket, prefix=self.prefix + prefix, recursive=True):
                name = str(o.object_name)
                if o.is_dir or name.rsplit("/", 1)[-1].startswith("."):
                    continue
                out.append(ObjectInfo(name[len(self.prefix):], int(o.size or 0), (o.etag or "").strip('"'),
                                      o.last_modified))
            return out

        yield from self._call(f"list {prefix or '/'}", go)

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.client.remove_object(self.bucket, self._key(key)))

    def presign(self, key: str, expires: dt.timedelta) -> str:
        if self.credentials is None:
            raise UserError(f"store {self.describe()}: a presigned URL needs credentials",
                            hint=f"set {_env_name(self.name)}_ACCESS_KEY/_SECRET_KEY or credentials_file")
        return self._call(f"presign {key}", lambda: self.client.presigned_get_object(
            self.bucket, self._key(key), expires=expires))

    def download_url(self, key: str, expires: dt.timedelta) -> str:
        """A blob URL that answers HEAD as well as GET: the plain object URL when the bucket lets
        anyone read blobs (`anonymous_blobs`), else a URL presigned for GET - on which AWS S3,
        MinIO and Ceph RGW answer 403 to HEAD (the signature covers the method)."""
        if self.cfg.anonymous_blobs and key.startswith(BLOBS):
            return f"{self.cfg.endpoint}/{self.bucket}/{urllib.parse.quote(self._key(key))}"
        return self.presign(key, expires)

    def _allow_anonymous_blobs(self) -> None:
        """Add (or keep) one bucket-policy statement: anyone may GET/HEAD objects under
        `<prefix>blobs/`. Blobs are content-addressed and every consumer checks them against a
        signed manifest; manifests, the index and the lock stay private. Other statements of the
        policy are kept as they are."""
        resource = f"arn:aws:s3:::{self.bucket}/{self.prefix}{BLOBS}*"
        ours = {"Sid": POLICY_SID, "Effect": "Allow", "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"], "Resource": [resource]}

        def go() -> None:
            try:
                policy = json.loads(self.client.get_bucket_policy(self.bucket))
            except S3Error as e:
                if e.code != "NoSuchBucketPolicy":
                    raise
                policy = {"Version": "2012-10-17", "Statement": []}
            kept = [st for st in policy.get("Statement", []) if st.get("Sid") != POLICY_SID]
            if len(kept) + 1 == len(policy.get("Statement", [])) and ours in policy["Statement"]:
                return
            policy["Statement"] = [*kept, ours]
            log.info("store %s: bucket policy: anonymous read of %s", self.name, resource)
            self.client.set_bucket_policy(self.bucket, json.dumps(policy))

        self._call("set the bucket policy for anonymous blob reads", go)

    # --- blobs ------------------------------------------------------------------------------

    def put_file(self, key: str, path: Path, *, sha256: str, size: int, content_type: str,
                 progress: Progress | None = None, identity: dict[str, int] | None = None) -> Transfer:
        """Upload `path` as the blob `key`. `identity` (`fsutil.file_identity` recorded when
        `sha256` was computed, by the build) lets a multipart upload skip hashing the file again
        when the file is provably unchanged - same device, inode, size and mtime before and after
        the upload; otherwise every byte is hashed and checked against `sha256`."""
        info = self.stat(key)
        if info is not None and info.size == size and info.sha256 == sha256:
            return Transfer(key, size, 0, True)
        if info is not None:
            log.warning("store %s: %s exists but does not match (size %d, sha256 %s): uploading it again",
                        self.name, key, info.size, info.sha256)
        if size <= self.cfg.part_size:
            return self._put_small(key, path, sha256, size, content_type, progress)
        trusted = identity is not None and file_identity(path) == identity
        return self._put_multipart(key, path, sha256, size, content_type, progress,
                                   identity if trusted else None)

    def _put_small(self, key: str, path: Path, sha256: str, size: int, content_type: str,
                   progress: Progress | None) -> Transfer:
        data = path.read_bytes()
        _check_content(path, len(data), hashlib.sha256(data).hexdigest(), size, sha256)
        md5_hex, md5_b64 = _md5_b64(data)
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": content_type, "Content-MD5": md5_b64, "x-amz-meta-sha256": sha256}

        def go() -> None:
            r = self.client._put_object(self.bucket, self._key(key), data, dict(headers))
            if (r.etag or "").strip('"') not in ("", md5_hex):
                raise _PartMismatch(key)

        self._call(f"upload {key}", go)
        if progress:
            progress(size)
        return Transfer(key, size, size, False)

    def _find_upload(self, full: str) -> tuple[str | None, dict[int, Part]]:
        def go() -> tuple[str | None, dict[int, Part]]:
            try:
                res = self.client._list_multipart_uploads(self.bucket, prefix=full)
            except S3Error as e:
                if e.code in ("NotImplemented", "MethodNotAllowed"):
                    return None, {}  # a server without the listing: start afresh
                raise
            uploads = [u for u in res.uploads if u.object_name == full and u.upload_id]
            if not uploads:
                return None, {}
            chosen = max(uploads, key=lambda u: u.initiated_time or dt.datetime.min.replace(tzinfo=dt.UTC))
            upload_id = str(chosen.upload_id)
            parts: dict[int, Part] = {}
            marker: str | None = None
            while True:
                lp = self.client._list_parts(self.bucket, full, upload_id, part_number_marker=marker)
                parts.update({p.part_number: p for p in lp.parts})
                if not lp.is_truncated or not lp.next_part_number_marker:
                    return upload_id, parts
                marker = lp.next_part_number_marker

        return self._call(f"look for an unfinished upload of {full}", go)

    def _put_multipart(self, key: str, path: Path, sha256: str, size: int, content_type: str,
                       progress: Progress | None, identity: dict[str, int] | None) -> Transfer:
        full = self._key(key)
        upload_id, present = self._find_upload(full)
        if upload_id is None:
            meta: dict[str, str | list[str] | tuple[str]] = {"Content-Type": content_type,
                                                             "x-amz-meta-sha256": sha256}
            upload_id = self._call(f"start upload of {key}", lambda: self.client._create_multipart_upload(
                self.bucket, full, dict(meta)))
        elif present:
            log.info("store %s: resuming the upload of %s (%d parts already there)", self.name, key,
                     len(present))
        part_size = int(self.cfg.part_size)
        count = max(1, math.ceil(size / part_size))
        h = hashlib.sha256()
        etags: list[str] = [""] * count
        sent = 0
        sent_lock = threading.Lock()
        slots = threading.BoundedSemaphore(self.cfg.parallel + 1)  # parts held in memory at once
        uid = upload_id

        def upload(n: int, data: bytes) -> None:
            nonlocal sent

            def go() -> None:
                # No Content-MD5 of ours: the SDK already hashes the body for the request (see above).
                etags[n - 1] = self.client._upload_part(self.bucket, full, data, None, uid, n).strip('"')

            try:
                self._call(f"upload part {n}/{count} of {key}", go)
                with sent_lock:
                    sent += len(data)
                if progress:
                    progress(len(data))
            finally:
                slots.release()

        futures: list[Future[None]] = []
        total = 0
        pool = ThreadPoolExecutor(max_workers=self.cfg.parallel, thread_name_prefix=f"s3-{self.name}")
        try:
            with open(path, "rb") as f:
                for n in range(1, count + 1):
                    data = f.read(part_size)
                    total += len(data)
                    if identity is None:
                        h.update(data)
                    old = present.get(n)
                    if old is not None and old.size == len(data):
                        md5_hex = _md5_b64(data)[0]
                        if old.etag.strip('"') == md5_hex:
                            etags[n - 1] = md5_hex
                            if progress:
                                progress(len(data))  # already on the server from an earlier attempt
                            continue
                    slots.acquire()
                    failed = next((x for x in futures if x.done() and x.exception()), None)
                    if failed is not None:
                        slots.release()
                        failed.result()  # raises: stop reading, keep the upload for a resume
                    futures.append(pool.submit(upload, n, data))
                total += len(f.read(1))  # a file that grew since its manifest
            for x in futures:
                x.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        changed = identity is not None and file_identity(path) != identity  # written to while uploading
        if total != size or changed or (identity is None and h.hexdigest() != sha256):
            with contextlib.suppress(ImageFactoryError):
                self._call("abort upload",
                           lambda: self.client._abort_multipart_upload(self.bucket, full, uid))
            if changed:
                raise BuildError(f"{path}: changed while it was being uploaded (size, inode or mtime); "
                                 "the upload was aborted", hint="the build output changed after it was "
                                 "built; rebuild it")
            _check_content(path, total, h.hexdigest(), size, sha256)
        parts = [Part(n, etags[n - 1]) for n in range(1, count + 1)]
        expected_etag = _multipart_etag(etags)

        def complete() -> None:
            try:
                self.client._complete_multipart_upload(self.bucket, full, uid, parts)
            except S3Error as e:
                # A retried complete whose first attempt succeeded, or another publisher of the
                # same blob completed it: the verification below decides.
                if e.code != "NoSuchUpload":
                    raise

        self._call(f"complete upload of {key}", complete)
        info = self.stat(key)
        # An ETag that is not an MD5 (AWS SSE-KMS, some gateways) proves nothing: size only then.
        if info is None or info.size != size or (expected_etag and _is_md5_etag(info.etag)
                                                  and info.etag != expected_etag):
            raise BuildError(f"store {self.describe()}: {key} failed verification after upload "
                             f"(size {info.size if info else 'missing'}, expected {size}; ETag "
                             f"{info.etag if info else '-'}, expected {expected_etag})",
                             hint="publish again; the blob is uploaded afresh")
        return Transfer(key, size, sent, False)

    def _stream(self, key: str, offset: int, sink: Callable[[bytes], None]) -> int:
        """Write the object from `offset` to `sink`; returns the bytes written (no retry)."""
        r = self.client.get_object(self.bucket, self._key(key), offset=offset)
        n = 0
        try:
            for chunk in r.stream(CHUNK):
                sink(chunk)
                n += len(chunk)
        finally:
            r.close()
            r.release_conn()
        return n

    def get_file(self, key: str, part: Path, *, size: int, progress: Progress | None = None) -> None:
        def go() -> None:
            with open(part, "ab") as out:
                done = out.tell()
                if done > size:
                    out.truncate(0)
                    done = 0
                if done == size:
                    return

                def sink(chunk: bytes) -> None:
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))

                try:
                    self._stream(key, done, sink)
                except S3Error as e:
                    if e.code == "NoSuchKey":
                        raise NotFound(f"store {self.describe()}: {key} is missing") from None
                    raise
                if out.tell() < size:  # a short body: resume from here on the next attempt
                    raise urllib3.exceptions.ProtocolError(f"short read ({out.tell()} of {size} bytes)")

        self._call(f"download {key}", go)

    def digest(self, key: str, progress: Progress | None = None) -> str:
        h = hashlib.sha256()
        done = 0

        def go() -> None:
            nonlocal done

            def sink(chunk: bytes) -> None:
                nonlocal done
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(len(chunk))

            try:
                self._stream(key, done, sink)  # a retry continues where the last one stopped
            except S3Error as e:
                if e.code == "InvalidRange" and done:
                    return  # the failure came after the last byte
                if e.code == "NoSuchKey":
                    raise NotFound(f"store {self.describe()}: {key} is missing") from None
                raise

        self._call(f"read {key}", go)
        return h.hexdigest()

    # --- the catalogue lock -------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, what: str) -> Iterator[None]:
        token = uuid.uuid4().hex
        body = json.dumps({"owner": token, "host": socket.gethostname(), "pid": os.getpid(),
                           "what": what, "ttl": LOCK_TTL}).encode()
        self._acquire(what, token, body)
        try:
            yield
        finally:
            self._release(what, token)

    def _release(self, what: str, token: str) -> None:
        """Delete the lease if it is still ours. Read first, then a conditional DELETE on the ETag
        just read: Ceph RGW 16 ignores If-Match on DELETE (a stale ETag deletes anyway) and AWS S3
        honoured it only from 2024, so the owner check is what keeps us from deleting a lease
        that someone took over after ours expired; If-Match narrows the window where it works."""
        expired = f"store {self.name}: the catalogue lock expired while {what} held it"
        try:
            lease = self._lease()
            if lease is None or lease[0].get("owner") != token:
                log.warning("%s; %s", expired, "someone else holds it now" if lease else "it is gone")
                return
            self._call("release the catalogue lock", lambda: self._delete_if(LOCK_KEY, lease[1]))
        except (ImageFactoryError, PreconditionFailed):
            log.warning(expired)

    def _delete_if(self, key: str, etag: str) -> None:
        def go() -> None:
            try:
                self.client._execute("DELETE", self.bucket, self._key(key),
                                     headers={"If-Match": self._if_match(etag)})
            except S3Error as e:
                if e.code in ("PreconditionFailed", "NoSuchKey"):
                    raise PreconditionFailed(key) from None
                raise

        self._conditional(key, etag, go)

    def _acquire(self, what: str, token: str, body: bytes) -> str:
        deadline = time.monotonic() + LOCK_WAIT
        pause = 0.05
        holder: dict[str, Any] = {}
        while True:
            try:
                etag = self.put_bytes(LOCK_KEY, body, if_none_match=True)
            except PreconditionFailed:
                etag = ""
            if not etag:
                lease = self._lease()
                if lease is None:
                    continue  # released in between
                holder, lease_etag, age = lease
                if holder.get("owner") == token:
                    etag = lease_etag  # our own create, whose response was lost and retried
                elif age > float(holder.get("ttl", LOCK_TTL)):
                    log.warning("store %s: taking over a catalogue lock %.0f s old (%s pid %s)",
                                self.name, age, holder.get("host"), holder.get("pid"))
                    with contextlib.suppress(PreconditionFailed):
                        etag = self.put_bytes(LOCK_KEY, body, if_match=lease_etag)
            if etag:
                lease = self._lease()
                if lease is not None and lease[0].get("owner") == token:
                    return lease[1]
            if time.monotonic() > deadline:
                raise BuildError(f"store {self.describe()}: {what}: the catalogue lock is held by "
                                 f"{holder.get('host')} pid {holder.get('pid')} ({holder.get('what')})",
                                 hint=f"wait for it; a lock expires {LOCK_TTL:.0f} s after it was taken")
            time.sleep(pause)
            pause = min(pause * 1.5, 2.0)

    def _lease(self) -> tuple[dict[str, Any], str, float] | None:
        """(holder, etag, age in seconds by the server's clock) of the lock, None if free."""
        def go() -> tuple[dict[str, Any], str, float] | None:
            try:
                r = self.client.get_object(self.bucket, self._key(LOCK_KEY))
            except S3Error as e:
                if e.code == "NoSuchKey":
                    return None
                raise
            try:
                data = r.read()
                etag = str(r.headers.get("ETag", "")).strip('"')
                age = _age(r.headers.get("Last-Modified"), r.headers.get("Date"))
            finally:
                r.close()
                r.release_conn()
            try:
                holder = json.loads(data)
            except ValueError:
                holder = {}
            return (holder if isinstance(holder, dict) else {}), etag, age

        return self._call("read the catalogue lock", go)


def _age(modified: str | None, now: str | None) -> float:
    try:
        m = email.utils.parsedate_to_datetime(str(modified))
        n = email.utils.parsedate_to_datetime(str(now)) if now else dt.datetime.now(dt.UTC)
    except (TypeError, ValueError):
        return 0.0  # unknown age: never break the lock on a guess
    return (n - m).total_seconds()


def _multipart_etag(etags: list[str]) -> str:
    """The ETag S3 gives an object completed from these parts (MD5 of their binary MD5s), or ""
    when a part's ETag is not an MD5 (then only the size can be checked)."""
    if not all(_is_md5_etag(e) for e in etags):
        return ""
    joined = b"".join(bytes.fromhex(e) for e in etags)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(etags)}"


def _is_md5_etag(etag: str) -> bool:
    """A plain MD5 (a part, a single PUT) or MD5-N (a multipart object)."""
    head, dash, count = etag.partition("-")
    return len(head) == 32 and all(c in "0123456789abcdef" for c in head) and (not dash or count.isdigit())


def _check_content(path: Path, size: int, sha256: str, want_size: int, want_sha256: str) -> None:
    if size != want_size or sha256 != want_sha256:
        raise BuildError(f"{path}: does not match its manifest (size {size}, sha256 {sha256}; expected "
                         f"{want_size}, {want_sha256})",
                         hint="the build output changed after it was built; rebuild it")


def _short(e: BaseException | None) -> str:
    if e is None:
        return "?"
    if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
        e = e.reason
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]
