"""Factory configuration (`imagefactory.yaml`): where inputs come from and where images go.

Looked up in this order: `--config FILE`, `$IMAGEFACTORY_CONFIG`, `./imagefactory.yaml`; none
means the defaults (upstream release URLs, no mirrors, the embedded `local` catalogue store). The
recipe says *what* goes into an image; this file says *where* the factory fetches it on this site
and where it publishes the results (`stores`, `default_store`, `signing`). No credential is ever
read from here: S3 keys come from the environment or from a 0600 file named by
`credentials_file` (see `imagefactory.catalogue.stores`). Relative paths are relative to the
current directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from .errors import Problem, UserError, ValidationError

ENV = "IMAGEFACTORY_CONFIG"


class Upstream(BaseModel):
    """Base URLs of upstream releases (change them only to point at a full upstream replica)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rke2_release: str = "https://github.com/rancher/rke2/releases/download"
    rke2_source: str = "https://raw.githubusercontent.com/rancher/rke2"
    rke2_channels: str = "https://update.rke2.io/v1-release/channels"
    zarf_release: str = "https://github.com/zarf-dev/zarf/releases/download"
    rke2_rpm: str = "https://rpm.rancher.io"  # rke2-selinux for SELinux nodes (install.sh's repo)


STORE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class S3StoreConfig(BaseModel):
    """An S3-compatible catalogue store (MinIO, Ceph RGW, AWS S3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["s3"]
    endpoint: str = Field(description="https://host[:port] (http:// only when written explicitly)")
    bucket: str
    prefix: str = Field("", description="key prefix inside the bucket, e.g. images/")
    region: str = "us-east-1"
    verify_tls: bool = Field(True, description="verify the server certificate (never turn off in production)")
    ca_bundle: str | None = Field(None, description="PEM bundle of CAs to trust instead of the system's")
    credentials_file: str | None = Field(
        None, description="YAML file with access_key/secret_key[/session_token]; must be mode 0600")
    part_size: ByteSize = Field(ByteSize(16 * 1024**2), description="multipart part size (5MiB..5GiB)")
    parallel: int = Field(4, ge=1, le=32, description="parts uploaded at once")
    retries: int = Field(5, ge=1, le=50, description="attempts per request before giving up")
    retry_wait: float = Field(1.0, gt=0, description="first back-off in seconds (doubles, max 30 s)")
    timeout: float = Field(300.0, gt=0, description="connect/read timeout in seconds")
    create_bucket: bool = Field(False, description="create the bucket if it does not exist")
    anonymous_blobs: bool = Field(
        False, description="let anyone read <prefix>blobs/ (a bucket-policy statement publish adds): "
                           "Harvester then downloads the plain blob URL, which answers its HEAD")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")) or "/" in v.split("://", 1)[1].rstrip("/"):
            raise ValueError(f"endpoint '{v}' must be https://host[:port] (or http:// explicitly)")
        return v.rstrip("/")

    @field_validator("part_size")
    @classmethod
    def _part(cls, v: ByteSize) -> ByteSize:
        if not 5 * 1024**2 <= v <= 5 * 1024**3:  # the S3 limits for every part but the last
            raise ValueError("part_size must be between 5MiB and 5GiB")
        return v


class LocalStoreConfig(BaseModel):
    """A catalogue in a directory (a local disk or an NFS share)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["local"]
    path: str
    url: str | None = Field(None, description="base URL the directory is served at (for 'images url')")


StoreConfig = Annotated[S3StoreConfig | LocalStoreConfig, Field(discriminator="type")]


