from __future__ import annotations

import time
from pathlib import Path

import pytest

from imagefactory.distros import get as distro
from imagefactory.errors import UserError, ValidationError
from imagefactory.recipes import RecipeBook
from imagefactory.recipes.load import merge, parse_yaml
from imagefactory.recipes.located import Located
from imagefactory.recipes.model import MmdebstrapSource, recipe_json_schema
from tests.conftest import MINIMAL, RECIPES, write
from tests.standins.release import cosign_key_pair


def problems(book: RecipeBook, name: str) -> list[str]:
    with pytest.raises(ValidationError) as e:
        book.load(name)
    return [str(p) for p in e.value.problems]


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_shipped_recipes_validate(name: str) -> None:
    r = RecipeBook(RECIPES).load(name).recipe
    assert r.name == name


def test_ubuntu_base_recipes_build_from_the_archive_with_hybrid_secure_boot_disks() -> None:
    book = RecipeBook(RECIPES)
    for rel, codename in (("22.04", "jammy"), ("24.04", "noble")):
        r = book.load(f"ubuntu-{rel}-base").recipe
        assert (r.builder, r.source.type) == ("rootfs", "mmdebstrap")
        assert isinstance(r.source, MmdebstrapSource)
        assert (r.source.mirror, r.source.suite) == ("http://archive.ubuntu.com/ubuntu", codename)
        assert r.source.keyring is None  # the shipped, fingerprint-checked keyring
        assert (r.disk.firmware, r.disk.secure_boot, r.disk.table) == ("hybrid", True, "gpt")
    node = book.load("rke2-node").recipe
    assert (node.extends, node.builder, node.os.release) == ("ubuntu-22.04-base", "rootfs", "22.04")
    assert book.load("rke2-node-packer").recipe.builder == "packer"
    assert book.load("ubuntu-22.04-packer").recipe.source.type == "local-image"


def test_ubuntu_cloud_recipes_point_at_upstream_cloud_images() -> None:
    book = RecipeBook(RECIPES)
    for rel in ("22.04", "24.04"):
        src = book.load(f"ubuntu-{rel}-cloud").recipe.source
        assert src.type == "cloud-image"
        assert src.url == (f"https://cloud-images.ubuntu.com/releases/{rel}/release/"
                           f"ubuntu-{rel}-server-cloudimg-amd64.img")
        assert src.checksum_url == f"https://cloud-images.ubuntu.com/releases/{rel}/release/SHA256SUMS"


def test_minimal_recipe_gets_defaults(recipe_dir: Path) -> None:
    write(recipe_dir, "m", MINIMAL)
    r = RecipeBook(recipe_dir).load("m").recipe
    assert r.disk.size == 4 * 1024**3
    assert r.tests.suites == ("hygiene", "recipe")
    assert r.builder == "rootfs"
    assert r.os.release == "12"


def test_merge_rules(recipe_dir: Path) -> None:
    write(recipe_dir, "parent", MINIMAL + """\
description: parent
packages: {install: [a, b], remove: [x]}
services: {enable: [ssh]}
kernel: {cmdline: [quiet]}
disk: {size: 8GiB}
""")
    write(recipe_dir, "child", """\
extends: parent
description: child
packages: {install: [c]}
services: {enable: null}
kernel: {cmdline: null}
disk: {compression: zlib}
""")
    r = RecipeBook(recipe_dir).load("child").recipe
    assert r.description == "child"  # scalars: last wins
    assert r.packages.install == ("a", "b", "c")  # lists append
    assert r.packages.remove == ("x",)  # maps merge deeply
    assert r.services.enable == ()  # explicit null resets
    assert r.kernel.cmdline == ()
    assert (r.disk.size, r.disk.compression) == (8 * 1024**3, "zlib")
    assert r.extends == "parent"


def test_map_with_other_type_replaces_whole() -> None:
    parent = Located({"source": {"type": "mmdebstrap", "suite": "bookworm", "mirror": "http://m"}})
    child = Located({"source": {"type": "cloud-image", "url": "https://x/img"}})
    assert merge(parent, child).data["source"] == {"type": "cloud-image", "url": "https://x/img"}


