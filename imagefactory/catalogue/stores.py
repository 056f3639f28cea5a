"""Where a catalogue lives: a small `BlobStore` protocol and the local-directory implementation.

A store is a flat key space (`blobs/sha256/<hex>`, `images/<name>/<version>/manifest.json`,
`index.json`, ...). The protocol is what the catalogue needs and no more:

- `put_file` uploads a content-addressed blob: skipped when the blob is already there with the
  right size and sha256 (re-publishing uploads nothing), resumed when a previous attempt left
  part of it behind, and verified (size and checksum) before it returns;
- `get_file` downloads into a partial file and resumes it (HTTP Range for S3);
- `put_bytes`/`get_bytes` for small documents, with conditional writes (`if_none_match`: create
  only; `if_match`: replace only that version) - the compare-and-swap the index update uses;
- `lock` serialises catalogue mutations (flock here, a lease object on S3);
- `stat`, `list`, `delete`, `digest` (sha256 of the stored bytes), `presign`, and `download_url`
  (what another system such as Harvester fetches a blob from).

`LocalDirStore` is the embedded default (`local`, `WORKDIR/catalogue`): a directory on a local
disk or a share. Blobs are copied through a hidden partial file, hashed while copied, and renamed
into place only when the sha256 matches, so a blob file that exists is complete and verified.
Etags of small documents are the sha256 of their content.

`open_store` turns configuration (imagefactory.yaml `stores`, environment variables) into a store;
credentials come only from the environment or a 0600 file (see `s3.credentials_for`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from ..config import STORE_NAME, LocalStoreConfig, S3StoreConfig, StoreConfig
from ..errors import BuildError, UserError
from ..fsutil import exclusive_lock

if TYPE_CHECKING:
    from ..config import FactoryConfig

Progress = Callable[[int], None]  # called with the number of bytes just transferred
CHUNK = 4 * 1024 * 1024
STORE_ENV = "IMAGEFACTORY_STORE"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: dt.datetime | None = None
    sha256: str | None = None  # recorded at upload (S3 metadata); None when unknown


@dataclass(frozen=True)
class Transfer:
    """What `put_file` did: bytes actually sent, and whether the blob was already complete."""

    key: str
    size: int
    sent: int
    skipped: bool


class NotFound(BuildError):
    """The key does not exist in the store."""


class PreconditionFailed(Exception):
    """A conditional write lost: the object exists (if_none_match) or changed (if_match)."""


class BlobStore(Protocol):
    name: str

    def describe(self) -> str: ...
    def prepare(self) -> None: ...
    def stat(self, key: str) -> ObjectInfo | None: ...
    def put_file(self, key: str, path: Path, *, sha256: str, size: int, content_type: str,
                 progress: Progress | None = None, identity: dict[str, int] | None = None) -> Transfer: ...
    def get_file(self, key: str, part: Path, *, size: int, progress: Progress | None = None) -> None: ...
    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/json",
                  if_match: str | None = None, if_none_match: bool = False) -> str: ...
    def get_bytes(self, key: str) -> tuple[bytes, str]: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def digest(self, key: str, progress: Progress | None = None) -> str: ...
    def presign(self, key: str, expires: dt.timedelta) -> str: ...
    def download_url(self, key: str, expires: dt.timedelta) -> str: ...
    def lock(self, what: str) -> contextlib.AbstractContextManager[None]: ...


def check_key(key: str) -> str:
    """Keys are relative, slash-separated, without `.`/`..` parts (they become paths locally)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise BuildError(f"invalid store key {key!r}")
    return key