class SigningConfig(BaseModel):
    """Manifest signing: the public key every consumer verifies with; the private key (0600, or
    $IMAGEFACTORY_SIGNING_KEY) only where images are published, promoted or revoked."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    public_key: str | None = None
    private_key: str | None = None
    root_keys: list[str] = Field(
        default_factory=list, description="public keys of the catalogue's first TUF root, what consumers "
                                          "anchor their trust in (default: public_key alone)")
    root_private_keys: list[str] = Field(
        default_factory=list, description="the root keys' private halves: only where 'trust init' or "
                                          "'trust rotate' runs (default, without root_keys: private_key)")
    root_threshold: int = Field(1, ge=1, description="how many root keys must sign a root")


class HarvesterConfig(BaseModel):
    """Where `harvester upload` and `cluster` (target harvester) go; credentials stay in the kubeconfig."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kubeconfig: str | None = Field(None, description="kubeconfig path ($KUBECONFIG, ~/.kube/config if unset)")
    context: str | None = Field(None, description="kubeconfig context (default: its current-context)")
    namespace: str | None = Field(None, description="namespace for images and VMs (default: the context's)")
    source: Literal["download", "upload"] | None = Field(
        None, description="how images get in: download (a presigned URL; default for S3 stores) or upload")
    url_expiry: str = Field("12h", description="lifetime of the presigned download URL")
    image_namespace: str | None = Field(
        None, description="namespace images are uploaded to (default: the VMs'); harvester-public "
                          "shares them with every namespace, as Harvester's own convention does")
    image_storage_class: str | None = Field(
        None, description="a StorageClass whose Longhorn parameters (numberOfReplicas, diskSelector, "
                          "nodeSelector, dataLocality, ...) each uploaded image's own StorageClass copies; "
                          "unset: Harvester's default StorageClass")
    poll: float = Field(2.0, gt=0, description="seconds between status polls")
    timeout: float = Field(4 * 3600, gt=0, description="seconds an image import may take")
    vm_ip_timeout: float = Field(900, gt=0, description="seconds a VM may take to report an IP")
    retries: int = Field(6, ge=1, le=50, description="attempts per API call on 5xx/timeouts")


class FactoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    upstream: Upstream = Upstream()
    stores: dict[str, StoreConfig] = Field(
        default_factory=dict, description="catalogue stores by name; 'local' (WORKDIR/catalogue) is implied")
    default_store: str | None = Field(None,
                                      description="store used without --store ($IMAGEFACTORY_STORE wins)")
    signing: SigningConfig = SigningConfig()
    harvester: HarvesterConfig = HarvesterConfig()
    mirrors: tuple[str, ...] = Field(
        (), description="artifact mirrors tried before upstream: file://, http(s)://, s3:// "
        "bases holding content-addressed blobs at <base>/sha256/<hex>")
    # Upstream downloads are off for air-gapped sites: everything must come from cache/mirrors.
    offline: bool = False
    root_cache: bool = Field(
        True, description="start a rootfs build from the root an earlier build bootstrapped when every "
        "input is the same (Release files, include list, mmdebstrap version): rootcache")

    @field_validator("mirrors")
    @classmethod
    def _schemes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for m in v:
            if not m.startswith(("file://", "http://", "https://", "s3://")):
                raise ValueError(f"mirror '{m}' must be a file://, http(s):// or s3:// URL")
        return v

    @field_validator("stores")
    @classmethod
    def _store_names(cls, v: dict[str, StoreConfig]) -> dict[str, StoreConfig]:
        for name in v:
            if not STORE_NAME.match(name):
                raise ValueError(f"store name '{name}' must match {STORE_NAME.pattern}")
        return v

    @model_validator(mode="after")
    def _default_store(self) -> FactoryConfig:
        if self.default_store and self.default_store != "local" and self.default_store not in self.stores:
            raise ValueError(f"default_store '{self.default_store}' is not in stores "
                             f"({', '.join(sorted(self.stores)) or 'none defined'})")
        return self


def load_config(path: str | None = None) -> FactoryConfig:
    local = "imagefactory.yaml" if Path("imagefactory.yaml").is_file() else None
    candidate = path or os.environ.get(ENV) or local
    if candidate is None:
        return FactoryConfig()
    p = Path(candidate)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise UserError(f"{p}: cannot read the configuration: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{p}: invalid YAML: {e}") from None
    try:
        return FactoryConfig.model_validate(data)
    except PydanticValidationError as e:
        raise ValidationError([
            Problem(str(p), None, ".".join(str(x) for x in err["loc"]),
                    err["msg"].removeprefix("Value error, "))
            for err in e.errors()
        ]) from None
