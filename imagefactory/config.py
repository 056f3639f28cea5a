"""Factory configuration (`imagefactory.yaml`): where inputs come from.

Looked up in this order: `--config FILE`, `$IMAGEFACTORY_CONFIG`, `./imagefactory.yaml`; none
means the defaults (upstream release URLs, no mirrors). The recipe says *what* goes into an
image; this file says *where* the factory fetches it on this site.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
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


class FactoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    upstream: Upstream = Upstream()
    mirrors: tuple[str, ...] = Field(
        (), description="artifact mirrors tried before upstream: file://, http(s)://, s3:// "
        "bases holding content-addressed blobs at <base>/sha256/<hex>")
    # Upstream downloads are off for air-gapped sites: everything must come from cache/mirrors.
    offline: bool = False

    @field_validator("mirrors")
    @classmethod
    def _schemes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for m in v:
            if not m.startswith(("file://", "http://", "https://", "s3://")):
                raise ValueError(f"mirror '{m}' must be a file://, http(s):// or s3:// URL")
        return v


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
