"""Images as signed lists of content-defined chunks: what a site needs is the chunks it lacks.

A published image (qcow2, compressed inside) changes in nearly every byte when one package
changes; its *disk* does not. So the unit of delivery is the uncompressed disk (`qemu-img convert
-O raw`), cut by FastCDC (`pyfastcdc`, the FastCDC 2020 algorithm; cut points follow content, so
an insertion moves no boundary beyond it) into chunks of 16-256 KiB (64 KiB on average, casync's
default). Each chunk is stored once, zstd-compressed, under the sha256 of its *uncompressed* bytes
(`chunks/zstd/<sha256>`), beside the catalogue's blobs. An image's chunk list is a binary table
(32-byte sha256, size, compressed size per chunk; zstd-compressed; `chunk-tables/sha256/<hex>` of
the compressed table), and a small JSON index names the table by hash, the disk's size, sha256
and sha512, the chunker's parameters and the published image it comes from - signed with the
catalogue's manifest key (`chunked/<name>/<version>.json`). The index is the only thing trusted:
every table, chunk and reassembled disk is checked against it before anything becomes visible.

At a site the image is the reassembled raw disk (written sparse: all-zero chunks are holes),
verified against the signed sha256 and sha512 of the disk. (The qcow2 itself cannot be rebuilt
byte for byte from the disk on another host - its layout depends on qemu-img's version - so the
signed identity at a site is the disk's.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pyfastcdc import FastCDC

from ..catalogue import signing
from ..catalogue.catalogue import pull_cached, verify_for_consumer
from ..catalogue.stores import BlobStore, NotFound
from ..catalogue.trust import Anchor
from ..errors import BuildError
from ..run import run

log = logging.getLogger(__name__)

SCHEMA = 1
KIND = "imagefactory-chunked-image"
# casync's default average; min/max as FastCDC's defaults around it (avg/4, avg*4)
AVG_SIZE, MIN_SIZE, MAX_SIZE = 64 * 1024, 16 * 1024, 256 * 1024
CHUNKER: dict[str, Any] = {"algorithm": "fastcdc-2020", "avg_size": AVG_SIZE, "min_size": MIN_SIZE,
                           "max_size": MAX_SIZE, "normalized_chunking": 1, "seed": 0}
ZSTD_LEVEL = 9  # chunks are compressed once at the factory and cross a slow link many times
RECORD = struct.Struct(">32sII")  # sha256 of the chunk, its size, its compressed size


def chunk_key(sha256: str) -> str:
    return f"chunks/zstd/{sha256}"


def table_key(sha256: str) -> str:
    return f"chunk-tables/sha256/{sha256}"


def index_key(name: str, version: str) -> str:
    return f"chunked/{name}/{version}.json"


@dataclass(frozen=True)
class Chunk:
    sha256: str
    size: int
    csize: int  # stored (compressed) size: what it costs to move


@dataclass(frozen=True)
class ChunkedImage:
    """A verified chunk index and its table."""

    name: str
    version: str
    image_sha256: str  # the published image (qcow2) it was made from
    size: int  # of the disk
    sha256: str
    sha512: str
    table_sha256: str
    table_bytes: int  # compressed table: part of what a site needs
    chunks: tuple[Chunk, ...]
    raw: dict[str, Any] = dataclasses.field(repr=False, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def index_key(self) -> str:
        return index_key(self.name, self.version)

    def unique(self) -> dict[str, Chunk]:
        return {c.sha256: c for c in self.chunks}


def _table(chunks: Iterable[Chunk]) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(
        b"".join(RECORD.pack(bytes.fromhex(c.sha256), c.size, c.csize) for c in chunks))


def _parse_table(data: bytes, what: str) -> tuple[Chunk, ...]:
    try:
        raw = zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as e:
        raise BuildError(f"{what}: the chunk table is not readable ({e})") from None
    if len(raw) % RECORD.size:
        raise BuildError(f"{what}: the chunk table is truncated")
    return tuple(Chunk(h.hex(), size, csize) for h, size, csize in RECORD.iter_unpack(raw))


def cut(raw_disk: Path) -> Iterator[bytes]:
    """The disk's chunks, in order. Read as a stream (pyfastcdc's `cut_file` maps the whole file,
    which shows as the disk's size in the process's memory). pyfastcdc hands out views of one
    buffer it refills; each chunk is copied out of it, so what is hashed is what is compressed
    and stored whatever else runs (a 256 KiB copy costs far less than the compression)."""
    cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=1, seed=0)
    with open(raw_disk, "rb") as f:
        for chunk in cdc.cut_stream(f):
            yield bytes(chunk.data)


def raw_disk(image: Path, fmt: str, dest: Path) -> None:
    """The image's disk as a sparse raw file."""
    run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(image), str(dest)])


