"""Release files verified before a bootstrap: a file:// mirror signed by a throwaway key, its
tampered, re-signed and incomplete variants (gpg and gpgv are the real tools)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefactory import archive
from imagefactory.errors import UserError
from imagefactory.recipes import RecipeBook
from tests.aptsign import gpg, publish
from tests.conftest import RECIPES


def test_inline_signed_release_verifies_and_names_the_key(tmp_path: Path, apt_keys: dict[str, Path]) -> None:
    publish(tmp_path, "jammy", "jammy", apt_keys["archive-home"])
    found = archive.verify(f"file://{tmp_path}", "jammy", str(apt_keys["archive"]), key="source.keyring",
                           required=True)
    assert found is not None and len(found.signer) == 40
    assert found.fields["Codename"] == "jammy"
    assert found.release == (tmp_path / "dists/jammy/Release").read_bytes()  # the signed text itself
    archive.check_suite(found, "jammy", ("main", "universe"))


def test_detached_signature_when_there_is_no_inrelease(tmp_path: Path, apt_keys: dict[str, Path]) -> None:
    publish(tmp_path, "jammy", "jammy", apt_keys["archive-home"], inline=False, detached=True)
    found = archive.verify(f"file://{tmp_path}", "jammy", str(apt_keys["archive"]), key="k", required=True)
    assert found is not None and found.signer


def test_a_tampered_release_is_refused(tmp_path: Path, apt_keys: dict[str, Path]) -> None:
    d = publish(tmp_path, "jammy", "jammy", apt_keys["archive-home"])
    signed = (d / "InRelease").read_text()
    (d / "InRelease").write_text(signed.replace("Components: main", "Components: evil main"))
    with pytest.raises(UserError, match=r"source.keyring: .*jammy/InRelease: BAD signature"):
        archive.verify(f"file://{tmp_path}", "jammy", str(apt_keys["archive"]), key="source.keyring",
                       required=True)


def test_a_release_signed_by_another_key_is_refused(tmp_path: Path, apt_keys: dict[str, Path]) -> None:
    publish(tmp_path, "jammy", "jammy", apt_keys["other-home"])
    with pytest.raises(UserError, match="signed by no key in the keyring") as e:
        archive.verify(f"file://{tmp_path}", "jammy", str(apt_keys["archive"]), key="source.keyring",
                       required=True)
    assert "source.keyring" in (e.value.hint or "")


def test_unsigned_mirror_missing_suite_and_bad_keyrings(tmp_path: Path, apt_keys: dict[str, Path]) -> None:
    publish(tmp_path, "jammy", "jammy", apt_keys["archive-home"], inline=False)
    with pytest.raises(UserError, match="is not signed"):
        archive.verify(f"file://{tmp_path}", "jammy", str(apt_keys["archive"]), key="k", required=True)
    assert archive.verify(f"file://{tmp_path}", "jammy-updates", str(apt_keys["archive"]), key="k",
                          required=False) is None
    with pytest.raises(UserError, match="not found"):
        archive.verify(f"file://{tmp_path}", "noble", str(apt_keys["archive"]), key="k", required=True)
    with pytest.raises(UserError, match=r"keyring 'relative\.gpg' not found"):
        archive.verify(f"file://{tmp_path}", "jammy", "relative.gpg", key="k", required=True)
    armored = tmp_path / "key.asc"
    armored.write_bytes(gpg(apt_keys["archive-home"], "--armor", "--export"))
    with pytest.raises(UserError, match="ASCII-armored"):
        archive.verify(f"file://{tmp_path}", "jammy", str(armored), key="k", required=True)


def test_suite_of_another_release_or_missing_component(tmp_path: Path, apt_keys: dict[str, Path]) -> None:
    publish(tmp_path, "jammy", "noble", apt_keys["archive-home"], served="noble")  # noble under jammy's path
    found = archive.verify(f"file://{tmp_path}", "jammy", str(apt_keys["archive"]), key="k", required=True)
    assert found is not None
    with pytest.raises(UserError, match=r"source\.suite: .* is 'noble', not jammy"):
        archive.check_suite(found, "jammy", ("main",))
    publish(tmp_path, "jammy-security", "jammy", apt_keys["archive-home"], components="main")
    found = archive.verify(f"file://{tmp_path}", "jammy-security", str(apt_keys["archive"]), key="k",
                           required=True)
    assert found is not None
    archive.check_suite(found, "jammy", ("main",))
    with pytest.raises(UserError, match=r"source\.components: .* does not serve universe") as e:
        archive.check_suite(found, "jammy", ("main", "universe"))
    assert e.value.hint == "it serves: main"


def test_pockets_of_debian_and_ubuntu() -> None:
    book = RecipeBook(RECIPES)
    assert archive.pocket_suites(book.load("ubuntu-22.04-base").recipe) == {
        "updates": ("http://archive.ubuntu.com/ubuntu", "jammy-updates"),
        "security": ("http://archive.ubuntu.com/ubuntu", "jammy-security")}
    assert archive.pocket_suites(book.load("debian-12-base").recipe) == {
        "updates": ("http://deb.debian.org/debian", "bookworm-updates"),
        "security": ("http://deb.debian.org/debian-security", "bookworm-security")}
    assert archive.pocket_suites(book.load("sle-micro-5.5-base").recipe) == {}