def test_all_errors_at_once_with_file_line_path_and_hint(recipe_dir: Path) -> None:
    path = write(recipe_dir, "bad", """\
os:
  family: debian
  releas: "12"
source: {type: mmdebstrap, suite: bookworm}
packages:
  instal: [a]
disk:
  size: lots
""")
    found = problems(RecipeBook(recipe_dir), "bad")
    assert any(p.startswith(f"{path}:3: os.releas: unknown key (hint: did you mean 'release'?")
               for p in found)
    assert any(p.startswith(f"{path}:6: packages.instal: unknown key") for p in found)
    assert any(p.startswith(f"{path}:1: os.release: required key is missing") for p in found)
    assert any(p.startswith(f"{path}:8: disk.size:") for p in found)
    assert len(found) == 4


def test_error_in_parent_points_at_parent_file(recipe_dir: Path) -> None:
    parent = write(recipe_dir, "parent", MINIMAL + "tests: {clones: 0}\n")
    write(recipe_dir, "child", "extends: parent\n")
    found = problems(RecipeBook(recipe_dir), "child")
    assert found == [f"{parent}:3: tests.clones: Input should be greater than or equal to 1 (got 0)"]


def test_list_item_errors_point_at_the_item(recipe_dir: Path) -> None:
    write(recipe_dir, "parent", MINIMAL + "files:\n  - {path: /a, content: x}\n")
    child = write(recipe_dir, "child", "extends: parent\nfiles:\n  - {path: /b, content: y, mode: 999}\n")
    found = problems(RecipeBook(recipe_dir), "child")
    # files[0] as the child's own file numbers it (the merged list's [1]), and the value
    assert found == [f"{child}:3: files[0].mode: must be octal permission bits such as '0644' (got 999)"]


def test_missing_extends_target(recipe_dir: Path) -> None:
    write(recipe_dir, "base", MINIMAL)
    p = write(recipe_dir, "child", "extends: bsae\n")
    found = problems(RecipeBook(recipe_dir), "child")
    assert found == [f"{p}:1: extends: recipe 'bsae' does not exist (hint: did you mean base?)"]


def test_extends_cycle(recipe_dir: Path) -> None:
    write(recipe_dir, "a", "extends: b\n")
    write(recipe_dir, "b", "extends: a\n")
    found = problems(RecipeBook(recipe_dir), "a")
    assert len(found) == 1 and "extends: cycle: a -> b -> a" in found[0]


def test_broken_yaml_names_the_line(recipe_dir: Path) -> None:
    p = write(recipe_dir, "broken", "os:\n  family: debian\n   release: 12\n")
    found = problems(RecipeBook(recipe_dir), "broken")
    assert found[0].startswith(f"{p}:3: <root>: invalid YAML")


def test_duplicate_keys_are_errors(recipe_dir: Path) -> None:
    p = write(recipe_dir, "dup", MINIMAL + "disk: {size: 4GiB}\ndisk: {size: 8GiB}\n")
    assert problems(RecipeBook(recipe_dir), "dup") == [
        f"{p}:4: disk: duplicate key (hint: remove one of the two)"]


