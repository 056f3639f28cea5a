"""One module per OS family; derivatives inherit (Ubuntu from Debian)."""

from __future__ import annotations

from .base import Distro
from .debian import Debian
from .slemicro import SLEMicro
from .ubuntu import Ubuntu

_FAMILIES: dict[str, type[Distro]] = {d.family: d for d in (Debian, Ubuntu, SLEMicro)}


def get(family: str) -> Distro:
    """The distro module for an OS family (families are validated by the recipe model)."""
    return _FAMILIES[family]()


__all__ = ["Debian", "Distro", "SLEMicro", "Ubuntu", "get"]
