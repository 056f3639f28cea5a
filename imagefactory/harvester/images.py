"""Putting a published image into Harvester as a VirtualMachineImage.

Only verified images go in: the catalogue's `verify_for_consumer` checks the manifest signature and
refuses revoked versions before anything is sent. Two ways in:

- `download` (default for S3 stores): the image object carries a presigned URL of the blob and
  Harvester (Longhorn) fetches it from inside the cluster, so the URL must be reachable from there.
- `upload`: the object is created with `sourceType: upload`; once Harvester reports `Initialized`
  the file is streamed as `multipart/form-data` (part `chunk`) to the upload action. Longhorn
  writes with direct I/O, so the size must be a multiple of 512: a shorter file is padded with
  zeros (harmless after a qcow2's last cluster) and the checksum is of the padded bytes.

`checksum` is always the SHA-512 Longhorn verifies. Labels link the object back to the catalogue
(image name, version, a digest prefix: label values stop at 63 characters; the full digests are
annotations). The same digest already imported is reused; a different digest under the same name
is refused unless `replace`. The StorageClass a VM disk must use is read from
`status.storageClassName`, never derived: its naming changed in Harvester v1.8.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import secrets
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ..catalogue.catalogue import PublishedImage, pull_cached, verify_for_consumer
from ..catalogue.manifest import Manifest
from ..catalogue.publish import ProgressFactory
from ..catalogue.s3 import S3Store
from ..catalogue.stores import BlobStore, LocalDirStore
from ..catalogue.trust import Anchor
from ..errors import BuildError, UserError
from .api import IMAGES, ApiError, HarvesterApi
from .goproxy import ProxyConfig

log = logging.getLogger(__name__)

SECTOR = 512
STORAGE_CLASS_ANNOTATION = "harvesterhci.io/storageClassName"
LABEL = "imagefactory.io"
Mode = Literal["download", "upload"]
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class UploadResult:
    name: str
    namespace: str
    display_name: str
    ref: str
    sha256: str
    source: str
    reused: bool
    storage_class: str
    virtual_size: int | None
    size: int | None
    seconds: float
    firmware: str | None = None  # the manifest's boot.firmware (None: an older manifest, BIOS)
    secure_boot: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def redact(url: str) -> str:
    """A URL without its query string: a presigned URL's signature and credential never reach a
    log or an error."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(query="", fragment=""))


_URL_QUERY = re.compile(r"(https?://[^\s?#\"']+)\?[^\s\"']*")


def redact_urls(text: str) -> str:
    """`text` with every URL's query string cut: Harvester's condition messages quote the URL it
    failed on ("got 403 status code from <url>"), presigned signature and credential included."""
    return _URL_QUERY.sub(r"\1", text)


def download_problem(url: str, size: int, cafile: str | None = None, timeout: float = 15) -> str | None:
    """Why Harvester would fail to download `url`, as far as this host can tell, or None.

    Harvester checks a download URL with an HTTP HEAD before it creates the backing image and
    fails the image on any status >= 400 (pkg/image/common CheckURLAndUpdate); AWS S3, MinIO and
    Ceph RGW answer 403 to a HEAD on a URL presigned for GET (the signature covers the method).
    Longhorn writes backing images with direct I/O: a size that is not a multiple of 512 fails
    after the whole download. This host's view of the URL is not the cluster's (its network, its
    proxy, its CA store: a private CA must also be in Harvester's `additional-ca` setting), so a
    URL that passes here can still fail there - the import's conditions say so - but one that
    fails here would fail there too."""
    if size % SECTOR:
        return f"{size} bytes is not a multiple of {SECTOR} (Longhorn's direct I/O); an upload is padded"
    context = ssl.create_default_context(cafile=cafile)  # verification on, as Harvester's Go client
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout,
                                    context=context) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except ssl.SSLCertVerificationError as e:
        return f"TLS verification failed ({e.verify_message}); Harvester verifies too (its additional-ca)"
    except (urllib.error.URLError, OSError) as e:
        # the cluster may reach what this host cannot (an in-cluster store): not a verdict
        log.warning("cannot check %s from this host (%s): Harvester will", redact(url),
                    getattr(e, "reason", e))
        return None
    if status >= 400:
        return (f"HEAD answered {status} (Harvester checks the URL with HEAD first; S3 servers answer 403 "
                "to a HEAD on a URL presigned for GET)")
    if cafile and url.startswith("https:"):
        log.warning("the store's certificate is signed by %s: Harvester downloads only if that CA is "
                    "in its additional-ca setting", cafile)
    return None