def test_name_is_not_a_key(recipe_dir: Path) -> None:
    write(recipe_dir, "n", MINIMAL + "name: other\n")
    assert "name: unknown key" in problems(RecipeBook(recipe_dir), "n")[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("disk: {size: 1GiB}\n", "disk.size: 1 GiB is too small for a debian image"),
        ("os: {release: '10'}\n", "os.release: release '10' is not supported by family 'debian'"),
        ("source: {suite: trixie}\n", "source.suite: suite 'trixie' does not match debian 12"),
        ("os: {arch: arm64}\n", "os.arch: the rootfs builder builds only for the host architecture"),
        ("packages: {install: [a], remove: [a]}\n", "packages.remove: 'a' is both installed and removed"),
        ("services: {enable: [x], mask: [x]}\n", "services.mask: 'x' is in both services.enable"),
        ("files: [{path: /a, template: nope.j2}]\n", "files[0].template: template nope.j2: not found"),
        ("files: [{path: /a, template: ../outside.j2}]\n",
         "files[0].template: template ../outside.j2: not found"),
        ("files: [{path: /run/x.conf, content: a}]\n", "files[0].path: '/run/x.conf' is under /run"),
        ("kernel: {cmdline: [quiet, console=ttyS0,115200n8]}\n",
         "kernel.cmdline[2]: '115200n8' looks like the rest of 'console=ttyS0,115200n8', split by the "
         "comma of a YAML flow list (hint: quote the argument: \"console=ttyS0,115200n8\")"),
        ("kernel: {cmdline: [console=ttyS1,9600n8]}\n", "kernel.cmdline[1]: '9600n8' looks like the rest"),
        ("source: {mirror: 'http://bob:hunter2@mirror.example/debian'}\n",
         "source.mirror: a URL with credentials (user:password@) is refused"),
        ("source: {mirror: 'ftp://mirror.example/debian'}\n",
         "source.mirror: 'ftp://mirror.example/debian' must be an http://, https:// or file://"),
        ("files: [{path: /proc/sys/kernel/x, content: a}]\n",
         "files[0].path: '/proc/sys/kernel/x' is under /proc"),
        ("disk: {firmware: uefi, partition_table: msdos}\n",
         "disk.partition_table: firmware 'uefi' needs a GPT disk"),
    ],
)
def test_semantic_checks(recipe_dir: Path, extra: str, expected: str) -> None:
    write(recipe_dir, "base", MINIMAL)
    p = write(recipe_dir, "r", "extends: base\n" + extra)
    found = problems(RecipeBook(recipe_dir), "r")
    assert len(found) == 1, found
    assert found[0].startswith(f"{p}:2: {expected}"), found[0]


def test_builder_source_mismatch_points_at_the_source(recipe_dir: Path) -> None:
    base = write(recipe_dir, "base", MINIMAL)
    write(recipe_dir, "r", "extends: base\nbuilder: packer\n")
    assert problems(RecipeBook(recipe_dir), "r") == [
        f"{base}:2: source.type: builder 'packer' cannot build from a 'mmdebstrap' source "
        "(hint: builder 'packer' takes: cloud-image, local-image)"]


def test_cloud_image_needs_exactly_one_checksum(recipe_dir: Path) -> None:
    write(recipe_dir, "c", """\
os: {family: ubuntu, release: "22.04"}
source: {type: cloud-image, url: "https://example.invalid/x.img"}
builder: packer
disk: {size: 10GiB}
""")
    assert "set exactly one of 'checksum' and 'checksum_url'" in problems(RecipeBook(recipe_dir), "c")[0]


def test_unknown_recipe_suggests(recipe_dir: Path) -> None:
    write(recipe_dir, "debian-12-base", MINIMAL)
    with pytest.raises(UserError, match="no recipe named 'debian-12-bsae'") as e:
        RecipeBook(recipe_dir).load("debian-12-bsae")
    assert e.value.hint == "did you mean debian-12-base?"


def test_digest_follows_content(recipe_dir: Path) -> None:
    write(recipe_dir, "a", MINIMAL)
    d1 = RecipeBook(recipe_dir).load("a").digest
    write(recipe_dir, "a", MINIMAL + "# a comment changes nothing\n")
    assert RecipeBook(recipe_dir).load("a").digest == d1
    write(recipe_dir, "a", MINIMAL + "packages: {install: [vim]}\n")
    assert RecipeBook(recipe_dir).load("a").digest != d1


@pytest.mark.parametrize(("text", "mode"), [("0600", "0600"), ("644", "644"), ('"0755"', "0755")])
def test_yaml_octal_mode_keeps_meaning(recipe_dir: Path, text: str, mode: str) -> None:
    write(recipe_dir, "m", MINIMAL + f"files: [{{path: /a, content: x, mode: {text}}}]\n")
    assert RecipeBook(recipe_dir).load("m").recipe.files[0].mode == mode


