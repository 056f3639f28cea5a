"""The published manifest: one signed JSON document per image version, and image references.

A published manifest is derived from the build's `manifest.json` but is its own, smaller
format (`kind: imagefactory.image`, `schema: 1`): what an operator or a consumer needs to pick
and trust an image, not the build's internals. Fields:

- identity: `name`, `version` (= build id, date-based and sortable), `build_id`, `created` (the
  build), `published`;
- what is inside: `os`, `kernel`, `rke2`/`zarf` versions, `recipe` (name, digest), `inputs`
  (the input-lock key and the sha256 of the canonical lock entry), `packages` (count; the list
  is in the SBOM);
- the image: file name, format, compression, `size`, `virtual_size`, `sha256`, `sha512`
  (Harvester verifies SHA-512) and its blob key;
- evidence: `tests` (ok, passed, failed, ...), `stig` (gate, open findings by CAT, per-benchmark
  counts, the report and checklist file names), `sbom` (format, spec version, file);
- `files`: every published file (image, SBOM, STIG reports and checklists, junit.xml,
  build.log) with role, media type, size and sha256 - each stored once at `blobs/sha256/<hex>`;
- lifecycle: `channels` (new images: `candidate`), `revoked` (reason, time) or null;
- `signature` (see `signing`): covers everything else, including channels and revocation, so
  promote and revoke re-sign the manifest.

References: `name` (the newest version that is not revoked), `name:version`, `name@channel`
(the newest non-revoked version in that channel: its "head").
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from ..errors import BuildError, UserError

KIND = "imagefactory.image"
SCHEMA = 1
DEFAULT_CHANNEL = "candidate"
CHANNEL = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_PRESIGN = dt.timedelta(days=7)  # the SigV4 limit for presigned URLs


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


def manifest_key(name: str, version: str) -> str:
    return f"images/{name}/{version}/manifest.json"


class _Model(BaseModel):
    # Readers ignore fields they do not know (a newer publisher's); the signature covers them.
    model_config = ConfigDict(frozen=True, extra="ignore")


class FileRef(_Model):
    path: str = Field(description="name in the build directory, e.g. checklists/x.cklb")
    role: str = Field(description="image, sbom, stig-report, stig-checklist, junit, build-log, ...")
    media_type: str
    size: int
    sha256: str

    @property
    def key(self) -> str:
        return blob_key(self.sha256)


class OsInfo(_Model):
    family: str
    release: str
    arch: str


class ImageFile(_Model):
    file: str
    format: str
    compression: str | None = None
    size: int
    virtual_size: int | None = None
    sha256: str
    sha512: str

    @property
    def key(self) -> str:
        return blob_key(self.sha256)


class Revocation(_Model):
    reason: str
    at: str


class Manifest(_Model):
    kind: str = KIND
    schema_version: int = Field(SCHEMA, alias="schema")
    name: str
    version: str
    build_id: str
    created: str
    published: str
    os: OsInfo
    kernel: str | None = None
    boot: dict[str, Any] | None = None  # {firmware: bios|uefi|hybrid, secure_boot}; older manifests: none
    # what a later build needs to write its root over this one's (`build --base`): the disk's seed,
    # epoch, recipe disk settings and its file index's sha256; older manifests and Packer: none
    disk: dict[str, Any] | None = None
    rke2: dict[str, Any] | None = None
    zarf: dict[str, Any] | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, Any] | None = None
    packages: int = 0
    image: ImageFile
    build: dict[str, Any] = Field(default_factory=dict)
    tests: dict[str, Any] = Field(default_factory=dict)
    stig: dict[str, Any] | None = None
    sbom: dict[str, Any] | None = None
    changelog: dict[str, Any] | None = None  # OS packages changed since the previous published image
    files: tuple[FileRef, ...] = ()
    channels: tuple[str, ...] = ()
    revoked: Revocation | None = None
    signature: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def file(self, path: str) -> FileRef | None:
        return next((f for f in self.files if f.path == path), None)


def parse_manifest(raw: dict[str, Any], what: str) -> Manifest:
    try:
        m = Manifest.model_validate(raw)
    except PydanticValidationError as e:
        first = e.errors()[0]
        raise BuildError(f"{what}: not a valid image manifest: {'.'.join(map(str, first['loc']))}: "
                         f"{first['msg']}") from None
    if m.kind != KIND:
        raise BuildError(f"{what}: not an image manifest (kind {m.kind!r})")
    return m


@dataclass(frozen=True)
class ImageRef:
    name: str
    version: str | None = None
    channel: str | None = None

    def __str__(self) -> str:
        return (self.name + (f":{self.version}" if self.version else "")
                + (f"@{self.channel}" if self.channel else ""))


def parse_ref(ref: str) -> ImageRef:
    """`name`, `name:version` or `name@channel`."""
    name, at, channel = ref.partition("@")
    name, colon, version = name.partition(":")
    if not NAME.match(name) or (colon and not NAME.match(version)) or (at and not CHANNEL.match(channel)) \
            or (colon and at):
        raise UserError(f"{ref}: not an image reference",
                        hint="use NAME, NAME:VERSION or NAME@CHANNEL (e.g. debian-12-base@stable)")
    return ImageRef(name, version or None, channel or None)


def channel_heads(entries: list[dict[str, Any]]) -> dict[str, str]:
    """channel -> newest non-revoked version in it, for one image name's index entries."""
    heads: dict[str, str] = {}
    for e in sorted(entries, key=lambda e: str(e["version"])):
        if not e.get("revoked"):
            for c in e.get("channels", []):
                heads[c] = str(e["version"])
    return heads


def check_channel(channel: str) -> str:
    if not CHANNEL.match(channel):
        raise UserError(f"channel '{channel}': use lower-case letters, digits and '-' (max 32)")
    return channel


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, maximum: dt.timedelta | None = MAX_PRESIGN) -> dt.timedelta:
    """`90s`, `30m`, `24h`, `7d`, `1w`, or combinations like `1d12h`."""
    parts = re.fullmatch(r"(?:\d+[smhdw])+", text.strip().lower())
    if not parts:
        raise UserError(f"duration '{text}': use a number with a unit s, m, h, d or w (e.g. 30m, 24h, 7d)")
    seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", text.strip().lower()))
    d = dt.timedelta(seconds=seconds)
    if d.total_seconds() <= 0:
        raise UserError(f"duration '{text}' must be positive")
    if maximum is not None and d > maximum:
        raise UserError(f"duration '{text}' is longer than {maximum.days} days",
                        hint="S3 presigned URLs are valid for at most 7 days")
    return d


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
