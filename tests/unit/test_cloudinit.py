from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml
from jinja2 import UndefinedError

from imagefactory import cloudinit
from imagefactory.cloudinit import SeedData, render, write_seed_iso

SEED = SeedData("i-abc", "node-1", "52:54:00:aa:bb:cc", ("ssh-ed25519 AAAAC3Nz test",))


def test_render_produces_the_three_nocloud_files() -> None:
    files = render(SEED)
    assert set(files) == {"user-data", "meta-data", "network-config"}
    assert files["user-data"].startswith("#cloud-config\n")
    ud = yaml.safe_load(files["user-data"])
    assert ud["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nz test"]
    assert ud["ssh_pwauth"] is False
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "i-abc", "local-hostname": "node-1"}
    net = yaml.safe_load(files["network-config"])
    assert net["ethernets"]["primary"]["match"]["macaddress"] == "52:54:00:aa:bb:cc"


def test_values_cannot_inject_yaml() -> None:
    evil = SeedData("i-1", "x\nruncmd: [reboot]", "52:54:00:00:00:01")
    ud = yaml.safe_load(render(evil)["user-data"])
    assert "runcmd" not in ud and ud["hostname"] == "x\nruncmd: [reboot]"


def test_templates_are_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    tmpl = cloudinit._env.from_string("{{ nope }}")
    with pytest.raises(UndefinedError):
        tmpl.render({})


@pytest.mark.integration
def test_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    ud = tmp_path / "user-data"
    ud.write_text(render(SEED)["user-data"])
    out = subprocess.run(["cloud-init", "schema", "--config-file", str(ud)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    ud.write_text("#cloud-config\nssh_pwauth: maybe-not\nusers: 5\n")
    bad = subprocess.run(["cloud-init", "schema", "--config-file", str(ud)],
                         capture_output=True, text=True)
    assert bad.returncode != 0  # the check can fail


def test_seed_iso_is_cidata_with_joliet_and_rock_ridge(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    files = render(SEED)
    write_seed_iso(files, path)
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        for name, text in files.items():
            for kwargs in ({"rr_path": f"/{name}"}, {"joliet_path": f"/{name}"}):
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, **kwargs)
                assert buf.getvalue().decode() == text
    finally:
        iso.close()
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]  # no temp files left