def test_accelerator_env_override(recipe_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(recipe_dir, "a", MINIMAL + "accelerator: kvm\n")
    r = RecipeBook(recipe_dir).load("a").recipe
    assert r.effective_accelerator() == "kvm"
    monkeypatch.setenv("IMAGEFACTORY_ACCELERATOR", "tcg")
    assert r.effective_accelerator() == "tcg"


def test_json_schema_describes_the_file_format() -> None:
    import jsonschema  # type: ignore[import-untyped]

    schema = recipe_json_schema()
    assert "name" not in schema["properties"]  # type: ignore[operator]
    assert schema["additionalProperties"] is False
    jsonschema.Draft202012Validator.check_schema(schema)
    import yaml

    data = yaml.safe_load((RECIPES / "debian-12-base.yaml").read_text())
    jsonschema.validate(data, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "dsik": {}}, schema)


def test_parse_yaml_records_lines() -> None:
    loc = parse_yaml("a:\n  b: [1, 2]\n  c:\n    - x\n", "f.yaml")
    assert loc.where[("a", "b")] == ("f.yaml", 2)
    assert loc.where[("a", "c", 0)] == ("f.yaml", 4)


RKE2 = MINIMAL + "rke2: {version: v1.31.4+rke2r1}\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("rke2: {images: [canal]}\n", "rke2.images: the core images are mandatory offline"),
        ("zarf: {version: v0.84.0, packages: [\"https://x.example/zarf-init-amd64-v0.83.0.tar.zst\"]}\n",
         "zarf.packages[0]: zarf-init-amd64-v0.83.0.tar.zst does not match the Zarf binary v0.84.0"),
        ("rke2: {selinux: true}\n", "rke2.selinux: SELinux is not available on debian"),
        ("rke2: {registries: {configs: {reg.site: {auth: {username: u, password: p}}}}}\n",
         "rke2.registries.configs.reg.site.auth: registry credentials are never baked into an image"),
    ],
)
def test_rke2_semantics(recipe_dir: Path, extra: str, expected: str) -> None:
    write(recipe_dir, "base", RKE2)
    p = write(recipe_dir, "r", "extends: base\n" + extra)
    found = problems(RecipeBook(recipe_dir), "r")
    assert len(found) == 1 and found[0].startswith(f"{p}:2: {expected}"), found


def test_rke2_schema_errors(recipe_dir: Path) -> None:
    p = write(recipe_dir, "r", MINIMAL + """\
rke2:
  version: "1.31"
  config: {token: abc, node-name: x}
zarf: {version: latest}
""")
    found = problems(RecipeBook(recipe_dir), "r")
    assert any(f.startswith(f"{p}:4: rke2.version: must look like v1.31.4+rke2r1") for f in found)
    assert any("rke2.config: node-name, token: per-node settings" in f for f in found)
    assert any(f.startswith(f"{p}:6: zarf.version: must look like v0.84.0") for f in found)


def test_rke2_needs_version_or_channel(recipe_dir: Path) -> None:
    write(recipe_dir, "r", MINIMAL + "rke2: {arch: amd64}\n")
    assert "set exactly one of 'version' and 'channel'" in problems(RecipeBook(recipe_dir), "r")[0]


def test_zarf_needs_rke2(recipe_dir: Path) -> None:
    write(recipe_dir, "r", MINIMAL + "zarf: {version: v0.84.0}\n")
    assert "zarf: Zarf needs RKE2 in the same image" in problems(RecipeBook(recipe_dir), "r")[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("stig: {benchmarks: [slmicro5]}\n",
         "stig.benchmarks: debian 12 takes exactly one OS benchmark: ubuntu2204"),
        ("stig: {benchmarks: [ubuntu2204, rke2]}\n",
         "stig.benchmarks: the rke2 benchmark needs an rke2 section"),
        ("stig: {benchmarks: [ubuntu2204], tailoring: {disable: {UBTU-22-999999: because}}}\n",
         "stig.tailoring.disable.UBTU-22-999999: not a control of the selected catalogues"),
        ("stig: {benchmarks: [ubuntu2204], tailoring: {enable: [UBTU-22-255040]}}\n",
         "stig.tailoring.enable[0]: UBTU-22-255040 is applied anyway (phase bake)"),
        ("stig: {benchmarks: [ubuntu2204], waivers: [no-such-set]}\n",
         "stig.waivers[0]: waiver file 'no-such-set' not found"),
    ],
)
def test_stig_semantics(recipe_dir: Path, extra: str, expected: str) -> None:
    p = write(recipe_dir, "r", MINIMAL + extra)
    found = problems(RecipeBook(recipe_dir), "r")
    assert len(found) == 1 and found[0].startswith(f"{p}:3: {expected}"), found


