"""steps/apparmor.py: the image's AppArmor policy compiled at build time for the kernel it boots.
Whether the guest then boots from that cache is the booted `recipe` suite's check
(`test_apparmor_policy_loaded_from_the_shipped_cache`), run on ubuntu-24.04-base in the VM tier."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from imagefactory.steps import apparmor

NOBLE_KERNEL = "6.8.0-90-generic"


@pytest.mark.parametrize(("release", "expected"), [
    ("6.8.0-90-generic", "6.8.0-generic"), ("5.15.0-164-generic", "5.15.0-generic"),
    ("6.1.0-41-amd64", "6.1.0-amd64"), ("6.8.0-1012.13-kvm", "6.8.0-kvm"),
    ("6.8.0", None), ("vmlinuz", None), ("6.8.0-90-generic/../../etc", None)])
def test_kernel_series(release: str, expected: str | None) -> None:
    assert apparmor.series(release) == expected


def test_the_shipped_feature_sets() -> None:
    noble = apparmor.features_for("ubuntu", NOBLE_KERNEL)
    assert noble is not None and noble.name == "ubuntu-6.8.0-generic"
    jammy = apparmor.features_for("ubuntu", "5.15.0-204-generic")
    assert jammy is not None and jammy.name == "ubuntu-5.15.0-generic"
    text = noble.read_text()
    assert "policy {" in text and "domain {" in text  # aa-features-abi -x: flattened features
    assert apparmor.features_for("debian", NOBLE_KERNEL) is None  # another family's kernel
    assert apparmor.features_for("ubuntu", "6.11.0-9-generic") is None


class FakeChroot:
    """The context the step sees: its root, recipe family, manifest and chroot commands. The
    parser writes a cache directory as the real one does (named by the features it was given)."""

    def __init__(self, root: Path, family: str = "ubuntu") -> None:
        self.root = root
        self.recipe = SimpleNamespace(os=SimpleNamespace(family=family))
        self.manifest: dict[str, Any] = {}
        self.calls: list[list[str]] = []
        self.features_seen: bytes | None = None

    def in_root(self, argv: list[str], check: bool = True, env: dict[str, str] | None = None) -> Any:
        self.calls.append(list(argv))
        staged = self.root / argv[argv.index("--kernel-features") + 1].lstrip("/")
        self.features_seen = staged.read_bytes()
        cache = self.root / argv[argv.index("--cache-loc") + 1].lstrip("/") / "b8ec2925.0"
        cache.mkdir(parents=True)
        for name in (".features", "rsyslogd", "1password"):
            (cache / name).write_text("compiled\n")
        return SimpleNamespace(returncode=0, stdout="", stderr="")


def image_root(tmp_path: Path, kernel: str, parser: bool = True) -> Path:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / f"boot/vmlinuz-{kernel}").write_text("kernel")
    if parser:
        (root / "sbin").mkdir()
        (root / "sbin/apparmor_parser").write_text("#!/bin/sh\n")
    return root


def test_compiles_for_the_kernels_feature_set(tmp_path: Path) -> None:
    ctx = FakeChroot(image_root(tmp_path, NOBLE_KERNEL))
    apparmor.apparmor_cache(ctx)  # type: ignore[arg-type]
    [argv] = ctx.calls
    assert argv[0] == "apparmor_parser" and "--skip-kernel-load" in argv and "--write-cache" in argv
    assert argv[-2:] == ["--", "/etc/apparmor.d"]
    features = apparmor.features_for("ubuntu", NOBLE_KERNEL)
    assert features is not None and ctx.features_seen == features.read_bytes()
    assert not list((ctx.root / "tmp").iterdir())  # the staged features file is gone
    assert ctx.manifest["apparmor_cache"] == {"kernel": NOBLE_KERNEL, "features": "ubuntu-6.8.0-generic",
                                              "directories": {"b8ec2925.0": 3}}


def test_no_feature_set_no_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctx = FakeChroot(image_root(tmp_path, "6.11.0-9-generic"))
    with caplog.at_level(logging.INFO):
        apparmor.apparmor_cache(ctx)  # type: ignore[arg-type]
    assert ctx.calls == [] and ctx.manifest["apparmor_cache"] is None
    assert "no AppArmor feature set known for kernel 6.11.0-9-generic" in caplog.text


def test_no_apparmor_nothing_to_do(tmp_path: Path) -> None:
    ctx = FakeChroot(image_root(tmp_path, NOBLE_KERNEL, parser=False))
    apparmor.apparmor_cache(ctx)  # type: ignore[arg-type]
    assert ctx.calls == [] and ctx.manifest["apparmor_cache"] is None
