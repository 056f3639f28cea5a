"""Each seal step against a dirty root: its check finds the dirt, its apply removes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imagefactory.steps import seal
from imagefactory.steps.seal import SEAL_STEPS

CACHES = ("var/lib/apt/lists", "var/cache/apt")


def dirty_root(root: Path) -> Path:
    files = {
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/ssh/ssh_host_ed25519_key": "PRIVATE",
        "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA",
        "etc/ssh/sshd_config": "# keep me\n",
        "var/lib/cloud/instances/i-1/obj.pkl": "x",
        "var/log/cloud-init.log": "old",
        "etc/hostname": "buildhost\n",
        "etc/resolv.conf": "nameserver 10.9.9.9\n",
        "etc/hosts": "127.0.0.1 localhost buildhost\n",
        "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease": "x",
        "var/cache/apt/pkgcache.bin": "x",
        "var/log/dpkg.log": "installed things",
        "var/log/apt/history.log.1.gz": "old",
        "root/.bash_history": "ls\n",
        "home/debian/.lesshst": "x",
        "var/lib/systemd/random-seed": "seed",
        "root/.ssh/authorized_keys": "ssh-ed25519 BUILD",
        "etc/sudoers.d/imagefactory-build": "ALL",
        "usr/sbin/policy-rc.d": "exit 101",
        "tmp/build-scratch": "x",
        "etc/rancher/node/password": "reused",
        "var/lib/rancher/rke2/server/db/state.db": "x",
        "var/lib/rancher/rke2/agent/client-kubelet.crt": "x",
        "var/lib/rancher/rke2/agent/images/.cache.json": '{"a": 1}',
        "etc/rancher/rke2/config.yaml.d/50-join.yaml": "token: s",
        "etc/rancher/rke2/config.yaml": "profile: cis\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n"
                      "debian:x:1000:1000:Debian:/home/debian:/bin/bash\n",
        "etc/shadow": "root:*:19000:0:99999:7:::\ndebian:!:19000:0:99999:7:::\n",
        "etc/group": "root:x:0:\nsudo:x:27:debian\nadm:x:4:syslog,debian\ndebian:x:1000:\n",
        "etc/sudoers.d/90-cloud-init-users": "debian ALL=(ALL) NOPASSWD:ALL\n",
        "home/debian/.ssh/authorized_keys": "ssh-ed25519 PACKER-BUILD-KEY\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.mark.parametrize("step", SEAL_STEPS, ids=[s.name for s in SEAL_STEPS])
def test_each_step_finds_and_fixes_its_dirt(tmp_path: Path, step: seal.SealStep) -> None:
    root = dirty_root(tmp_path)
    assert step.check(root, CACHES), f"{step.name}: check did not notice a dirty root"
    step.apply(root, CACHES)
    assert step.check(root, CACHES) == []


def test_seal_leaves_a_clean_root_and_keeps_what_matters(tmp_path: Path) -> None:
    root = dirty_root(tmp_path)
    seal.seal(root, CACHES)
    assert seal.check(root, CACHES) == []
    assert (root / "etc/machine-id").read_text() == ""  # empty, not missing
    assert (root / "etc/ssh/sshd_config").exists()
    assert (root / "var/log/dpkg.log").stat().st_size == 0  # truncated, not removed
    assert not (root / "var/log/apt/history.log.1.gz").exists()
    assert (root / "var/lib/apt/lists").is_dir()
    assert (root / "etc/hostname").read_text() == "localhost\n"
    assert "buildhost" not in (root / "etc/hosts").read_text()
    assert (root / "etc/rancher/rke2/config.yaml").is_file()  # static config stays
    assert (root / "var/lib/rancher/rke2/agent/images/.cache.json").read_bytes() == b""
    # the build VM's login user is gone, system accounts and other group members stay
    assert (root / "etc/passwd").read_text() == ("root:x:0:0:root:/root:/bin/bash\n"
                                                 "_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n")
    assert (root / "etc/group").read_text() == "root:x:0:\nsudo:x:27:\nadm:x:4:syslog\n"
    assert not (root / "home/debian").exists()


def test_resolv_conf_symlink_is_kept(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    seal.seal_resolv_conf(tmp_path, CACHES)
    assert (tmp_path / "etc/resolv.conf").is_symlink()
    assert seal.check_resolv_conf(tmp_path, CACHES) == []


def test_every_seal_step_has_a_booted_test() -> None:
    """The booted hygiene suite mirrors the seal steps one for one."""
    suite = (Path(seal.__file__).parent.parent / "testing/suites/test_hygiene.py").read_text()
    mirror = {
        "machine-id": "test_machine_id_generated_on_first_boot",
        "ssh-host-keys": "test_ssh_host_keys_generated_on_first_boot",
        "cloud-init": "test_cloud_init_state_is_this_instance_only",
        "hostname": "test_hostname_from_cloud_init_not_build_host",
        "resolv-conf": "test_resolv_conf_not_from_build_host",
        "hosts": "test_etc_hosts_is_sane",
        "package-caches": "test_no_package_caches",
        "logs": "test_logs_are_from_this_boot",
        "shell-history": "test_no_shell_history",
        "random-seed": "test_random_seed_not_baked",
        "build-keys": "test_no_build_keys",
        "policy-rc-d": "test_services_may_start",
        "tmp": "test_tmp_is_clean",
        "rke2-node-state": "test_no_rke2_node_state",
        "build-users": "test_no_build_users",
    }
    assert set(mirror) == {s.name for s in SEAL_STEPS}
    for test in mirror.values():
        assert f"def {test}(" in suite, test


def test_links_in_a_downloaded_image_never_reach_the_host(tmp_path: Path) -> None:
    """A cloud image (the Packer builder's root comes from upstream) whose directories are links
    out of the root: sealing stays inside the root and the host's files survive."""
    host = tmp_path / "host"  # stands in for the build host's own /var/log, /tmp, a home
    for d in ("log", "tmp", "home/alice"):
        (host / d).mkdir(parents=True)
        (host / d / "keep.log").write_text("host data\n")
    (host / "home/alice/.bash_history").write_text("host history\n")
    root = dirty_root(tmp_path / "img")
    shutil.rmtree(root / "var/log")
    (root / "var/log").symlink_to(host / "log")  # absolute: resolved inside the root, not here
    shutil.rmtree(root / "var/tmp", ignore_errors=True)
    (root / "var/tmp").symlink_to("../../../../../../../../" + str(host / "tmp"))
    (root / "home").mkdir(exist_ok=True)
    (root / "home/alice").symlink_to(host / "home/alice")
    seal.seal(root, CACHES)
    for d in ("log", "tmp", "home/alice"):
        assert (host / d / "keep.log").read_text() == "host data\n", d
    assert (host / "home/alice/.bash_history").read_text() == "host history\n"
    assert (root / "var/log").is_symlink()  # the image's own link, left as it was