def test_stig_ubuntu_2404_takes_the_2404_benchmark(recipe_dir: Path) -> None:
    noble = "os: {family: ubuntu, release: '24.04'}\nsource: {type: mmdebstrap, suite: noble}\n"
    write(recipe_dir, "ok", noble + "stig:\n  benchmarks: [ubuntu2404]\n  tailoring:\n"
                                    "    enable: [UBTU-24-100310]\n    disable: {UBTU-24-300039: usb}\n")
    r = RecipeBook(recipe_dir).load("ok").recipe
    assert r.stig is not None and r.stig.benchmarks == ("ubuntu2404",)
    p = write(recipe_dir, "old", noble + "stig: {benchmarks: [ubuntu2204]}\n")
    found = problems(RecipeBook(recipe_dir), "old")
    assert len(found) == 1 and found[0].startswith(
        f"{p}:3: stig.benchmarks: ubuntu 24.04 takes exactly one OS benchmark: ubuntu2404"), found
    # the tailoring names controls of the selected catalogue: 22.04 ids are not 24.04 controls
    write(recipe_dir, "ids", noble + "stig:\n  benchmarks: [ubuntu2404]\n"
                                     "  tailoring: {enable: [UBTU-22-251015]}\n")
    found = problems(RecipeBook(recipe_dir), "ids")
    assert len(found) == 1 and "UBTU-22-251015" in found[0], found
    # and 22.04 is not covered by the 24.04 catalogue
    jammy = "os: {family: ubuntu, release: '22.04'}\nsource: {type: mmdebstrap, suite: jammy}\n"
    write(recipe_dir, "jammy", jammy + "stig: {benchmarks: [ubuntu2404]}\n")
    found = problems(RecipeBook(recipe_dir), "jammy")
    assert len(found) == 1 and "takes exactly one OS benchmark: ubuntu2204" in found[0], found


def test_stig_schema_errors(recipe_dir: Path) -> None:
    p = write(recipe_dir, "r", MINIMAL + """\
stig:
  benchmarks: [ubuntu2004]
  tailoring: {disable: {UBTU-22-255040: ""}}
  gate: {cat2_max_open: -1}
""")
    found = problems(RecipeBook(recipe_dir), "r")
    assert any(f.startswith(f"{p}:4: stig.benchmarks[0]") for f in found), found
    assert any(f.startswith(f"{p}:5: stig.tailoring.disable: a reason is required") for f in found), found
    assert len(found) == 3, found
    assert any(f.startswith(f"{p}:6: stig.gate.cat2_max_open") for f in found), found


def test_stig_waiver_file_problems_name_the_waiver_file(recipe_dir: Path) -> None:
    (recipe_dir / "w.yaml").write_text("waivers:\n  - id: W-1\n    stig_ids: [UBTU-22-255040]\n"
                                       "    type: risk-accepted\n    justification: legacy X11 tool\n")
    write(recipe_dir, "r", MINIMAL + "stig: {benchmarks: [ubuntu2204], waivers: [w.yaml]}\n")
    found = problems(RecipeBook(recipe_dir), "r")
    # UBTU-22-255040 is CAT I: a waiver for it needs an approver
    assert len(found) == 1 and found[0].startswith(f"{recipe_dir / 'w.yaml'}:2: W-1"), found
    assert "approver" in found[0]


