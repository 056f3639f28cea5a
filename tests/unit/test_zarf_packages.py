"""Zarf package checks before baking (imagefactory.zarf_packages), against packages laid out as
`zarf package create` v0.84.0 lays them out (tests/standins/release.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from imagefactory.artifacts import Artifact
from imagefactory.errors import BuildError
from imagefactory.steps.rke2 import _checked_packages
from imagefactory.zarf_packages import PackageProblem, check_package, load_public_key
from tests.standins.release import (
    _tar_bytes,
    cosign_key_pair,
    make_zarf_package,
    tamper_zarf_yaml,
    zstd_compress,
)


@pytest.fixture(scope="module")
def keys() -> tuple[object, object, object]:
    public, private = cosign_key_pair()
    other, _ = cosign_key_pair()
    return load_public_key(public, "cosign.pub"), private, load_public_key(other, "other.pub")


def test_signed_packages_verify(tmp_path: Path, keys: tuple) -> None:
    key, private, _ = keys
    bundle = make_zarf_package(tmp_path / "zarf-package-a-amd64-1.0.0.tar.zst", "a", sign=private)
    legacy = make_zarf_package(tmp_path / "zarf-package-b-amd64-2.0.0.tar", "b", "2.0.0", sign=private,
                               legacy=True)
    a, b = check_package(bundle, key), check_package(legacy, key)
    assert (a.name, a.version, a.signed, a.signature) == ("a", "1.0.0", True, "bundle")
    assert (b.name, b.version, b.signed, b.signature) == ("b", "2.0.0", True, "legacy")
    # without a key: integrity only, as `zarf package deploy` without --key
    assert check_package(bundle, None).signature is None
    # by content, not by name: the build reads them from the content-addressed cache (no suffix)
    cached = tmp_path / "cache-entry"
    cached.write_bytes(bundle.read_bytes())
    assert check_package(cached, key).signature == "bundle"


@pytest.mark.parametrize("case", ["unsigned", "other-key", "tampered-bundle", "tampered-legacy",
                                  "extra-file", "changed-component", "junk", "no-zarf-yaml"])
def test_refused(tmp_path: Path, keys: tuple, case: str) -> None:
    key, private, other = keys
    signed = make_zarf_package(tmp_path / "zarf-package-s-amd64-1.0.0.tar.zst", "s", sign=private)
    use = key
    if case == "unsigned":
        pkg, want = make_zarf_package(tmp_path / "u.tar", "u"), "the package is not signed"
    elif case == "other-key":
        pkg, use, want = signed, other, "bundle signature does not match zarf.yaml"
    elif case == "tampered-bundle":
        pkg = tamper_zarf_yaml(signed, tmp_path / "t.tar.zst", b"version: 1.0.0", b"version: 1.0.1")
        want = "zarf.bundle.sig was made for a different zarf.yaml"
    elif case == "tampered-legacy":
        legacy = make_zarf_package(tmp_path / "l.tar", "l", sign=private, legacy=True)
        pkg = tamper_zarf_yaml(legacy, tmp_path / "tl.tar", b"required: true", b"required: false")
        want = "legacy signature does not match"
    elif case == "extra-file":
        pkg = make_zarf_package(tmp_path / "x.tar", "x", sign=private, extra={"images/blobs/evil": b"x"})
        want = "additional files not present in the checksum images/blobs/evil"
    elif case == "changed-component":
        pkg = make_zarf_package(tmp_path / "c.tar", "c", sign=private,
                                extra={"components/c.tar": b"replaced"})  # a second member, same name
        want = "components/c.tar: sha256"
    elif case == "junk":
        (pkg := tmp_path / "j.tar.zst").write_bytes(zstd_compress(b"not a tar" * 100))
        want = "not a readable Zarf package archive"
    else:
        (pkg := tmp_path / "n.tar").write_bytes(_tar_bytes([("checksums.txt", b"", 0o644)]))
        want = "zarf.yaml missing"
    with pytest.raises(PackageProblem, match=want):
        check_package(pkg, use)  # type: ignore[arg-type]


def test_keys(tmp_path: Path) -> None:
    with pytest.raises(PackageProblem, match=r"k\.pub: not a PEM public key"):
        load_public_key(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nx\n", "k.pub")


def test_build_refuses_a_package_the_site_would_refuse(tmp_path: Path) -> None:
    """The install-zarf step's check (steps/rke2.py): with zarf.verify an unsigned package fails the
    build, naming the package; the manifest records what was verified."""
    public, private = cosign_key_pair()
    (tmp_path / "cosign.pub").write_bytes(public)
    good = make_zarf_package(tmp_path / "zarf-package-good-amd64-1.0.0.tar.zst", "good", sign=private)
    bad = make_zarf_package(tmp_path / "zarf-package-bad-amd64-1.0.0.tar", "bad")
    files = {p.name: p for p in (good, bad)}

    def ctx(*names: str, verify: bool = True) -> SimpleNamespace:
        zarf = SimpleNamespace(verify=SimpleNamespace(key="cosign.pub") if verify else None)
        return SimpleNamespace(
            recipe=SimpleNamespace(name="r", zarf=zarf), loaded=SimpleNamespace(directory=tmp_path),
            locked=[Artifact(n, "0" * 64, f"https://x.example/{n}", "zarf-package") for n in names],
            fetcher=SimpleNamespace(get=lambda a, _recipe: files[a.name]))

    key = load_public_key(public, "cosign.pub")
    checked = _checked_packages(ctx(good.name), key)  # type: ignore[arg-type]
    assert checked == {good.name: {"name": "good", "kind": "ZarfPackageConfig", "version": "1.0.0",
                                   "signed": True, "signature_verified": "bundle"}}
    with pytest.raises(BuildError) as e:
        _checked_packages(ctx(good.name, bad.name), key)  # type: ignore[arg-type]
    assert e.value.message == (f"zarf package {bad.name}: verification material was provided but "
                               "the package is not signed")
    assert "re-sign it" in (e.value.hint or "")
    # without zarf.verify the unsigned package is baked (zarf deploys it with a warning)
    unkeyed = _checked_packages(ctx(bad.name, verify=False), None)  # type: ignore[arg-type]
    assert unkeyed[bad.name]["signed"] is False
