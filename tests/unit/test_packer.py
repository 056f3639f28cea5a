"""The packer wrapper against fake packer binaries (the real one runs in the integration and VM
tiers): version checks, validate, machine-readable build output, failures, timeout/Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from imagefactory import packer as pk
from imagefactory.builders.packer import explain, render_template
from imagefactory.errors import BuildError, UserError
from imagefactory.recipes import RecipeBook
from imagefactory.steps.scripts import packer_scripts
from tests.conftest import RECIPES


def fake(bin_dir: Path, body: str, version: str = "1.6.6") -> None:
    p = bin_dir / "packer"
    p.write_text(f"""#!/bin/bash
if [ "$1" = version ]; then echo "Packer v{version}"; exit 0; fi
{body}
""")
    p.chmod(0o755)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for an init that reaps slowly counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_machine_readable_lines() -> None:
    ev = pk.parse_line("1700000000,qemu.image,ui,say,==> qemu.image: a%!(PACKER_COMMA) b\\nc")
    assert ev == pk.Event(1700000000, "qemu.image", "ui", ("say", "==> qemu.image: a, b\nc"))
    assert pk.parse_line("not machine readable") is None
    assert pk.parse_version("Packer v1.6.6\n") == pk.PackerVersion(1, 6, 6)
    assert pk.parse_version("1.11.2") == pk.PackerVersion(1, 11, 2)
    assert not pk.PackerVersion(1, 6, 6).supports("init") and pk.PackerVersion(1, 9, 4).supports("init")


def test_missing_and_old_packer(fake_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_bin))
    with pytest.raises(UserError, match="packer not found") as e:
        pk.find_packer()
    assert e.value.hint and "apt-get install packer" in e.value.hint
    fake(fake_bin, "exit 0", version="1.5.4")
    with pytest.raises(UserError, match=r"packer 1\.5\.4 is too old"):
        pk.find_packer()
    fake(fake_bin, "exit 0", version="1.9.4")
    assert pk.find_packer().version == pk.PackerVersion(1, 9, 4)


def test_validate_reports_problems_with_recipe_keys(fake_bin: Path, tmp_path: Path) -> None:
    fake(fake_bin, 'echo "Error: disk_size: invalid value \\"-1M\\"" >&2; echo "Error: other" >&2; exit 1')
    problems = pk.validate(pk.find_packer(), tmp_path)
    assert problems == ['Error: disk_size: invalid value "-1M"', "Error: other"]
    assert "(from recipe key: disk.size)" in explain(problems)
    fake(fake_bin, "exit 0")
    assert pk.validate(pk.find_packer(), tmp_path) == []


BUILD_OK = r"""
[ "$1" = build ] || exit 9
case "$*" in *-machine-readable*) ;; *) exit 8;; esac
[ -n "$TMPDIR" ] && [ -d "$TMPDIR" ] && [ "$CHECKPOINT_DISABLE" = 1 ] || exit 7
echo "$TMPDIR" > "$IMAGEFACTORY_TEST_SEEN"
echo "1700000000,,ui,say,Build 'qemu.image' starting%!(PACKER_COMMA) please wait"
echo "1700000001,qemu.image,ui,message,    qemu.image: provisioner output"
echo "1700000002,qemu.image,artifact,0,file,0,/out/image.qcow2"
"""


def test_build_collects_artifacts_and_removes_tmpdir(fake_bin: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake(fake_bin, BUILD_OK)
    monkeypatch.setenv("IMAGEFACTORY_TEST_SEEN", str(tmp_path / "tmpdir-seen"))  # allow-listed for children
    seen: list[pk.Event] = []
    out = pk.build(pk.find_packer(), tmp_path, on_event=seen.append)
    assert out.artifacts == ["/out/image.qcow2"]
    assert "Build 'qemu.image' starting, please wait" in out.ui
    assert [e.type for e in seen] == ["ui", "ui", "artifact"]
    tmpdir = Path((tmp_path / "tmpdir-seen").read_text().strip())
    assert not tmpdir.exists()  # packer's private TMPDIR is gone
    # packer's plugins listen on unix sockets in TMPDIR: their paths must stay under 108 bytes
    assert len(str(tmpdir / "packer-plugin1234567890")) < 100


def test_failed_build_names_the_error_and_last_output(fake_bin: Path, tmp_path: Path) -> None:
    fake(fake_bin, r"""