class LocalDirStore:
    """The catalogue in a directory; see the module docstring."""

    def __init__(self, name: str, root: Path, url: str | None = None) -> None:
        self.name = name
        self.root = root
        self.url = url

    def __repr__(self) -> str:
        return f"LocalDirStore({self.name!r}, {str(self.root)!r})"

    def describe(self) -> str:
        return f"{self.name} ({self.root})"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file of `key` (consumers that need a local file, e.g. a Harvester upload)."""
        return self._path(key)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def stat(self, key: str) -> ObjectInfo | None:
        p = self._path(key)
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}",
                          dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))

    def put_file(self, key: str, path: Path, *, sha256: str, size: int, content_type: str,
                 progress: Progress | None = None, identity: dict[str, int] | None = None) -> Transfer:
        # `identity` is not used: a local copy is hashed as it is written (no second read to save)
        dest = self._path(key)
        if dest.is_file() and dest.stat().st_size == size:
            return Transfer(key, size, 0, True)  # renamed into place only after verification
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.partial")
        while True:
            with open(partial, "ab+") as out:
                # One writer per blob (two publishers can share a blob, e.g. an identical junit.xml);
                # the partial file itself is the lock, so a crash leaves nothing locked.
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)
                if dest.is_file() and dest.stat().st_size == size:
                    return Transfer(key, size, 0, True)
                try:
                    current = os.stat(partial).st_ino == os.fstat(out.fileno()).st_ino
                except FileNotFoundError:
                    current = False
                if not current:
                    continue  # another writer renamed or removed the file we opened: look again
                sent = self._fill(out, path, sha256, size, progress)
                partial.chmod(0o644)
                os.replace(partial, dest)
                return Transfer(key, size, sent, False)

    def _fill(self, out: BinaryIO, path: Path, sha256: str, size: int, progress: Progress | None) -> int:
        """Complete the partial file `out` from `path`, verifying size and sha256 of the whole."""
        h = hashlib.sha256()
        sent = 0
        with open(path, "rb") as src:
            # Resume: the bytes already copied are hashed again, not copied again.
            done = out.seek(0, os.SEEK_END)
            if done > size:
                out.truncate(0)
                done = 0
            out.seek(0)
            while out.tell() < done and (block := out.read(min(CHUNK, done - out.tell()))):
                h.update(block)
            src.seek(done)
            out.seek(done)
            while block := src.read(CHUNK):
                h.update(block)
                out.write(block)
                sent += len(block)
                if progress:
                    progress(len(block))
            out.flush()
            os.fsync(out.fileno())
            written = out.tell()
        if written != size or h.hexdigest() != sha256:
            os.unlink(out.name)
            raise BuildError(f"{path}: does not match its manifest (size {written}, sha256 "
                             f"{h.hexdigest()}; expected {size}, {sha256})",
                             hint="the build output changed after it was built; rebuild it")
        return sent

    def get_file(self, key: str, part: Path, *, size: int, progress: Progress | None = None) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"{self.describe()}: {key} is missing")
        with open(src, "rb") as f, open(part, "ab") as out:
            done = out.tell()
            if done > size:
                out.truncate(0)
                done = 0
            f.seek(done)
            while block := f.read(CHUNK):
                out.write(block)
                if progress:
                    progress(len(block))

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/json",
                  if_match: str | None = None, if_none_match: bool = False) -> str:
        p = self._path(key)
        with self._guard():
            if if_none_match or if_match is not None:
                try:
                    current: str | None = hashlib.sha256(p.read_bytes()).hexdigest()
                except FileNotFoundError:
                    current = None
                if (if_none_match and current is not None) or (if_match is not None and current != if_match):
                    raise PreconditionFailed(key)
            from ..fsutil import atomic_write

            atomic_write(p, data)
        return hashlib.sha256(data).hexdigest()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        # Conditional writes are atomic across processes too: a short flock of its own (the
        # catalogue lock may already be held by this process and flock is per open file).
        with exclusive_lock(self.root / ".cas.lock", "a catalogue write", wait=True):
            yield

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.describe()}: {key} not found") from None
        return data, hashlib.sha256(data).hexdigest()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return
        for p in sorted(base.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
                info = self.stat(rel)
                if info is not None:
                    yield info

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def digest(self, key: str, progress: Progress | None = None) -> str:
        h = hashlib.sha256()
        try:
            with open(self._path(key), "rb") as f:
                while block := f.read(CHUNK):
                    h.update(block)
                    if progress:
                        progress(len(block))
        except FileNotFoundError:
            raise NotFound(f"{self.describe()}: {key} is missing") from None
        return h.hexdigest()

    def presign(self, key: str, expires: dt.timedelta) -> str:
        if not self.url:
            raise UserError(f"store '{self.name}' is a directory ({self.root}) without a URL",
                            hint=f"set stores.{self.name}.url to where the directory is served, "
                                 "or use 'imagefactory images pull'")
        return f"{self.url.rstrip('/')}/{check_key(key)}"

    def download_url(self, key: str, expires: dt.timedelta) -> str:
        """The URL another system (Harvester) fetches `key` from: the served directory's."""
        return self.presign(key, expires)

    @contextlib.contextmanager
    def lock(self, what: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        # flock dies with its process: no stale lock after a crash, unlike a lock file.
        with exclusive_lock(self.root / ".lock", what, wait=True):
            yield


def store_configs(cfg: FactoryConfig, workdir: Path) -> dict[str, StoreConfig]:
    """Configured stores plus the implied ones: `local` (WORKDIR/catalogue) and `s3` when
    $IMAGEFACTORY_S3_ENDPOINT and $IMAGEFACTORY_S3_BUCKET are set (environment wins)."""
    embedded = LocalStoreConfig(type="local", path=str(workdir / "catalogue"))
    stores: dict[str, StoreConfig] = {"local": embedded}
    stores.update(cfg.stores)
    env = os.environ
    if env.get("IMAGEFACTORY_S3_ENDPOINT") or env.get("IMAGEFACTORY_S3_BUCKET"):
        base = stores.get("s3")
        fields: dict[str, object] = base.model_dump() if isinstance(base, S3StoreConfig) else {}
        fields["type"] = "s3"
        for var, key in (("ENDPOINT", "endpoint"), ("BUCKET", "bucket"), ("REGION", "region"),
                         ("PREFIX", "prefix"), ("CA_BUNDLE", "ca_bundle"), ("VERIFY_TLS", "verify_tls")):
            if (value := env.get(f"IMAGEFACTORY_S3_{var}")) is not None:
                fields[key] = value
        try:
            stores["s3"] = S3StoreConfig.model_validate(fields)
        except ValueError as e:
            raise UserError(f"$IMAGEFACTORY_S3_*: invalid store settings: {e}") from None
    return stores


def open_store(cfg: FactoryConfig, workdir: Path, name: str | None = None) -> BlobStore:
    """The store `name` (default: $IMAGEFACTORY_STORE, then `default_store`, then `local`)."""
    configs = store_configs(cfg, workdir)
    chosen = name or os.environ.get(STORE_ENV) or cfg.default_store or "local"
    if not STORE_NAME.match(chosen) or chosen not in configs:
        raise UserError(f"no store named '{chosen}'",
                        hint=f"stores: {', '.join(sorted(configs))} (imagefactory.yaml 'stores')")
    sc = configs[chosen]
    if isinstance(sc, LocalStoreConfig):
        return LocalDirStore(chosen, Path(sc.path), sc.url)
    from .s3 import S3Store, credentials_for

    return S3Store(chosen, sc, credentials_for(chosen, sc))
