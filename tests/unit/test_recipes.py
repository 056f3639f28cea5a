from __future__ import annotations

from pathlib import Path

import pytest

from imagefactory.errors import UserError, ValidationError
from imagefactory.recipes import RecipeBook
from imagefactory.recipes.load import Located, merge, parse_yaml
from imagefactory.recipes.model import recipe_json_schema
from tests.conftest import MINIMAL, RECIPES, write


def problems(book: RecipeBook, name: str) -> list[str]:
    with pytest.raises(ValidationError) as e:
        book.load(name)
    return [str(p) for p in e.value.problems]


@pytest.mark.parametrize("name", ["debian-12-base", "ubuntu-22.04-base", "ubuntu-24.04-base",
                                  "sle-micro-5.5-base"])
def test_shipped_recipes_validate(name: str) -> None:
    r = RecipeBook(RECIPES).load(name).recipe
    assert r.name == name


def test_ubuntu_recipes_point_at_upstream_cloud_images() -> None:
    book = RecipeBook(RECIPES)
    for rel in ("22.04", "24.04"):
        src = book.load(f"ubuntu-{rel}-base").recipe.source
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
    assert found == [f"{parent}:3: tests.clones: Input should be greater than or equal to 1"]


def test_list_item_errors_point_at_the_item(recipe_dir: Path) -> None:
    write(recipe_dir, "parent", MINIMAL + "files:\n  - {path: /a, content: x}\n")
    child = write(recipe_dir, "child", "extends: parent\nfiles:\n  - {path: /b, content: y, mode: 999}\n")
    found = problems(RecipeBook(recipe_dir), "child")
    assert found == [f"{child}:3: files[1].mode: must be octal permission bits such as '0644'"]


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
        ("tests: {clones: 1}\n", "tests.clones: the hygiene suite needs 2 clones"),
        ("files: [{path: /a, template: nope.j2}]\n", "files[0].template: template 'nope.j2' not found"),
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