def chunk_disk(raw: Path, put: Callable[[str, bytes], None], have: Callable[[str], int | None],
               workers: int = 4) -> tuple[list[Chunk], str, str, int]:
    """Cut `raw`, store each chunk the store lacks (`have` says a stored chunk's compressed size,
    or None) through `put`; returns (chunks, sha256, sha512, size) of the disk."""
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    out: list[Chunk] = []
    known: dict[str, int] = {}
    size = 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chunks")
    pending = []
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    try:
        for data in cut(raw):
            h256.update(data)
            h512.update(data)
            size += len(data)
            sha = hashlib.sha256(data).hexdigest()
            if sha not in known:
                stored = have(sha)
                if stored is None:
                    packed = cctx.compress(data)
                    stored = len(packed)
                    pending.append(pool.submit(put, sha, packed))
                    if len(pending) > 4 * workers:  # bounded memory: wait for the oldest uploads
                        pending.pop(0).result()
                known[sha] = stored
            out.append(Chunk(sha, len(data), known[sha]))
        for f in pending:
            f.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out, h256.hexdigest(), h512.hexdigest(), size


def chunk_published(store: BlobStore, ref: str, private_key: Callable[[], Ed25519PrivateKey],
                    anchor: Anchor, cache: Path, scratch: Path) -> ChunkedImage:
    """The chunk index of a published image, made (and signed with `private_key()`) now if the
    store has none for that image yet."""
    img = verify_for_consumer(store, ref, anchor)
    public_key = anchor.manifest_key
    m = img.manifest
    existing = read_index(store, m.name, m.version, public_key)
    if existing is not None and existing.image_sha256 == m.image.sha256:
        return existing
    _, image = pull_cached(store, img.ref, anchor, cache)
    scratch.mkdir(parents=True, exist_ok=True)
    raw = scratch / f"{m.image.sha256}.raw"
    try:
        raw_disk(image, m.image.format, raw)

        # one listing instead of a HEAD per chunk (thousands of them)
        stored = {o.key.rsplit("/", 1)[-1]: o.size for o in store.list("chunks/zstd/")}

        def have(sha: str) -> int | None:
            return stored.get(sha)

        def put(sha: str, packed: bytes) -> None:
            store.put_bytes(chunk_key(sha), packed, content_type="application/zstd")

        chunks, sha256, sha512, size = chunk_disk(raw, put, have)
    finally:
        raw.unlink(missing_ok=True)
    table = _table(chunks)
    tsha = hashlib.sha256(table).hexdigest()
    store.put_bytes(table_key(tsha), table, content_type="application/zstd")
    unique = {c.sha256: c for c in chunks}
    doc: dict[str, Any] = {
        "schema": SCHEMA, "kind": KIND, "name": m.name, "version": m.version,
        "image_sha256": m.image.sha256,
        "disk": {"size": size, "sha256": sha256, "sha512": sha512},
        "chunker": CHUNKER, "compression": {"algorithm": "zstd", "level": ZSTD_LEVEL},
        "table": {"key": table_key(tsha), "sha256": tsha, "bytes": len(table), "chunks": len(chunks),
                  "unique": len(unique), "stored_bytes": sum(c.csize for c in unique.values())},
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }
    raw_doc = signing.sign(doc, private_key())
    store.put_bytes(index_key(m.name, m.version), json.dumps(raw_doc, indent=1).encode())
    log.info("%s: %d chunks (%d unique), disk %.1f MiB, stored %.1f MiB", m.ref, len(chunks),
             doc["table"]["unique"], size / 2**20, doc["table"]["stored_bytes"] / 2**20)
    return parse_index(raw_doc, table, public_key, index_key(m.name, m.version))


def read_index(store: BlobStore, name: str, version: str,
               public_key: Ed25519PublicKey) -> ChunkedImage | None:
    try:
        data, _ = store.get_bytes(index_key(name, version))
    except NotFound:
        return None
    raw = json.loads(data)
    tkey = raw.get("table", {}).get("key") if isinstance(raw, dict) else None
    if not isinstance(tkey, str) or not tkey.startswith("chunk-tables/sha256/"):
        raise BuildError(f"{index_key(name, version)}: malformed chunk index (no table key)")
    table, _ = store.get_bytes(tkey)
    return parse_index(raw, table, public_key, index_key(name, version))


