"""`files` entries land inside the image root, whatever links the image holds."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from imagefactory.builders.rootfs import write_files
from imagefactory.errors import BuildError
from imagefactory.recipes.model import FileSpec


def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "var").mkdir()
    ids = f"{os.getuid()}:{os.getgid()}"
    (root / "etc/passwd").write_text(f"root:x:{ids}::/root:/bin/sh\n")
    (root / "etc/group").write_text(f"root:x:{os.getgid()}:\n")
    # As Debian ships them: absolute directory links that point at the host when followed naively.
    (root / "var/run").symlink_to("/run")
    (root / "etc/ssl-certs").symlink_to("../../../../../../etc")
    return root


def ctx(root: Path, recipe_dir: Path, *files: FileSpec) -> Any:
    return SimpleNamespace(root=root, recipe=SimpleNamespace(files=list(files)),
                           loaded=SimpleNamespace(directory=recipe_dir))


def test_writes_follow_the_images_links_inside_the_root(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    name = f"imagefactory-test-{os.getpid()}"
    write_files(ctx(root, tmp_path,
                    FileSpec(path=f"/var/run/{name}/x.conf", content="in the image\n"),
                    FileSpec(path=f"/etc/ssl-certs/{name}.pem", content="cert\n", mode="0600")))
    assert (root / f"run/{name}/x.conf").read_text() == "in the image\n"
    assert not Path(f"/run/{name}").exists()  # the build host's /run is untouched
    # a relative link climbing out of the root stops at the root: ../../../etc is the image's /etc
    assert (root / f"etc/{name}.pem").read_text() == "cert\n"
    assert not Path(f"/etc/{name}.pem").exists()
    assert (root / f"etc/{name}.pem").stat().st_mode & 0o777 == 0o600


def test_a_link_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("host file\n")
    (root / "etc/motd").symlink_to(outside)
    write_files(ctx(root, tmp_path, FileSpec(path="/etc/motd", content="hello\n")))
    assert outside.read_text() == "host file\n"
    assert not (root / "etc/motd").is_symlink() and (root / "etc/motd").read_text() == "hello\n"


def test_a_template_escape_fails_the_step(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    (tmp_path / "t.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    with pytest.raises(BuildError, match=r"files\[0\].template: t.j2:1: refused by the sandbox"):
        write_files(ctx(root, tmp_path, FileSpec(path="/etc/t", template="t.j2")))