def _failures(obj: dict[str, Any]) -> int:
    """`status.failed`: Harvester's count of failed attempts at this image."""
    return int((obj.get("status") or {}).get("failed") or 0)


def object_name(m: Manifest) -> str:
    """`<name>-<version>` as a DNS label (lower case, '-' for anything else, at most 63)."""
    raw = re.sub(r"[^a-z0-9-]+", "-", f"{m.name}-{m.version}".lower()).strip("-")
    if len(raw) > 63:
        raw = raw[:54].rstrip("-") + "-" + m.image.sha256[:8]
    return raw


def display_name(m: Manifest) -> str:
    """A valid label value (Harvester copies displayName into a label since v1.7.3)."""
    raw = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{m.name}-{m.version}").strip("-_.")
    if len(raw) > 63:
        raw = raw[:54].rstrip("-_.") + "-" + m.image.sha256[:8]
    assert _LABEL_VALUE.match(raw), raw
    return raw


def _label_value(text: str) -> str:
    v = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")
    return v if _LABEL_VALUE.match(v) else ""


def catalogue_labels(m: Manifest) -> dict[str, str]:
    """Selectable links back to the catalogue; the digest label is the first 63 hex digits."""
    return {f"{LABEL}/image": _label_value(m.name), f"{LABEL}/version": _label_value(m.version),
            f"{LABEL}/digest": m.image.sha256[:63]}


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def state(obj: dict[str, Any]) -> tuple[str, str]:
    """(`imported` | `failed` | `importing` | `initializing`, message) as terraform/the UI define it."""
    c = conditions(obj)

    def is_(t: str, s: str) -> bool:
        return c.get(t, {}).get("status") == s

    if is_("RetryLimitExceeded", "True") or is_("Imported", "False") or is_("Initialized", "False") \
            or is_("BackingImageMissing", "True"):
        for t in ("Imported", "RetryLimitExceeded", "Initialized", "BackingImageMissing"):
            msg = c.get(t, {}).get("message")
            if msg and c[t].get("status") in ("False", "True") \
                    and not (t == "Initialized" and is_(t, "True")):
                return "failed", f"{t}: {redact_urls(msg)}"
        return "failed", "failed without a message"
    if is_("Imported", "True"):
        return "imported", ""
    if is_("Initialized", "True"):
        return "importing", redact_urls(c.get("Imported", {}).get("message", ""))
    retry = c.get("RetryLimitExceeded", {})
    return "initializing", redact_urls(retry.get("message", ""))


def verified_sha512(path: Path, m: Manifest, padded: int) -> str:
    """The SHA-512 Harvester checks: of the bytes as they will be sent (zero-padded to `padded`),
    computed only from bytes whose SHA-256 matches the signed manifest. A local copy (the local
    store's blob, a cached pull accepted on its name and size) that differs from what was signed
    is refused before anything is created in Harvester."""
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h256.update(chunk)
            h512.update(chunk)
    if h256.hexdigest() != m.image.sha256:
        raise BuildError(f"{path}: sha256 {h256.hexdigest()} is not the signed manifest's {m.image.sha256}",
                         hint="the local copy changed since it was published or pulled; remove it "
                         "and upload again (it is pulled and verified afresh)")
    if padded == m.image.size and h512.hexdigest() != m.image.sha512:
        raise BuildError(f"{path}: sha512 is not the signed manifest's")
    h512.update(b"\0" * (padded - m.image.size))
    return h512.hexdigest()


