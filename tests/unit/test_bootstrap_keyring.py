"""apt verifies Release files as `_apt`: the keyring handed to mmdebstrap must be readable by it
wherever the checkout lives (CI clones into a 0700 temp dir)."""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace

from imagefactory.builders.rootfs import _readable_keyring
from imagefactory.keyrings import UBUNTU_ARCHIVE


def readable_by_others(path: Path, stop: Path) -> bool:
    """Every directory from `stop` down to `path` traversable, `path` readable, by others."""
    if not path.stat().st_mode & stat.S_IROTH:
        return False
    p = path.parent
    while True:
        if not p.stat().st_mode & stat.S_IXOTH:
            return False
        if p == stop:
            return True
        p = p.parent


def test_a_keyring_in_a_private_directory_is_handed_over_readable(tmp_path: Path) -> None:
    private = tmp_path / "checkout"
    private.mkdir(mode=0o700)
    key = private / "ubuntu-archive-keyring.gpg"
    key.write_bytes(UBUNTU_ARCHIVE.read_bytes())
    key.chmod(0o600)
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o755)
    got = _readable_keyring(SimpleNamespace(scratch=scratch), key)  # type: ignore[arg-type]
    assert got.read_bytes() == key.read_bytes()
    assert readable_by_others(got, scratch) and not readable_by_others(key, tmp_path)


def test_a_keyring_directory_keeps_its_keys(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    (d / "a.gpg").write_bytes(b"A")
    (d / "b.asc").write_bytes(b"B")
    (d / "notes.txt").write_text("not a key")
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o755)
    got = _readable_keyring(SimpleNamespace(scratch=scratch), d)  # type: ignore[arg-type]
    assert got.is_dir() and sorted(p.name for p in got.iterdir()) == ["a.gpg", "b.asc"]
    assert all(readable_by_others(p, scratch) for p in got.iterdir())
