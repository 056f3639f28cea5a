"""Writes into an image root stay inside it, whatever links the image holds (a base image for the
Packer builder is somebody else's disk): fsutil's in-root helpers, used by the distro
configuration, the RKE2/Zarf steps, sealing and the recipe's files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from imagefactory.fsutil import copy_into_root, in_root, mkdir_in_root, read_in_root, write_in_root


@pytest.fixture
def trap(tmp_path: Path) -> tuple[Path, Path]:
    """An image root whose links point at absolute host paths, and the host dir they name."""
    host = tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    (host / "etc/passwd").write_text("host-secret\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink(str(host / "etc"), root / "etc/rancher")  # a directory link out of the root
    os.symlink(str(host / "etc/passwd"), root / "etc/motd")  # a file link out of the root
    os.symlink("../../../../../..", root / "etc/up")  # climbing far above the root
    return root, host


def _host_untouched(host: Path) -> None:
    assert sorted(p.name for p in (host / "etc").iterdir()) == ["passwd"]
    assert (host / "etc/passwd").read_text() == "host-secret\n"


def test_a_link_in_place_of_the_file_is_replaced_not_followed(trap: tuple[Path, Path]) -> None:
    root, host = trap
    p = write_in_root(root, "/etc/motd", "hello\n", 0o644)
    assert p == Path(os.path.realpath(root)) / "etc/motd" and not p.is_symlink()
    assert p.read_text() == "hello\n" and stat.S_IMODE(p.stat().st_mode) == 0o644
    _host_untouched(host)


def test_a_linked_directory_resolves_inside_the_root(trap: tuple[Path, Path]) -> None:
    root, host = trap
    real = Path(os.path.realpath(root))
    # /etc/rancher -> <host>/etc, read as the image would: <root><host>/etc, created there
    p = write_in_root(root, "etc/rancher/rke2/config.yaml", "x: 1\n", 0o600)
    assert p.is_relative_to(real) and p.read_text() == "x: 1\n"
    assert p.parent == real / str(host / "etc/rke2").lstrip("/")
    d = mkdir_in_root(root, "etc/up/var/lib/zarf")  # `..` stops at the root
    assert d == real / "var/lib/zarf" and d.is_dir()
    src = root.parent / "download"
    src.write_bytes(b"\0" * 3000)
    q = copy_into_root(src, root, "/etc/rancher/images/core.tar.zst", 0o644)
    assert q.is_relative_to(real) and q.read_bytes() == b"\0" * 3000
    _host_untouched(host)


def test_reads_resolve_inside_the_root(trap: tuple[Path, Path]) -> None:
    root, host = trap
    assert read_in_root(root, "/etc/motd") is None  # names <root><host>/etc/passwd: not there
    write_in_root(root, str(host / "etc/passwd"), "in-image\n")
    assert read_in_root(root, "/etc/motd") == "in-image\n"  # the image's own target, not the host's
    os.mkfifo(root / "etc/fifo")
    assert read_in_root(root, "/etc/fifo") is None  # never opened: it would block the build
    assert in_root(root, "/etc/motd").is_symlink()  # the last component is not followed