def parse_index(raw: Any, table: bytes, public_key: Ed25519PublicKey, what: str) -> ChunkedImage:
    """Verify a chunk index's signature and its table's hash; the parsed, trusted result."""
    if not isinstance(raw, dict) or raw.get("kind") != KIND or raw.get("schema") != SCHEMA:
        raise BuildError(f"{what}: not a chunk index of this imagefactory (schema {SCHEMA})")
    signing.verify(raw, public_key, what)
    try:
        disk, tab = raw["disk"], raw["table"]
        if raw["chunker"] != CHUNKER:
            raise BuildError(f"{what}: chunked with other parameters ({raw['chunker']})",
                             hint="a site and its factory must run compatible imagefactory versions")
        tsha = str(tab["sha256"])
        if hashlib.sha256(table).hexdigest() != tsha:
            raise BuildError(f"{what}: its chunk table does not match the signed index (sha256 "
                             f"{hashlib.sha256(table).hexdigest()}, expected {tsha})",
                             hint="the table was changed or damaged; do not use it")
        chunks = _parse_table(table, what)
        if len(chunks) != int(tab["chunks"]) or sum(c.size for c in chunks) != int(disk["size"]):
            raise BuildError(f"{what}: the chunk table does not add up to the signed disk size")
        return ChunkedImage(str(raw["name"]), str(raw["version"]), str(raw["image_sha256"]),
                            int(disk["size"]), str(disk["sha256"]), str(disk["sha512"]), tsha, len(table),
                            chunks, raw)
    except (KeyError, TypeError, ValueError) as e:
        raise BuildError(f"{what}: malformed chunk index ({e})") from None


def unpack_chunk(sha256: str, packed: bytes, size: int | None = None) -> bytes:
    """A stored chunk, decompressed and checked against its name (and its size, if known)."""
    try:
        # a frame without its content size needs a bound; no chunk is larger than MAX_SIZE
        data = zstandard.ZstdDecompressor().decompress(packed, max_output_size=MAX_SIZE)
    except zstandard.ZstdError as e:
        raise BuildError(f"chunk {sha256}: not readable ({e})", hint="the chunk was damaged or "
                         "tampered with; it is refused") from None
    if (size is not None and len(data) != size) or hashlib.sha256(data).hexdigest() != sha256:
        raise BuildError(f"chunk {sha256}: its content does not match its hash",
                         hint="the chunk was damaged or tampered with; it is refused")
    return data


def read_stored(store: BlobStore, c: Chunk) -> bytes:
    """A chunk as the factory's store holds it (compressed), checked before it leaves the
    factory: a damaged chunk would otherwise cross a slow link only to be refused at the site."""
    try:
        data, _ = store.get_bytes(chunk_key(c.sha256))
    except NotFound:
        raise BuildError(f"chunk {c.sha256} is missing from {store.describe()}",
                         hint=DAMAGED_HINT) from None
    try:
        if len(data) != c.csize:
            raise BuildError(f"chunk {c.sha256} is {len(data)} bytes, its index says {c.csize}")
        unpack_chunk(c.sha256, data, c.size)
    except BuildError as e:
        raise BuildError(f"{store.describe()}: {e.message}", hint=DAMAGED_HINT) from None
    return data


DAMAGED_HINT = ("the factory store is damaged: delete that chunk and the image's chunk index "
                "(chunked/NAME/VERSION.json) from it; the next plan, export or sync chunks the image again")


def reassemble(image: ChunkedImage, read: Callable[[str], bytes], dest: Path) -> None:
    """Write the disk of `image` to `dest` from stored chunks (`read(sha256)` -> compressed bytes),
    each verified, all-zero chunks as holes; `dest` appears only once the whole disk has the signed
    sha256 and sha512."""
    part = dest.with_name(f".{dest.name}.part")
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    zeros: dict[int, bytes] = {}
    try:
        with open(part, "wb") as out:
            for c in image.chunks:
                try:
                    data = unpack_chunk(c.sha256, read(c.sha256), c.size)
                except BuildError as e:
                    raise BuildError(f"{image.ref}: {e.message} (as read back from the site's store)",
                                     hint="the site store's disk or file system is damaged: check it, delete "
                                          "that chunk and import or sync again") from None
                h256.update(data)
                h512.update(data)
                zero = zeros.setdefault(c.size, bytes(c.size))
                if data == zero:
                    out.seek(c.size, os.SEEK_CUR)  # a hole: the disk stays sparse
                else:
                    out.write(data)
            out.truncate(image.size)
            out.flush()
            os.fsync(out.fileno())
        if (h256.hexdigest(), h512.hexdigest()) != (image.sha256, image.sha512):
            raise BuildError(f"{image.ref}: the reassembled disk does not match its signed digests",
                             hint="nothing was made visible; import or sync it again")
        os.replace(part, dest)
    except OSError as e:
        raise BuildError(f"{image.ref}: cannot write its disk to {dest.parent}: {e.strerror}",
                         hint="free space where the site's disks go (or mount it again), then import or "
                              "apply again: the verified chunks stay in the site's store") from None
    finally:
        part.unlink(missing_ok=True)