echo "1700000001,qemu.image,ui,say,==> qemu.image: Provisioning with shell script: 00-packages.sh"
echo "1700000002,qemu.image,ui,error,==> qemu.image: E: Unable to locate package nosuchpkg"
echo "1700000003,qemu.image,error,Script exited with non-zero exit status: 100"
exit 1
""")
    with pytest.raises(BuildError) as e:
        pk.build(pk.find_packer(), tmp_path)
    msg = str(e.value)
    assert "exit status: 100" in msg and "00-packages.sh" in msg and "nosuchpkg" in msg


def test_timeout_stops_packer_and_its_children(fake_bin: Path, tmp_path: Path) -> None:
    # On SIGINT this packer "cleans up" (writes a marker) and exits, but leaves its child (standing
    # in for a qemu it failed to stop) behind: the SIGKILL to the process group must get it.
    pids = tmp_path / "pids"
    fake(fake_bin, f"""
echo "$TMPDIR" > {tmp_path}/tmpdir-seen
sleep 300 & echo $! > {pids}
trap 'echo cleaned > {tmp_path}/cleaned; exit 130' INT
while true; do sleep 0.1; done
""")
    start = time.monotonic()
    with pytest.raises(BuildError, match="timed out"):
        pk.build(pk.find_packer(), tmp_path, timeout=2)
    assert time.monotonic() - start < 20
    assert (tmp_path / "cleaned").read_text().strip() == "cleaned"  # SIGINT reached packer
    child = int(pids.read_text())
    time.sleep(0.3)
    assert not alive(child), f"pid {child} outlived the build"
    assert not Path((tmp_path / "tmpdir-seen").read_text().strip()).exists()


def test_template_is_loopback_only_and_runs_the_shared_scripts(tmp_path: Path) -> None:
    recipe = RecipeBook(RECIPES).load("debian-12-packer").recipe
    r = render_template(recipe, tmp_path / "t", source_image="/src.qcow2", source_checksum="ab" * 32,
                        output_directory=tmp_path / "out", key=tmp_path / "k", seed_iso=tmp_path / "s.iso",
                        mac="52:54:00:00:00:01", proxy_port=40000, console_log=tmp_path / "c.log",
                        accelerator="tcg", user="debian")
    hcl = r.template.read_text()
    assert "restrict=on" in hcl and "hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22" in hcl
    assert "0.0.0.0" not in hcl and 'vnc_bind_address = "127.0.0.1"' in hcl
    assert 'shutdown_command     = "sudo -n systemctl poweroff"' in hcl
    script = next((tmp_path / "t/scripts").glob("*-packages.sh")).read_text()
    assert script == packer_scripts(recipe)[0].text  # the very text the rootfs builder runs too
    assert "jq" in script and "auditd" in script  # recipe packages and the STIG controls' packages
    variables = r.var_file.read_text()
    assert 'disk_size = "4096M"' in variables and 'accelerator = "tcg"' in variables
    assert "cpus = 1\n" in variables and recipe.tests.cpus == 2  # TCG: one vCPU for the build VM
    assert '["-device", "virtio-rng-pci"]' in hcl  # entropy, as the clones have it
    kvm = render_template(recipe, tmp_path / "k", source_image="/src.qcow2", source_checksum="ab" * 32,
                          output_directory=tmp_path / "o2", key=tmp_path / "k2", seed_iso=tmp_path / "s.iso",
                          mac="52:54:00:00:00:01", proxy_port=40000, console_log=tmp_path / "c.log",
                          accelerator="kvm", user="debian")
    assert "cpus = 2\n" in kvm.var_file.read_text()


def test_both_builders_run_the_same_offline_steps() -> None:
    """The file-level middle (chroot .. check-seal) is one list: the Packer builder runs the rootfs
    builder's functions on its disk, minus the `packages` script it ran in the build VM."""
    from imagefactory.build import builder_steps
    from imagefactory.context import Step
    from imagefactory.recipes import RecipeBook
    from tests.conftest import RECIPES

    book = RecipeBook(RECIPES)
    rootfs = builder_steps(book.load("rke2-node").recipe)
    packer = builder_steps(book.load("rke2-node-packer").recipe)

    def middle(steps: list[Step]) -> list[Step]:
        names = [s.name for s in steps]
        return steps[names.index("enter-chroot"):names.index("check-seal") + 1]

    assert [s.run for s in middle(rootfs) if s.name != "packages"] == [s.run for s in middle(packer)]
    assert "packages" in [s.name for s in middle(rootfs)]
    assert "packages" not in [s.name for s in middle(packer)]
