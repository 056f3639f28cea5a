"""cloud-init NoCloud data: jinja2 templates (StrictUndefined) and a pycdlib seed ISO."""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pycdlib

TEMPLATES = Path(__file__).parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # YAML, not HTML; values go through |tojson
)


@dataclass(frozen=True)
class SeedData:
    instance_id: str
    hostname: str
    mac: str
    ssh_authorized_keys: tuple[str, ...] = ()
    purpose: str = "a boot test"


def render(seed: SeedData) -> dict[str, str]:
    """The three NoCloud files, by their NoCloud names."""
    ctx = {
        "instance_id": seed.instance_id,
        "hostname": seed.hostname,
        "mac": seed.mac,
        "ssh_authorized_keys": list(seed.ssh_authorized_keys),
        "purpose": seed.purpose,
    }
    return {
        name: _env.get_template(f"{name}.j2").render(ctx)
        for name in ("user-data", "meta-data", "network-config")
    }


def write_seed_iso(files: dict[str, str], path: Path, mode: int = 0o644) -> None:
    """A NoCloud seed ISO (volume id `cidata`, Joliet + Rock Ridge), written atomically. It is
    0600 while written (mkstemp) and gets `mode` only when complete: a seed holding a cluster
    token passes 0o600 and is never readable by others."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    try:
        for i, (name, text) in enumerate(sorted(files.items())):
            data = text.encode()
            iso.add_fp(io.BytesIO(data), len(data), f"/FILE{i}.;1", rr_name=name,
                       joliet_path=f"/{name}")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".seed-")
        os.close(fd)
        try:
            iso.write(tmp)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        iso.close()
