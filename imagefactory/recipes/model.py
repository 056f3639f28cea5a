"""The recipe format as typed, frozen models.

Parsed once, validated completely, then never mutated: mutable build state lives in
`imagefactory.build.BuildContext`. Unknown keys are errors everywhere (`extra="forbid"`).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

ACCELERATOR_ENV = "IMAGEFACTORY_ACCELERATOR"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OS(Strict):
    family: Literal["debian", "ubuntu", "sle-micro"] = Field(
        description="OS family; decides which distro module builds the image"
    )
    release: str = Field(description="release of the family, e.g. '12', '22.04', '5.5'")
    arch: Literal["amd64", "arm64"] = "amd64"

    @field_validator("release", mode="before")
    @classmethod
    def _release_as_text(cls, v: object) -> object:
        # YAML reads `release: 12` as an int and `22.04` as a float; both mean the same text.
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


class MmdebstrapSource(Strict):
    type: Literal["mmdebstrap"]
    mirror: str = Field("http://deb.debian.org/debian", description="apt mirror URL")
    suite: str = Field(description="suite or codename, e.g. bookworm")
    components: tuple[str, ...] = ("main",)
    variant: Literal["extract", "custom", "essential", "apt", "required", "minbase",
                     "buildd", "important", "debootstrap", "standard"] = "minbase"
    keyring: str | None = Field(None, description="keyring file or directory for apt")

    @field_validator("mirror")
    @classmethod
    def _mirror_url(cls, v: str) -> str:
        if not re.match(r"^(https?|file)://\S+$", v):
            raise ValueError("must be an http://, https:// or file:// URL")
        return v


_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


class CloudImageSource(Strict):
    type: Literal["cloud-image"]
    url: str = Field(description="URL of the upstream cloud image (qcow2)")
    checksum: str | None = Field(None, description="'sha256:<hex>' or 'sha512:<hex>'")
    checksum_url: str | None = Field(
        None, description="URL of a SHA256SUMS-style file listing the image"
    )

    @field_validator("url", "checksum_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(https?|file)://\S+$", v):
            raise ValueError("must be an http://, https:// or file:// URL")
        return v

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, v: str | None) -> str | None:
        if v is not None and not _DIGEST.match(v):
            raise ValueError("must be 'sha256:<64 hex>' or 'sha512:<128 hex>'")
        return v

    @model_validator(mode="after")
    def _one_checksum(self) -> CloudImageSource:
        if (self.checksum is None) == (self.checksum_url is None):
            raise ValueError("set exactly one of 'checksum' and 'checksum_url'")
        return self


Source = Annotated[MmdebstrapSource | CloudImageSource, Field(discriminator="type")]


class Packages(Strict):
    install: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


class FileSpec(Strict):
    path: str = Field(description="absolute path inside the image")
    content: str | None = None
    template: str | None = Field(
        None, description="jinja2 template, relative to the recipe directory"
    )
    mode: str = Field("0644", description="octal permission bits as a string")
    owner: str = Field("root:root", description="user:group inside the image")

    @field_validator("path")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/"):
            raise ValueError("must be an absolute path without '..'")
        return v

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)  # `mode: 644` means 0644 (leading-zero ints arrive as text, see load.py)
        if isinstance(v, str) and not re.match(r"^0?[0-7]{3,4}$", v):
            raise ValueError("must be octal permission bits such as '0644'")
        return v

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str) -> str:
        if not re.match(r"^[a-z_][a-z0-9_-]*:[a-z_][a-z0-9_-]*$", v):
            raise ValueError("must be 'user:group'")
        return v

    @model_validator(mode="after")
    def _one_body(self) -> FileSpec:
        if (self.content is None) == (self.template is None):
            raise ValueError("set exactly one of 'content' and 'template'")
        return self


class Services(Strict):
    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()


class Kernel(Strict):
    cmdline: tuple[str, ...] = Field((), description="extra kernel command line arguments")


class Disk(Strict):
    size: ByteSize = Field(ByteSize(4 * 1024**3), description="virtual disk size, e.g. 4GiB")
    format: Literal["qcow2", "raw"] = "qcow2"
    compression: Literal["none", "zlib", "zstd"] = "zstd"
    partition_table: Literal["msdos", "gpt"] = "msdos"


class Tests(Strict):
    suites: tuple[Literal["hygiene", "recipe"], ...] = ("hygiene", "recipe")
    clones: int = Field(2, ge=1, le=4, description="VMs booted from the image at once")
    boot_timeout: int = Field(900, ge=30, description="seconds to wait for SSH")
    timeout: int = Field(900, ge=30, description="seconds for the test suites")
    memory: ByteSize = Field(ByteSize(1024**3), description="guest memory")
    cpus: int = Field(2, ge=1, le=16)


class Recipe(Strict):
    """A merged, validated recipe."""

    name: str = Field(description="set from the file name; not a YAML key")
    description: str = ""
    extends: str | None = Field(None, description="name of the recipe this one builds on")
    os: OS
    source: Source
    packages: Packages = Packages()
    files: tuple[FileSpec, ...] = ()
    services: Services = Services()
    kernel: Kernel = Kernel()
    disk: Disk = Disk()
    builder: Literal["rootfs", "packer"] = "rootfs"
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"
    tests: Tests = Tests()

    def effective_accelerator(self) -> Literal["auto", "kvm", "tcg"]:
        """The recipe's accelerator unless `IMAGEFACTORY_ACCELERATOR` overrides it."""
        env = os.environ.get(ACCELERATOR_ENV, "").strip()
        if env in ("auto", "kvm", "tcg"):
            return env  # type: ignore[return-value]
        return self.accelerator


def recipe_json_schema() -> dict[str, object]:
    """JSON Schema of the recipe *file* format, for editors (name comes from the file name)."""
    schema = Recipe.model_json_schema()
    props = schema.get("properties", {})
    assert isinstance(props, dict)
    props.pop("name", None)
    req = schema.get("required")
    if isinstance(req, list) and "name" in req:
        req.remove("name")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "imagefactory recipe"
    return schema
