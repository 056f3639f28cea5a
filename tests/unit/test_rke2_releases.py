"""RKE2's release history against recipes: image sets, CNI and ingress images, the cis profile."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from imagefactory.artifacts import Artifact
from imagefactory.errors import BuildError, UserError, ValidationError
from imagefactory.lock import check_entry
from imagefactory.recipes import RecipeBook
from imagefactory.recipes.model import Rke2
from imagefactory.recipes.rke2_releases import (
    images_needed,
    missing_images,
    release_problems,
    unknown_config_keys,
)
from imagefactory.steps.rke2 import STIG_CONFIG, _checked_image_tarballs
from imagefactory.tarballs import ArchiveProblem, image_refs
from tests.conftest import MINIMAL, write
from tests.standins.release import _tar_bytes, image_list, make_rke2_release, zstd_compress


def rke2(**kw: Any) -> Rke2:
    return Rke2.model_validate({"version": "v1.31.4+rke2r1", **kw})


def found(version: str, **kw: Any) -> list[tuple[tuple[str | int, ...], str]]:
    return [(p.key, p.message) for p in release_problems(rke2(**kw), version)]


def test_the_shipped_node_configuration_fits_its_release() -> None:
    assert found("v1.31.4+rke2r1", images=("core", "canal"), config={"cni": "canal"}) == []
    assert found("v1.31.4+rke2r1", images="all") == []  # the full tarball: core + canal


@pytest.mark.parametrize(("version", "images", "config", "key", "words"), [
    # traefik moved into core with v1.36, and ingress-nginx became a set of its own
    ("v1.36.0+rke2r1", ("core", "canal", "traefik"), {}, ("images", 2), "no 'traefik' image set"),
    ("v1.31.4+rke2r1", ("core", "canal", "ingress-nginx"), {}, ("images", 2), "no 'ingress-nginx' image set"),
    ("v1.31.4+rke2r1", ("core", "canal"), {"ingress-controller": "traefik"}, ("images",),
     "ingress-controller: traefik runs the 'traefik' images"),
    ("v1.36.0+rke2r1", ("core", "canal"), {"ingress-controller": ["ingress-nginx"]}, ("images",),
     "runs the 'ingress-nginx' images"),
    ("v1.31.4+rke2r1", ("core", "canal"), {"cni": "multus,canal"}, ("images",),
     "cni: multus,canal runs the 'multus'"),
    ("v1.31.4+rke2r1", ("core", "canal"), {"cni": "cilium"}, ("images",), "runs the 'cilium' images"),
    ("v1.31.4+rke2r1", "all", {"cni": "calico"}, ("images",), "runs the 'calico' images"),
])
def test_image_sets_follow_the_version_the_cni_and_the_ingress(
        version: str, images: Any, config: dict[str, Any], key: tuple[str | int, ...], words: str) -> None:
    got = found(version, images=images, config=config)
    assert len(got) == 1 and got[0][0] == key and words in got[0][1], got


def test_defaults_need_no_extra_set_on_either_side_of_the_split() -> None:
    assert found("v1.36.0+rke2r1", images=("core", "canal")) == []
    assert found("v1.36.0+rke2r1", images=("core", "canal", "ingress-nginx"),
                 config={"ingress-controller": "ingress-nginx"}) == []
    assert found("v1.31.4+rke2r1", images=("core",), config={"cni": "none"}) == []


@pytest.mark.parametrize(("version", "ok"), [
    ("v1.28.2+rke2r1", True), ("v1.28.1+rke2r1", False), ("v1.27.6+rke2r1", True),
    ("v1.27.5+rke2r1", False), ("v1.26.9+rke2r1", True), ("v1.25.14+rke2r1", True),
    ("v1.25.13+rke2r1", False), ("v1.24.17+rke2r1", False), ("v1.33.1+rke2r1", True),
])
def test_cis_profile_exists_from_its_release(version: str, ok: bool) -> None:
    got = found(version, images=("core", "canal"))
    assert (got == []) is ok, got
    if not ok:
        assert got[0][0] == ("profile",) and "does not know the 'cis' profile" in got[0][1]
    assert found(version, images=("core", "canal"), profile=None) == []


def recipe_problems(recipe_dir: Path, rke2_section: str) -> tuple[Path, list[str]]:
    """The validation problems of a minimal recipe with this `rke2:` section (and its file)."""
    p = write(recipe_dir, "r", MINIMAL + rke2_section)
    with pytest.raises(ValidationError) as e:
        RecipeBook(recipe_dir).load("r")
    return p, [str(x) for x in e.value.problems]


def test_a_mismatch_is_a_recipe_error_naming_the_line(recipe_dir: Path) -> None:
    p, problems = recipe_problems(recipe_dir, "rke2:\n  version: v1.36.0+rke2r1\n"
                                              "  images: [core, canal, traefik]\n")
    assert len(problems) == 1 and problems[0].startswith(f"{p}:5: rke2.images[2]: RKE2 v1.36.0+rke2r1 "
                                                         "publishes no 'traefik' image set"), problems
    assert "traefik is part of core from v1.36" in problems[0]


def test_cli_validate_exits_2_fast(recipe_dir: Path) -> None:
    write(recipe_dir, "r", MINIMAL + "rke2:\n  version: v1.27.5+rke2r1\n")
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "imagefactory.cli", "--recipes", str(recipe_dir), "recipes",
                        "validate", "r"], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t < 5
    assert r.returncode == 2, r.stderr
    assert "rke2.profile: RKE2 v1.27.5+rke2r1 does not know the 'cis' profile" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_channel_is_checked_against_the_locked_version(recipe_dir: Path) -> None:
    write(recipe_dir, "r", MINIMAL + "rke2:\n  channel: stable\n  images: [core, canal, traefik]\n")
    recipe = RecipeBook(recipe_dir).load("r").recipe
    check_entry(recipe, {"rke2": {"version": "v1.31.4+rke2r1"}, "artifacts": []})
    with pytest.raises(UserError) as e:
        check_entry(recipe, {"rke2": {"version": "v1.36.0+rke2r1"}, "artifacts": []})
    assert str(e.value).startswith("r: rke2.images[2]: channel 'stable' resolves to v1.36.0+rke2r1: "
                                   "RKE2 v1.36.0+rke2r1 publishes no 'traefik' image set"), str(e.value)
    assert e.value.hint is not None and "remove 'traefik'" in e.value.hint


# --- the images inside the tarballs (install-rke2's check) -----------------------------------------


def _saved(path: Path, refs: list[str], oci: bool = False) -> Path:
    """A `docker image save` look-alike (manifest.json RepoTags) or an OCI layout (index.json)."""
    if oci:
        index = {"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "0" * 64,
             "size": 1, "annotations": {"io.containerd.image.name": r}} for r in refs]}
        members = [("index.json", json.dumps(index).encode(), 0o644), ("oci-layout", b"{}", 0o644)]
    else:
        saved = [{"Config": "c.json", "RepoTags": refs, "Layers": []}]
        members = [("manifest.json", json.dumps(saved).encode(), 0o644)]
    path.write_bytes(zstd_compress(_tar_bytes(members)))
    return path


@pytest.mark.parametrize("version", ["v1.31.4+rke2r1", "v1.36.4+rke2r1"])
def test_stand_in_tarballs_hold_what_the_default_configuration_needs(tmp_path: Path, version: str) -> None:
    rel = make_rke2_release(tmp_path, version, images=("core", "canal"))
    refs = [r for n in ("core", "canal")
            for r in image_refs(rel.directory / f"rke2-images-{n}.linux-amd64.tar.zst")]
    assert missing_images(images_needed(rke2(images=["core", "canal"]), version), refs) == []


def test_missing_runtime_cni_and_ingress_images_are_named(tmp_path: Path) -> None:
    version = "v1.31.4+rke2r1"
    core = [r for r in image_list("core", version) if "rke2-runtime" not in r and "nginx-ingress" not in r]
    refs = image_refs(_saved(tmp_path / "core", [*core, "docker.io/rancher/rke2-runtime:v1.31.3-rke2r1"]))
    needs = images_needed(rke2(images=["core", "cilium"], config={"cni": "cilium"}), version)
    missing = missing_images(needs, refs)
    assert missing == [
        "rancher/rke2-runtime:v1.31.4-rke2r1 (RKE2 v1.31.4+rke2r1 runs its runtime image)",
        "rancher/mirrored-cilium-cilium (cni: cilium (cilium))",
        "rancher/mirrored-cilium-operator-generic (cni: cilium (cilium))",
        "rancher/nginx-ingress-controller (ingress-controller (in core) (ingress-nginx))",
    ]
    # the OCI layout form (index.json annotations), short names normalised to docker.io
    oci = image_refs(_saved(tmp_path / "oci", ["rancher/rke2-runtime:v1.31.4-rke2r1"], oci=True))
    assert oci == ["docker.io/rancher/rke2-runtime:v1.31.4-rke2r1"]
    (tmp_path / "junk").write_bytes(b"junk" * 100)
    with pytest.raises(ArchiveProblem, match="not a readable tar archive"):
        image_refs(tmp_path / "junk")
    with pytest.raises(ArchiveProblem, match="not a saved-image tarball"):
        image_refs(_saved_plain(tmp_path / "plain"))


def _saved_plain(path: Path) -> Path:
    path.write_bytes(_tar_bytes([("hello.txt", b"hi", 0o644)]))
    return path


def test_install_step_refuses_tarballs_of_another_release(tmp_path: Path) -> None:
    """install-rke2 opens the locked tarballs: the right names and hashes of the wrong release
    (a mirror that re-published, a lock edited by hand) fail the build before install.sh runs."""
    old = make_rke2_release(tmp_path / "old", "v1.31.3+rke2r1", images=("core", "canal"))
    new = make_rke2_release(tmp_path / "new", "v1.31.4+rke2r1", images=("core", "canal"))

    def ctx(release_dir: Path) -> SimpleNamespace:
        names = [f"rke2-images-{n}.linux-amd64.tar.zst" for n in ("core", "canal")]
        return SimpleNamespace(
            recipe=SimpleNamespace(name="r", rke2=rke2(images=["core", "canal"])),
            lock_entry={"rke2": {"version": "v1.31.4+rke2r1"}},
            locked=[Artifact(n, "0" * 64, f"https://x.example/{n}", "rke2-images") for n in names],
            fetcher=SimpleNamespace(get=lambda a, _r: release_dir / a.name))

    got = _checked_image_tarballs(ctx(new.directory))  # type: ignore[arg-type]
    assert "docker.io/rancher/rke2-runtime:v1.31.4-rke2r1" in got["rke2-images-core.linux-amd64.tar.zst"]
    canal = got["rke2-images-canal.linux-amd64.tar.zst"]
    assert "docker.io/rancher/hardened-flannel:v0.26.1-build20250101" in canal
    with pytest.raises(BuildError) as e:
        _checked_image_tarballs(ctx(old.directory))  # type: ignore[arg-type]
    assert "lack: rancher/rke2-runtime:v1.31.4-rke2r1 (RKE2 v1.31.4+rke2r1 runs its runtime image); " \
        "rancher/hardened-kubernetes:v1.31.4-rke2r1-*" in e.value.message


def test_the_baked_stig_config_uses_only_settings_rke2_reads() -> None:
    """A typo in our own hardening (`kubelet-args`) would be skipped by rke2 with a warning."""
    assert unknown_config_keys(STIG_CONFIG) == []
    assert unknown_config_keys({"kubelet-args": [], "kube-apiserver-arg+": [], "cni": "canal",
                                "etcd-extra-mount": [], "write-kubeconfig-mod": "0600"}) == [
        ("kubelet-args", "kubelet-arg"), ("write-kubeconfig-mod", "write-kubeconfig-mode")]


def test_unknown_rke2_settings_are_recipe_errors(recipe_dir: Path) -> None:
    p, found = recipe_problems(recipe_dir, "rke2:\n  version: v1.31.4+rke2r1\n  config:\n"
                                           "    kubelet-args: [max-pods=200]\n"
                                           "    kube-apiserver-arg+: [v=2]\n")
    assert len(found) == 1 and found[0].startswith(f"{p}:") and "rke2.config.kubelet-args" in found[0]
    assert "Unknown flag --kubelet-args found in config.yaml, skipping" in found[0]
    assert "did you mean 'kubelet-arg'?" in found[0]