def multipart(path: Path, size: int, padded: int, tick: Callable[[int], None] | None = None,
              block: int = 1024 * 1024, sha256: str | None = None) -> tuple[Iterator[bytes], int, str]:
    """A streamed multipart/form-data body with one file part `chunk`: (body, length, content type).
    Memory stays at one block whatever the image size. With `sha256`, the bytes read are hashed
    as they go and the body fails before its last bytes (the request is aborted, Harvester never
    gets a complete upload) if they are not those bytes."""
    boundary = "imagefactory-" + secrets.token_hex(12)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"chunk\"; filename=\"{path.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        h = hashlib.sha256()
        with open(path, "rb") as f:
            pending = b""
            while chunk := f.read(block):
                sent += len(chunk)
                if sent > size:
                    raise BuildError(f"{path}: grew while it was being uploaded")
                h.update(chunk)
                # one block held back: the last image bytes go out only after the hash matched
                if pending:
                    yield pending
                    if tick:
                        tick(len(pending))
                pending = chunk
        if sent != size:
            raise BuildError(f"{path}: {sent} bytes read, expected {size}")
        if sha256 is not None and h.hexdigest() != sha256:
            raise BuildError(f"{path}: changed while it was being uploaded (sha256 {h.hexdigest()}, "
                             f"signed {sha256}); the upload was aborted")
        if pending:
            yield pending
            if tick:
                tick(len(pending))
        if padded > size:
            yield b"\0" * (padded - size)
        yield tail

    return body(), len(head) + padded + len(tail), f"multipart/form-data; boundary={boundary}"