UBUNTU = "os: {family: ubuntu, release: '22.04'}\nsource: {type: mmdebstrap, suite: jammy}\n"
NOBLE = "os: {family: ubuntu, release: '24.04'}\nsource: {type: mmdebstrap, suite: noble}\n"


def test_ubuntu_never_installs_what_phones_home(recipe_dir: Path) -> None:
    write(recipe_dir, "u", UBUNTU + "packages: {install: [jq, snapd]}\n")
    found = problems(RecipeBook(recipe_dir), "u")
    assert len(found) == 1, found
    assert "packages.install: 'snapd' is never shipped in ubuntu images" in found[0]


def test_disk_firmware_defaults_and_kernel_flavour(recipe_dir: Path) -> None:
    write(recipe_dir, "u", NOBLE + "kernel: {package: linux-image-generic}\ndisk: {firmware: bios}\n")
    r = RecipeBook(recipe_dir).load("u").recipe
    assert (r.disk.table, r.disk.bios, r.disk.uefi) == ("msdos", True, False)
    pkgs = distro("ubuntu").packages(r)
    assert "linux-image-generic" in pkgs and "linux-image-virtual" not in pkgs
    assert "systemd-resolved" in pkgs and "shim-signed" not in pkgs  # noble's split package; no ESP
    write(recipe_dir, "bad", NOBLE + "kernel: {package: 'linux image'}\n")
    assert "kernel.package: must be a package name" in problems(RecipeBook(recipe_dir), "bad")[0]


def test_templates_render_in_a_sandbox_at_validation(recipe_dir: Path, tmp_path: Path) -> None:
    """A template reaching for Python's internals is refused before any build, and runs nothing."""
    mark = tmp_path / "escaped"
    (recipe_dir / "evil.j2").write_text(
        "ok\n{{ cycler.__init__.__globals__.os.popen('touch " + str(mark) + "').read() }}\n")
    write(recipe_dir, "base", MINIMAL)
    p = write(recipe_dir, "r", "extends: base\nfiles: [{path: /etc/x, template: evil.j2}]\n")
    [found] = problems(RecipeBook(recipe_dir), "r")
    assert found.startswith(f"{p}:2: files[0].template: template evil.j2:2: refused by the sandbox"), found
    assert not mark.exists()


def test_template_errors_name_the_template_line(recipe_dir: Path) -> None:
    (recipe_dir / "t.j2").write_text("# {{ recipe.description }}\n\n{{ recipe.no_such_key }}\n")
    (recipe_dir / "s.j2").write_text("{% if %}\n")
    write(recipe_dir, "base", MINIMAL)
    write(recipe_dir, "r", "extends: base\n"
          "files: [{path: /etc/t, template: t.j2}, {path: /etc/s, template: s.j2}]\n")
    found = problems(RecipeBook(recipe_dir), "r")
    assert "files[0].template: template t.j2:3: " in found[0] and "no_such_key" in found[0], found
    assert "files[1].template: template s.j2:1: syntax error" in found[1], found


def test_kernel_arguments_that_stand_alone_are_not_split_commas(recipe_dir: Path) -> None:
    write(recipe_dir, "base", MINIMAL)
    write(recipe_dir, "r", 'extends: base\nkernel: {cmdline: [root=/dev/vda1, ro, "console=ttyS0,115200n8", '
          "mitigations=auto, nosmt, '3']}\n")
    r = RecipeBook(recipe_dir).load("r").recipe
    assert r.kernel.cmdline[2] == "console=ttyS0,115200n8"


BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}' if p else 'x'] * 9)}]\n"
               for p, a in zip(["", *"abcdefgh"], "abcdefghi", strict=True))


