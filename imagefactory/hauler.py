"""Hauler interop: a recipe's locked artifacts to and from a Hauler store or haul.

Hauler (hauler-dev/hauler v2) keeps content in an OCI image layout (`oci-layout`, `index.json`,
`blobs/sha256/<hex>`); `hauler store save` writes that layout (plus a docker-style
`manifest.json`) as a zstd tar, the "haul". A file added with `hauler store add file URL` is one
OCI manifest (`pkg/artifacts/file`, `pkg/store/store.go` AddArtifact): config blob of media type
`application/vnd.content.hauler.file.http.config.v1+json` (`{"reference": URL}`; `.local.` for a
local path), one layer of media type `application/vnd.content.hauler.file.layer.v1` holding the
file's bytes unchanged, with the file name as its `org.opencontainers.image.title` annotation;
the index entry carries `kind: dev.hauler/image` and `org.opencontainers.image.ref.name:
hauler/<name>:latest` (and `hauler.dev/original-ref`: the URL).

A file layer's digest is the sha256 of the file itself, which is what the lock pins: import takes
exactly the layers whose digest a locked artifact of the recipe names, re-hashes each blob, and
refuses a file named like a locked artifact with other content - like our own bundles, nothing
reaches the cache unverified. Images, charts and anything else in the store are ignored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from .artifacts import Artifact, Cache, ChecksumMismatch, Fetcher, sha256_file
from .errors import UserError
from .tarballs import ArchiveProblem, open_tar_stream

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FILE_LAYER = "application/vnd.content.hauler.file.layer.v1"
FILE_HTTP_CONFIG = "application/vnd.content.hauler.file.http.config.v1+json"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
KIND = "kind"
KIND_IMAGE = "dev.hauler/image"
ORIGINAL_REF = "hauler.dev/original-ref"
_BLOB = re.compile(r"^blobs/sha256/[0-9a-f]{64}$")
_SMALL_LIMIT = 16 << 20  # index.json, manifests and configs


@dataclass(frozen=True)
class HaulFile:
    name: str  # the layer's title annotation
    sha256: str
    ref: str  # the index entry's ref name


def is_hauler_layout(path: Path) -> bool:
    """A Hauler store directory, or a haul (tar/tar.zst whose first members are an OCI layout)."""
    if path.is_dir():
        return (path / "index.json").is_file() and (path / "blobs/sha256").is_dir()
    if not path.is_file():
        return False
    try:
        with open_tar_stream(path) as tar:
            for m in tar:
                name = m.name.removeprefix("./")
                if name in ("index.json", "oci-layout") or name.startswith("blobs/"):
                    return True
                if name == "bundle.json":
                    return False
    except ArchiveProblem:
        return False
    return False


def _read_json(path: Path, digest: str | None = None) -> Any:
    if path.stat().st_size > _SMALL_LIMIT:
        raise UserError(f"{path.name}: {path.stat().st_size} bytes, too large for OCI metadata")
    data = path.read_bytes()
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise ChecksumMismatch(f"Hauler blob sha256:{digest} does not match its content",
                               hint="the store is corrupt; nothing was imported")
    try:
        return json.loads(data)
    except ValueError as e:
        raise UserError(f"{path.name}: not JSON ({e})") from None


def layout_files(layout: Path) -> list[HaulFile]:
    """The Hauler file artifacts in an OCI layout directory."""
    index = _read_json(layout / "index.json")
    out: list[HaulFile] = []
    for desc in index.get("manifests") or [] if isinstance(index, dict) else []:
        digest = str(desc.get("digest", ""))
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            continue
        blob = layout / "blobs/sha256" / digest.removeprefix("sha256:")
        if not blob.is_file():
            raise UserError(f"index.json names {digest}, which the layout does not hold")
        manifest = _read_json(blob, digest.removeprefix("sha256:"))
        ref = str((desc.get("annotations") or {}).get(REF_NAME, ""))
        for layer in (manifest.get("layers") or []) if isinstance(manifest, dict) else []:
            title = (layer.get("annotations") or {}).get(TITLE)
            ldigest = str(layer.get("digest", ""))
            if layer.get("mediaType") == FILE_LAYER and title and ldigest.startswith("sha256:"):
                out.append(HaulFile(str(title), ldigest.removeprefix("sha256:"), ref))
    return out


def _unpack(haul: Path, dest: Path) -> None:
    """The OCI layout members of a haul into ``dest``; any other member name is refused (nothing
    in an archive chooses where it is written)."""
    with open_tar_stream(haul) as tar:
        for m in tar:
            name = m.name.removeprefix("./")
            if m.isdir() or name in ("manifest.json", "oci-layout", ""):
                continue
            if not m.isfile() or not (name == "index.json" or _BLOB.match(name)):
                raise UserError(f"{haul}: unexpected member {m.name} in a Hauler haul")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            with open(target, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)


def import_hauler(cache: Cache, source: Path, recipe: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Verify the locked artifacts of ``recipe`` found in a Hauler store or haul and add them to
    the cache. Returns what was imported and what the lock still misses."""
    locked = {a["sha256"]: a["name"] for a in entry["artifacts"]}
    by_name = {a["name"]: a["sha256"] for a in entry["artifacts"]}
    cache.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="hauler-", dir=cache.root))
    try:
        layout = source
        if source.is_file():
            try:
                _unpack(source, staging / "layout")
            except ArchiveProblem as e:
                raise UserError(f"{source}: {e}") from None
            layout = staging / "layout"
        files = layout_files(layout)
        wanted: dict[str, HaulFile] = {}
        for f in files:
            if f.name in by_name and by_name[f.name] != f.sha256:
                raise ChecksumMismatch(
                    f"{source}: {f.name} ({f.ref}): sha256 {f.sha256} differs from the lock's "
                    f"{by_name[f.name]}", hint="the store holds another release of it; nothing was imported")
            if f.sha256 in locked:
                wanted[f.sha256] = f
        if not wanted:
            raise UserError(f"{source}: holds none of the {len(locked)} artifacts locked for {recipe}",
                            hint="hauler store add file <the locked URLs>, then hauler store save")
        staged = staging / "verified"
        staged.mkdir()
        for sha, f in sorted(wanted.items()):
            blob = layout / "blobs/sha256" / sha
            if not blob.is_file():
                raise UserError(f"{source}: {f.name}: its layer blob is missing")
            # a store directory stays as it was: the cache gets a copy, hashed as it lands
            shutil.copyfile(blob, staged / sha)
            actual = sha256_file(staged / sha)
            if actual != sha:
                raise ChecksumMismatch(f"{source}: {f.name}: sha256 mismatch: expected {sha}, got {actual}",
                                       hint="the store is corrupt; nothing was imported")
        for sha in sorted(wanted):  # everything verified: now (and only now) into the cache
            cache.put(staged / sha, sha, locked[sha])
        missing = sorted(n for s, n in locked.items() if s not in wanted and not cache.has(s))
        return {"recipe": recipe, "files": [{"name": locked[s], "sha256": s} for s in sorted(wanted)],
                "missing": missing}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _blob_member(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
    return digest


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def export_hauler(fetcher: Fetcher, recipe: str, entry: dict[str, Any], out: Path) -> dict[str, Any]:
    """A haul (zstd tar of an OCI layout) holding the recipe's locked artifacts as Hauler file
    artifacts, loadable with `hauler store load` and importable here."""
    items = [(a, fetcher.get(a, recipe)) for a in (Artifact(**x) for x in entry["artifacts"])]
    tmp = out.with_name(f".{out.name}.tmp")
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                             "manifests": []}
    try:
        with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as z, \
                tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _blob_member_named(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
            for a, path in items:
                config = _json({"reference": a.url})
                size = path.stat().st_size
                manifest = _json({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": FILE_HTTP_CONFIG, "size": len(config),
                               "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
                    "layers": [{"mediaType": FILE_LAYER, "digest": f"sha256:{a.sha256}", "size": size,
                                "annotations": {TITLE: a.name}}]})
                _blob_member(tar, config)
                tar.add(path, arcname=f"blobs/sha256/{a.sha256}", recursive=False)
                digest = _blob_member(tar, manifest)
                index["manifests"].append({
                    "mediaType": OCI_MANIFEST, "digest": f"sha256:{digest}", "size": len(manifest),
                    "annotations": {KIND: KIND_IMAGE, REF_NAME: f"hauler/{a.name}:latest",
                                    ORIGINAL_REF: a.url}})
            _blob_member_named(tar, "index.json", _json(index))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"recipe": recipe, "files": [{"name": a.name, "sha256": a.sha256} for a, _ in items]}


def _blob_member_named(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
