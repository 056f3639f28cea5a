"""Files holding secrets are never readable by others, not even while they are written."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from imagefactory import cloudinit
from imagefactory.fsutil import write_in_root


@pytest.fixture
def open_umask() -> Any:
    old = os.umask(0)  # the worst case: nothing masks a careless create
    yield
    os.umask(old)


def test_a_token_seed_is_0600_before_it_appears(tmp_path: Path, open_umask: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    replace = os.replace

    def watch(src: Any, dst: Any) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", watch)
    seed = tmp_path / "seed.iso"
    cloudinit.write_seed_iso({"user-data": "#cloud-config\ntoken: s3cr3t\n", "meta-data": ""}, seed,
                             mode=0o600)
    assert seen == [0o600] and stat.S_IMODE(seed.stat().st_mode) == 0o600
    cloudinit.write_seed_iso({"meta-data": ""}, tmp_path / "public.iso")  # test seeds: public key only
    assert stat.S_IMODE((tmp_path / "public.iso").stat().st_mode) == 0o644


def test_registries_yaml_is_never_readable_by_others(tmp_path: Path, open_umask: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[int] = []
    fdopen = os.fdopen

    def watch(fd: int, *args: Any, **kwargs: Any) -> Any:
        f = fdopen(fd, *args, **kwargs)
        write = f.write

        def checked(data: bytes) -> int:
            modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
            return int(write(data))

        f.write = checked
        return f

    monkeypatch.setattr(os, "fdopen", watch)
    target = tmp_path / "etc/rancher/rke2/registries.yaml"
    target.parent.mkdir(parents=True)
    target.write_text("old\n")
    target.chmod(0o644)  # an existing, more open file is tightened before the secret goes in
    # how the rke2 step writes it (steps/rke2.py)
    write_in_root(tmp_path, "/etc/rancher/rke2/registries.yaml",
                  "configs: {registry.local: {auth: {password: s3cr3t}}}\n", 0o600)
    assert modes and all(m & 0o077 == 0 for m in modes), modes
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "s3cr3t" in target.read_text()
    script = tmp_path / "firstboot"
    write_in_root(tmp_path, "firstboot", "#!/bin/sh\n", 0o755)  # non-secret files still get their mode
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