@pytest.mark.parametrize(("content", "line", "expected"), [
    (BOMB.encode(), 1, "more than 100000 values once aliases are expanded (hint: an alias bomb?"),
    (b"x: &a [*a]\n", 1, "nested more than 64 levels deep (hint: an alias that contains itself?"),
    (b"x: " + b"[" * 20000 + b"]" * 20000 + b"\n", 1, "nested more than 64 levels deep (hint: look for"),
    (b"x: " + b"[" * 1000000 + b"\n", 1, "nested more than 64 levels deep (hint: look for runaway"),
    ("".join(" " * i + "a:\n" for i in range(1000)).encode(), 1000, "exceeded maximum nesting depth"),
    (b"os: {family: debian}\nsource: \x00\n", 2, "control character '\\x00' in the text"),
    (b"os: {family: debian}\n# caf\xe9\n", 2, "not UTF-8 (byte 0xe9 at offset 26)"),
    (b"# " + b"x" * (1024**2) + b"\n", None, "larger than 1024 KiB"),
    (b"? [a, b]\n: c\n", 1, "a key must be a plain string"),
])
def test_hostile_yaml_is_a_clear_error_in_seconds(recipe_dir: Path, content: bytes, line: int | None,
                                                  expected: str) -> None:
    p = recipe_dir / "r.yaml"
    p.write_bytes(content)
    start = time.process_time()  # CPU, not wall-clock: CI runs this beside booting VMs
    [found] = problems(RecipeBook(recipe_dir), "r")
    assert time.process_time() - start < 5
    assert found.startswith(f"{p}:{line}:" if line else f"{p}:"), found
    assert expected in found, found


def test_brackets_in_quotes_and_comments_are_not_nesting() -> None:
    text = 'x: ["' + "[" * 1000 + "\", '[[', ']]]]'] # " + "{" * 100 + "\ny: '" + "[" * 100 + "'\n"
    assert parse_yaml(text, "r.yaml").data == {"x": ["[" * 1000, "[[", "]]]]"], "y": "[" * 100}


@pytest.mark.parametrize("parent", ["../outside", "/tmp/outside", "sub/base", "base.yaml", ".hidden"])
def test_extends_names_a_recipe_in_the_same_directory(recipe_dir: Path, parent: str) -> None:
    outside = recipe_dir.parent / "outside.yaml"
    outside.write_text(MINIMAL)
    p = write(recipe_dir, "r", f"extends: '{parent}'\n")
    [found] = problems(RecipeBook(recipe_dir), "r")
    assert found.startswith(f"{p}:1: extends: '{parent}' is not a recipe name"), found


@pytest.mark.parametrize(("name", "expected"), [
    ("/etc/waivers.yaml", "stig.waivers: '/etc/waivers.yaml': a shipped set's name or a path inside"),
    ("../waivers.yaml", "stig.waivers: '../waivers.yaml': a shipped set's name or a path inside"),
    ("link/w.yaml", "stig.waivers[0]: stig.waivers: 'link/w.yaml' leads out of the recipe directory"),
])
def test_waiver_files_stay_inside_the_recipe_directory(recipe_dir: Path, name: str, expected: str) -> None:
    (recipe_dir.parent / "waivers.yaml").write_text("waivers: []\n")
    (recipe_dir / "link").symlink_to(recipe_dir.parent)
    (recipe_dir.parent / "w.yaml").write_text("waivers: []\n")
    write(recipe_dir, "base", MINIMAL)
    write(recipe_dir, "r", f"extends: base\nstig: {{benchmarks: [ubuntu2204], waivers: ['{name}']}}\n")
    found = problems(RecipeBook(recipe_dir), "r")
    assert any(expected in f for f in found), found


