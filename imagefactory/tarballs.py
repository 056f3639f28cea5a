"""Tar archives read as a stream, plain or zstd-compressed (detected by content: the build reads
them from the content-addressed cache, whose entries have no suffix), and the container images a
saved-image tarball holds.

RKE2's image tarballs (`rke2-images-<set>.linux-<arch>.tar.zst`) are `docker image save` output
compressed with zstd (rancher/rke2 `scripts/package-images`): a `manifest.json` listing each
image's `RepoTags`; newer savers add an OCI `index.json` whose manifests carry the image name in
the `io.containerd.image.name` / `org.opencontainers.image.ref.name` annotations. Both are read.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import zstandard

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_INDEX_LIMIT = 64 << 20  # manifest.json / index.json of a saved-image tarball


class ArchiveProblem(Exception):
    """An archive that cannot be read as what it claims to be."""


@contextmanager
def open_tar_stream(path: Path) -> Iterator[tarfile.TarFile]:
    """A streamed ("r|") tar: members in archive order, each readable once, nothing extracted."""
    with path.open("rb") as raw:
        stream: IO[bytes] = raw
        compressed = raw.read(4) == ZSTD_MAGIC
        raw.seek(0)
        if compressed:
            stream = zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[assignment]
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                yield tar
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
            kind = "zstd-compressed tar" if compressed else "tar"
            raise ArchiveProblem(f"not a readable {kind} archive ({e})") from None


def _normalise(ref: str) -> str:
    """docker.io/rancher/x:tag for rancher/x:tag (what a docker save may record)."""
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref


def image_refs(path: Path) -> list[str]:
    """The image references (registry/repository:tag) a saved-image tarball holds, sorted."""
    refs: set[str] = set()
    seen_index = False
    with open_tar_stream(path) as tar:
        for m in tar:
            name = m.name.removeprefix("./")
            if not m.isfile() or name not in ("manifest.json", "index.json"):
                continue
            if m.size > _INDEX_LIMIT:
                raise ArchiveProblem(f"{name} is {m.size} bytes: not a saved-image tarball")
            f = tar.extractfile(m)
            assert f is not None
            try:
                doc = json.loads(f.read())
            except ValueError as e:
                raise ArchiveProblem(f"{name} does not parse ({e})") from None
            seen_index = True
            if name == "manifest.json" and isinstance(doc, list):
                for entry in doc:
                    refs.update(str(t) for t in (entry.get("RepoTags") or []) if isinstance(entry, dict))
            elif name == "index.json" and isinstance(doc, dict):
                for man in doc.get("manifests") or []:
                    ann = (man.get("annotations") or {}) if isinstance(man, dict) else {}
                    ref = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name")
                    if isinstance(ref, str) and ("/" in ref or ":" in ref):
                        refs.add(ref)
    if not seen_index:
        raise ArchiveProblem("neither manifest.json nor index.json: not a saved-image tarball")
    return sorted(_normalise(r) for r in refs)