class ImageUploader:
    def __init__(self, api: HarvesterApi, *, poll: float = 2.0, timeout: float = 4 * 3600,
                 progress: ProgressFactory | None = None, cache: Path | None = None,
                 storage_class: str | None = None) -> None:
        self.api = api
        self.poll = poll
        self.timeout = timeout
        self.progress = progress
        self.cache = cache
        self.storage_class = storage_class

    # --- the whole operation --------------------------------------------------------------------

    def upload(self, store: BlobStore, ref: str, anchor: Anchor, *, mode: Mode | None = None,
               replace: bool = False, url_expiry: dt.timedelta = dt.timedelta(hours=12)) -> UploadResult:
        start = time.monotonic()
        img = verify_for_consumer(store, ref, anchor)  # TUF-current, signature, revocation, blob present
        m = img.manifest
        name = object_name(m)
        chosen = mode or ("upload" if isinstance(store, LocalDirStore) and not store.url else "download")
        existing = self.api.get(IMAGES, name)
        if existing is not None:
            reused = self._existing(existing, m, replace)
            if reused is not None:
                return self._result(reused, m, chosen, True, start)
        if self.storage_class and self.api.storage_class(self.storage_class) is None:
            raise UserError(f"harvester.image_storage_class: StorageClass {self.storage_class} "
                            "does not exist",
                            hint="create it in Harvester (its Longhorn parameters are what images copy), "
                                 "or unset it to use the default StorageClass")
        url = self._download_url(store, m, mode, url_expiry) if chosen == "download" else None
        mode = "download" if url is not None else "upload"
        log.info("creating image %s/%s from %s (%s)", self.api.namespace, name, m.ref, mode)
        obj = self._download(img, name, url) if url is not None else self._upload(img, store, anchor, name)
        return self._result(obj, m, mode, False, start)

    def _download_url(self, store: BlobStore, m: Manifest, asked: Mode | None,
                      expiry: dt.timedelta) -> str | None:
        """The URL Harvester can download (the store's `download_url`: plain with `anonymous_blobs`,
        else presigned), or None to upload instead (the default when `download_problem` finds one;
        an error when the download was asked for)."""
        url = store.download_url(m.image.key, expiry)
        ca = store.cfg.ca_bundle if isinstance(store, S3Store) else None
        problem = download_problem(url, m.image.size, ca)
        if problem and asked == "download":
            raise UserError(f"Harvester could not download {redact(url)}: {problem}",
                            hint="use --upload (the image goes through this host), or let the store "
                                 "answer HEAD on the blob: `anonymous_blobs: true` in the S3 store's "
                                 "settings (a bucket policy for the content-addressed blobs/ prefix "
                                 "only; Harvester checks the SHA-512)")
        if problem:
            log.warning("Harvester could not download %s: %s; uploading instead", redact(url), problem)
            return None
        self._warn_proxied(url)
        return url

    def _warn_proxied(self, url: str) -> None:
        """Harvester's controllers fetch with the proxy environment of its `http-proxy` setting, by
        Go's rules (`goproxy`): a store on the site network that is not in its `noProxy` is asked
        for through the proxy, which often cannot reach it (Harvester issue #2436)."""
        raw = self.api.setting("http-proxy")
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            value = None
        proxy = ProxyConfig.from_setting(value if isinstance(value, dict) else None).proxy_for(url)
        if proxy:
            host = urllib.parse.urlsplit(url).hostname
            log.warning("Harvester fetches %s through its http-proxy %s (%s is not in its noProxy); if "
                        "the store is on the site network, add it to noProxy in Harvester's http-proxy "
                        "setting", redact(url), redact(proxy), host)

    def _existing(self, obj: dict[str, Any], m: Manifest, replace: bool) -> dict[str, Any] | None:
        """The object to reuse, or None after clearing the way for a new one."""
        name = obj["metadata"]["name"]
        have = (obj["metadata"].get("annotations") or {}).get(f"{LABEL}/sha256")
        if have != m.image.sha256:
            if not replace:
                raise UserError(
                    f"image {self.api.namespace}/{name} already exists with another image "
                    f"(sha256 {have or 'unknown: not made by imagefactory'}, this is {m.image.sha256})",
                    hint="pass --replace to delete it first (Harvester refuses while VMs use it)")
            log.info("replacing %s/%s (sha256 %s)", self.api.namespace, name, have)
            self.delete(name)
            return None
        what, msg = state(obj)
        if what == "imported":
            log.info("%s/%s already imported with this digest: reused", self.api.namespace, name)
            return obj
        if what == "failed" or obj.get("spec", {}).get("sourceType") == "upload":
            # A failed import never recovers by itself (RetryLimitExceeded makes the controller
            # ignore it), and an unfinished upload cannot be continued by another process.
            log.info("%s/%s: earlier attempt %s (%s): starting again", self.api.namespace, name,
                     "failed" if what == "failed" else "unfinished", msg)
            self.delete(name)
            return None
        return self.wait_imported(name)  # a download still in progress: wait for it

    def delete(self, name: str) -> None:
        try:
            if not self.api.delete(IMAGES, name):
                return
        except ApiError as e:
            if e.status in (400, 422):  # Harvester's webhook: disks, templates or backups use it
                raise ApiError(e.message, e.status, e.reason, hint="delete the VMs or clusters using "
                               "it first ('imagefactory cluster delete')") from None
            raise
        deadline = time.monotonic() + 300
        while self.api.get(IMAGES, name) is not None:
            if time.monotonic() > deadline:
                raise BuildError(f"image {self.api.namespace}/{name} still exists 300 s after deletion")
            time.sleep(self.poll)

    # --- download source ------------------------------------------------------------------------

    def _download(self, img: PublishedImage, name: str, url: str) -> dict[str, Any]:
        m = img.manifest
        self.api.create(IMAGES, self._body(m, name, "download", m.image.sha512, url=url))
        return self.wait_imported(name)

    # --- upload source --------------------------------------------------------------------------

    def _local_file(self, img: PublishedImage, store: BlobStore, anchor: Anchor) -> Path:
        if isinstance(store, LocalDirStore):
            return store.path(img.manifest.image.key)
        if self.cache is None:
            raise UserError("uploading from a remote store needs a cache directory")
        return pull_cached(store, img.ref, anchor, self.cache, self.progress)[1]

    def upload_file(self, m: Manifest, path: Path, *, replace: bool = False) -> UploadResult:
        """Upload a local file that `m.image` describes (a disk a site reassembled and verified:
        `SiteStore.uploadable` gives the manifest with the disk as its image)."""
        start = time.monotonic()
        name = object_name(m)
        existing = self.api.get(IMAGES, name)
        if existing is not None:
            reused = self._existing(existing, m, replace)
            if reused is not None:
                return self._result(reused, m, "upload", True, start)
        if self.storage_class and self.api.storage_class(self.storage_class) is None:
            raise UserError(f"harvester.image_storage_class: StorageClass {self.storage_class} "
                            "does not exist", hint="create it in Harvester, or unset it")
        log.info("creating image %s/%s from %s (upload of %s)", self.api.namespace, name, m.ref, path)
        return self._result(self._upload_path(m, path, name), m, "upload", False, start)

    def _upload(self, img: PublishedImage, store: BlobStore, anchor: Anchor,
                name: str) -> dict[str, Any]:
        return self._upload_path(img.manifest, self._local_file(img, store, anchor), name)

    def _upload_path(self, m: Manifest, path: Path, name: str) -> dict[str, Any]:
        size = path.stat().st_size
        if size != m.image.size:
            raise BuildError(f"{path}: {size} bytes, the signed manifest says {m.image.size}")
        padded = -(-size // SECTOR) * SECTOR
        checksum = verified_sha512(path, m, padded)
        if padded != size:
            log.info("%s: %d bytes, padded with %d zero bytes to a multiple of %d", path.name, size,
                     padded - size, SECTOR)
        self.api.create(IMAGES, self._body(m, name, "upload", checksum))
        ready = self._wait(name, lambda obj: state(obj)[0] != "initializing", "Initialized")
        failures = _failures(ready)
        # Longhorn's data source gives the upload about 60 s to begin: start at once, and retry
        # the two answers that mean "not ready yet" as terraform's provider does.
        for attempt in range(1, 6):
            tick = self.progress(f"upload {m.ref}", padded) if self.progress else None
            body, length, ctype = multipart(path, size, padded, tick, sha256=m.image.sha256)
            try:
                self.api.upload(name, padded, body, length, ctype)
                break
            except ApiError as e:
                if e.status == 413:
                    raise self._too_large(name, padded) from None
                retry = ("already exists" in e.message or "timeout waiting" in e.message) and attempt < 5
                if not retry:
                    failed = self.api.get(IMAGES, name)
                    detail = state(failed)[1] if failed else ""
                    raise BuildError(f"{e.message}{f' ({detail})' if detail else ''}",
                                     hint="see the image's conditions in Harvester; run the upload again"
                                     ) from None
                log.warning("%s; retrying the upload in 2 s (%d/5)", e.message, attempt)
                time.sleep(2)
        return self.wait_imported(name, failures_before=failures)

    def _too_large(self, name: str, size: int) -> UserError:
        """A 413 comes from a proxy in front of Harvester, not from Harvester: typically Rancher's
        ingress when the kubeconfig points at `https://<rancher>/k8s/clusters/<id>` (RKE2's
        ingress-nginx allows 1 MiB bodies by default; Harvester's docs: "HTTP 413 Error in Rancher
        Multi-Cluster Management")."""
        server = self.api.target.server
        via = ("Rancher's proxy (the kubeconfig points at its /k8s/clusters/ path)"
               if "/k8s/clusters/" in server else "a proxy in front of Harvester")
        self.delete(name)  # an upload image nobody can fill: not left behind half-made
        return UserError(f"upload of {name} ({size} bytes) to {server}: refused by {via} as too large "
                         "(HTTP 413)",
                         hint="use a kubeconfig for Harvester itself (its VIP, from Harvester's support "
                              "page), raise the proxy's body size limit, or let Harvester download the "
                              "image (an S3 store with anonymous_blobs: true)")

    # --- object and waiting ---------------------------------------------------------------------

    def _body(self, m: Manifest, name: str, source: Mode, checksum: str,
              url: str | None = None) -> dict[str, Any]:
        description = (f"{m.name} {m.version} from the imagefactory catalogue: {m.os.family} {m.os.release}"
                       + (f", RKE2 {m.rke2.get('version')}" if m.rke2 else "")
                       + (f", Zarf {m.zarf.get('version')}" if m.zarf else ""))
        spec: dict[str, Any] = {"displayName": display_name(m), "sourceType": source, "checksum": checksum,
                                "description": description, "retry": 3}
        if url:
            spec["url"] = url
        if self.api.version() >= (1, 5, 0):
            spec["backend"] = "backingimage"  # only Longhorn images take the `chunk` upload
        return {
            "apiVersion": "harvesterhci.io/v1beta1", "kind": "VirtualMachineImage",
            "metadata": {
                "name": name, "namespace": self.api.namespace,
                "labels": {**catalogue_labels(m), "harvesterhci.io/image-type": "raw_qcow2",
                           "harvesterhci.io/os-type": m.os.family},
                "annotations": {"field.cattle.io/description": description, f"{LABEL}/ref": m.ref,
                                f"{LABEL}/sha256": m.image.sha256, f"{LABEL}/sha512": m.image.sha512,
                                # Harvester's mutating webhook (PatchImageSCParams) overwrites any
                                # storageClassParameters we send with the allow-listed parameters
                                # of this template StorageClass (else the default one's)
                                **({STORAGE_CLASS_ANNOTATION: self.storage_class} if self.storage_class
                                   else {})},
            },
            "spec": spec,
        }

    def wait_imported(self, name: str, failures_before: int | None = None) -> dict[str, Any]:
        """Wait for Imported. After an upload (`failures_before`: the image's failure count when
        the POST started) a new failure ends the wait at once: Longhorn checks the SHA-512 only
        after the POST has answered 200 (backing-image-manager's postProcessSyncFile), and the
        image Harvester then re-initializes waits for an upload nobody sends - retrying until its
        limit, minutes later, or until our timeout."""
        tick = self.progress(f"import {name}", 100) if self.progress else None
        shown = [0]

        def done(obj: dict[str, Any]) -> bool:
            pct = int((obj.get("status") or {}).get("progress") or 0)
            if tick and pct > shown[0]:
                tick(pct - shown[0])
                shown[0] = pct
            if failures_before is not None and _failures(obj) > failures_before \
                    and state(obj)[0] != "imported":
                why = redact_urls(conditions(obj).get("RetryLimitExceeded", {}).get("message", "")) \
                    or state(obj)[1]
                raise BuildError(f"image {self.api.namespace}/{name}: Harvester refused the uploaded bytes "
                                 f"after the upload returned: {why}",
                                 hint="the bytes Longhorn stored are not those this host hashed and sent "
                                      "(changed on the way, or on Harvester's disk); run the upload again "
                                      "(the failed image is replaced)")
            return state(obj)[0] == "imported"

        return self._wait(name, done, "Imported")

    def _wait(self, name: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        last = ""
        while True:
            obj = self.api.get(IMAGES, name)
            if obj is None:
                raise BuildError(f"image {self.api.namespace}/{name} disappeared while waiting for {what}")
            if done(obj):
                return obj
            what_now, msg = state(obj)
            if what_now == "failed":
                raise BuildError(f"image {self.api.namespace}/{name} failed: {msg}",
                                 hint="fix the cause, then run the upload again (a failed image is replaced)")
            if msg and msg != last:
                log.info("%s: %s", name, msg)
                last = msg
            if time.monotonic() > deadline:
                raise BuildError(f"image {self.api.namespace}/{name}: not {what} after {self.timeout:.0f} s "
                                 f"({what_now}{': ' + msg if msg else ''})")
            time.sleep(self.poll)

    def _result(self, obj: dict[str, Any], m: Manifest, mode: str, reused: bool,
                start: float) -> UploadResult:
        status = obj.get("status") or {}
        sc = status.get("storageClassName")
        if not sc:
            raise BuildError(f"image {self.api.namespace}/{obj['metadata']['name']} is imported but has no "
                             "status.storageClassName")
        return UploadResult(
            name=obj["metadata"]["name"], namespace=self.api.namespace,
            display_name=obj.get("spec", {}).get("displayName", ""), ref=m.ref, sha256=m.image.sha256,
            source=obj.get("spec", {}).get("sourceType", mode), reused=reused, storage_class=sc,
            virtual_size=status.get("virtualSize"), size=status.get("size"),
            seconds=round(time.monotonic() - start, 2),
            firmware=(m.boot or {}).get("firmware"), secure_boot=bool((m.boot or {}).get("secure_boot")))