@pytest.mark.parametrize(("extra", "expected"), [
    ("packages: {install: [curl, 'vim; touch x']}\n",
     "packages.install[1]: 'vim; touch x' is not a valid package"),
    ("packages: {remove: [../../etc/shadow]}\n",
     "packages.remove[0]: '../../etc/shadow' is not a valid package"),
    ("packages: {install: [-oAPT::Get=x]}\n", "packages.install[0]: '-oAPT::Get=x' is not a valid package"),
    ("services: {enable: [../../x.service]}\n",
     "services.enable[0]: '../../x.service' is not a valid systemd"),
    ("disk: {size: 99999999999999TiB}\n", "disk.size: Input should be less than or equal to 70368744177664"),
    ("tests: {memory: 64TiB}\n", "tests.memory: Input should be less than or equal to 274877906944"),
    ("tests: {memory: 1MiB}\n", "tests.memory: Input should be greater than or equal to 268435456"),
])
def test_names_and_sizes_a_type_cannot_say(recipe_dir: Path, extra: str, expected: str) -> None:
    write(recipe_dir, "base", MINIMAL)
    p = write(recipe_dir, "r", "extends: base\n" + extra)
    found = problems(RecipeBook(recipe_dir), "r")
    assert any(f.startswith(f"{p}:2: {expected}") for f in found), found


def test_real_names_pass(recipe_dir: Path) -> None:
    write(recipe_dir, "base", MINIMAL)
    write(recipe_dir, "r", "extends: base\n"
          "packages: {install: [libstdc++6, python3.11, 'openssh-server=1:9.2p1-2', NetworkManager, "
          "xz-utils]}\nservices: {enable: [ssh, getty@ttyS0.service, "
          "'dev-disk-by\\x2dlabel-data.mount']}\n")
    r = RecipeBook(recipe_dir).load("r").recipe
    assert "getty@ttyS0.service" in r.services.enable


def test_merged_list_errors_use_each_files_own_indexes(recipe_dir: Path) -> None:
    write(recipe_dir, "grand", MINIMAL + "packages: {install: [curl]}\n")
    write(recipe_dir, "parent", "extends: grand\npackages: {install: [jq, 'bad name']}\n")
    child = write(recipe_dir, "child", "extends: parent\npackages:\n  install:\n    - vim\n    - '-oops'\n")
    found = problems(RecipeBook(recipe_dir), "child")
    assert len(found) == 2, found
    # the merged list is [curl, jq, 'bad name', vim, '-oops']: each error in its own file, own index
    assert found[0].startswith(f"{recipe_dir / 'parent.yaml'}:2: packages.install[1]: 'bad name' is not")
    assert found[1].startswith(f"{child}:5: packages.install[1]: '-oops' is not a valid package name")


def test_zarf_verify_key_checked_at_validation(recipe_dir: Path) -> None:
    """zarf.verify.key: a cosign public key inside the recipe directory, with packages to verify."""
    write(recipe_dir, "base", RKE2)
    pkgs = 'packages: ["https://x.example/zarf-package-a-amd64-1.0.0.tar.zst"]'
    (recipe_dir / "keys").mkdir()
    (recipe_dir / "keys/cosign.pub").write_bytes(cosign_key_pair()[0])
    zarf = "extends: base\nzarf: {version: v0.84.0, %s, verify: {key: %s}}\n"
    write(recipe_dir, "ok", zarf % (pkgs, "keys/cosign.pub"))
    assert RecipeBook(recipe_dir).load("ok").recipe.zarf.verify.key == "keys/cosign.pub"  # type: ignore[union-attr]
    (recipe_dir / "keys/private.key").write_text("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nx\n")
    outside = recipe_dir.parent / "host.pub"
    outside.write_bytes(cosign_key_pair()[0])
    (recipe_dir / "keys/link.pub").symlink_to(outside)
    for key, expected in (("keys/private.key", "zarf.verify.key: keys/private.key: not a PEM public key"),
                          ("keys/missing.pub", "zarf.verify.key: keys/missing.pub: No such file"),
                          ("keys/link.pub", "outside the recipe directory"),
                          ("../host.pub", "zarf.verify.key: must be a path inside the recipe directory")):
        p = write(recipe_dir, "r", zarf % (pkgs, key))
        found = problems(RecipeBook(recipe_dir), "r")
        assert len(found) == 1 and found[0].startswith(f"{p}:2: ") and expected in found[0], found
    write(recipe_dir, "r", "extends: base\nzarf: {version: v0.84.0, verify: {key: keys/cosign.pub}}\n")
    assert "zarf.verify: there are no zarf.packages to verify" in problems(RecipeBook(recipe_dir), "r")[0]
