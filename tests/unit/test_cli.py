"""The CLI in a subprocess, as a user runs it: exit codes, messages, --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import MINIMAL, RECIPES, write


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagefactory.cli", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=60)


def test_bad_recipe_exit_2_no_traceback(recipe_dir: Path) -> None:
    p = write(recipe_dir, "bad", MINIMAL + "disk: {sise: 4GiB}\n")
    r = cli("--recipes", str(recipe_dir), "recipes", "validate", "bad")
    assert r.returncode == 2
    assert f"{p}:3: disk.sise: unknown key (hint: did you mean 'size'?" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_build_of_invalid_recipe_is_refused_before_building(recipe_dir: Path, tmp_path: Path) -> None:
    write(recipe_dir, "bad", MINIMAL + "disk: {size: 1GiB}\n")
    r = cli("--recipes", str(recipe_dir), "--workdir", str(tmp_path / "w"), "build", "bad")
    assert r.returncode == 2
    assert "disk.size: 1 GiB is too small" in r.stderr
    assert not (tmp_path / "w").exists()


def test_debug_shows_traceback(recipe_dir: Path) -> None:
    write(recipe_dir, "bad", "extends: nothing\n")
    r = cli("--debug", "--recipes", str(recipe_dir), "recipes", "show", "bad")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_json_error_document(recipe_dir: Path) -> None:
    write(recipe_dir, "bad", "os: [\n")
    r = cli("--json", "--recipes", str(recipe_dir), "recipes", "render", "bad")
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["error"] == "ValidationError" and "invalid YAML" in doc["problems"][0]


def test_validate_all_shipped_recipes_json() -> None:
    r = cli("--json", "--recipes", str(RECIPES), "recipes", "validate")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["valid"] is True
    assert {x["name"] for x in doc["recipes"]} >= {"debian-12-base", "ubuntu-22.04-base", "ubuntu-24.04-base",
                                                  "ubuntu-22.04-cloud", "sle-micro-5.5-base", "rke2-node"}


def test_list_show_render(recipe_dir: Path) -> None:
    write(recipe_dir, "base", MINIMAL + "packages: {install: [a]}\n")
    write(recipe_dir, "child", "extends: base\npackages: {install: [b]}\n")
    listed = json.loads(cli("--json", "--recipes", str(recipe_dir), "recipes", "list").stdout)
    assert [x["name"] for x in listed] == ["base", "child"]
    rendered = cli("--recipes", str(recipe_dir), "recipes", "render", "child")
    assert rendered.returncode == 0
    assert "install:\n  - a\n  - b\n" in rendered.stdout
    shown = json.loads(cli("--json", "--recipes", str(recipe_dir), "recipes", "show", "child").stdout)
    assert [Path(f).name for f in shown["files"]] == ["child.yaml", "base.yaml"]
    assert len(shown["digest"]) == 64


def test_schema_is_json() -> None:
    r = cli("schema")
    assert r.returncode == 0
    assert json.loads(r.stdout)["title"] == "imagefactory recipe"


def test_packer_build_offline_without_a_pinned_image_is_refused_clearly(tmp_path: Path) -> None:
    # offline: no network attempt at all (a SHA256SUMS download would be one)
    cfg = tmp_path / "offline.yaml"
    cfg.write_text("offline: true\n")
    r = cli("--recipes", str(RECIPES), "--workdir", str(tmp_path / "w"), "--config", str(cfg),
            "build", "ubuntu-22.04-cloud")
    assert r.returncode == 2, r.stderr
    sums = "https://cloud-images.ubuntu.com/releases/22.04/release/SHA256SUMS"
    assert f"offline: cannot read {sums}" in r.stderr
    assert "pre-stage it" in r.stderr and "Traceback" not in r.stderr


def test_images_list_empty_store(tmp_path: Path) -> None:
    r = cli("--json", "--workdir", str(tmp_path), "images", "list")
    assert r.returncode == 0 and json.loads(r.stdout) == []


def test_test_unknown_image(tmp_path: Path) -> None:
    r = cli("--workdir", str(tmp_path), "test", "nothing-here")
    assert r.returncode == 2 and "no such image" in r.stderr


def test_stig_list_and_show() -> None:
    r = cli("--json", "stig", "list", "--benchmark", "rke2")
    assert r.returncode == 0, r.stderr
    rules = json.loads(r.stdout)["rules"]
    assert len(rules) == 23  # every XCCDF rule is listed, automated or not
    assert sum(x["automated"] for x in rules) >= 18
    assert {x["cat"] for x in rules} == {1, 2}
    shown = json.loads(cli("--json", "stig", "show", "UBTU-22-255040").stdout)
    assert shown["cat"] == 1 and shown["vuln_id"].startswith("V-")
    assert shown["catalogue"]["phase"] == "bake"
    missing = cli("stig", "show", "UBTU-22-999999")
    assert missing.returncode == 2 and "no such STIG id" in missing.stderr
    noble = json.loads(cli("--json", "stig", "list", "--benchmark", "ubuntu2404").stdout)["rules"]
    assert len(noble) == 188 and sum(x["automated"] for x in noble) == 148
    shown = json.loads(cli("--json", "stig", "show", "UBTU-24-100810").stdout)
    assert (shown["benchmark"], shown["cat"], shown["catalogue"]["phase"]) == ("ubuntu2404", 1, "bake")


def _tested_dir(d: Path, results: dict[str, str]) -> Path:
    """What `imagefactory test -o d` leaves for a debian-12-base image: the record and results."""
    from imagefactory.recipes import RecipeBook
    from imagefactory.stig.results import RuleResult, ScanResults, write_scans

    d.mkdir(parents=True)
    recipe = RecipeBook(RECIPES).load("debian-12-base").recipe
    (d / "test.json").write_text(json.dumps({"image": {"path": "/x/image.qcow2", "file": "image.qcow2"},
                                             "recipe": {"merged": recipe.model_dump(mode="json")}}))
    write_scans(d / "stig-results.json", [ScanResults(
        "ubuntu2204", "debian", "booted",
        {k: RuleResult(v, f"evidence for {k}", "booted") for k, v in results.items()})])  # type: ignore[arg-type]
    return d


def test_stig_report_and_diff(tmp_path: Path) -> None:
    good = _tested_dir(tmp_path / "good", {"UBTU-22-255040": "pass", "UBTU-22-432011": "fail"})
    bad = _tested_dir(tmp_path / "bad", {"UBTU-22-255040": "fail", "UBTU-22-432011": "fail"})
    common = ("--json", "--recipes", str(RECIPES), "--workdir", str(tmp_path / "w"), "stig", "report")
    r = cli(*common, str(good), "-o", str(good))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gate"]["passed"] is True
    assert (good / "stig-report.html").is_file() and (good / "checklists/ubuntu2204-debian.cklb").is_file()
    r = cli(*common, str(bad), "-o", str(bad))
    assert r.returncode == 1, r.stderr
    gate = json.loads(r.stdout)["gate"]
    assert gate["open_by_cat"]["1"] == 1 and "UBTU-22-255040" in " ".join(gate["reasons"])
    r = cli("--json", "--workdir", str(tmp_path / "w"), "stig", "diff", str(good), str(bad))
    assert r.returncode == 0, r.stderr
    changed = json.loads(r.stdout)["changed"]
    assert [(c["stig_id"], c["before"], c["after"]) for c in changed] == [
        ("UBTU-22-255040", "pass/NotAFinding", "fail/Open")], changed


def test_stig_report_errors(tmp_path: Path) -> None:
    r = cli("--workdir", str(tmp_path / "w"), "stig", "report", str(tmp_path))
    assert r.returncode == 2 and "neither a build directory" in r.stderr and "Traceback" not in r.stderr
    d = _tested_dir(tmp_path / "t", {"UBTU-22-255040": "pass"})
    r = cli("--recipes", str(RECIPES), "--workdir", str(tmp_path / "w"), "stig", "report", str(d),
            "--waivers", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml: waiver file not found" in r.stderr
