"""The DISA XCCDF loader: rule counts and CAT splits of the four shipped benchmarks, rule fields,
the reference-directory override and the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefactory.errors import UserError
from imagefactory.stig import xccdf
from imagefactory.stig.xccdf import BENCHMARKS, benchmark_path, load_benchmark, parse_benchmark, reference_dir

# From the reference notes (stig.md): rules and CAT I/II/III per benchmark.
COUNTS = {
    "ubuntu2204": (188, {1: 16, 2: 155, 3: 17}),
    "ubuntu2404": (188, {1: 14, 2: 156, 3: 18}),
    "slmicro5": (208, {1: 23, 2: 182, 3: 3}),
    "rke2": (23, {1: 7, 2: 16, 3: 0}),
}

TINY = """<?xml version="1.0" encoding="utf-8"?>
<Benchmark xmlns="http://checklists.nist.gov/xccdf/1.1"
           xmlns:dc="http://purl.org/dc/elements/1.1/" id="T_STIG">
  <title>Tiny STIG</title>
  <plain-text id="release-info">Release: 3 Benchmark Date: 01 Jan 2030</plain-text>
  <version>1</version>
  <Group id="V-1"><title>SRG</title>
    <Rule id="SV-1r2_rule" severity="low"><version>TINY-00-000001</version><title>Do a thing.</title>
      <ident system="http://cyber.mil/cci">CCI-000001</ident>
      <ident system="http://cyber.mil/legacy">V-999</ident>
      <fixtext fixref="F-1">Fix it.</fixtext>
      <check system="C-1"><check-content>Check it.</check-content></check>
    </Rule>
  </Group>
</Benchmark>
"""


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_rule_counts_and_cat_split(name: str) -> None:
    total, split = COUNTS[name]
    bench = load_benchmark(name)
    assert len(bench.rules) == total
    assert bench.count_by_cat() == split
    assert all(r.severity == {1: "high", 2: "medium", 3: "low"}[r.cat] for r in bench.rules.values())


def test_benchmark_metadata() -> None:
    b = load_benchmark("ubuntu2204")
    assert b.id == "CAN_Ubuntu_22-04_LTS_STIG"
    assert b.title == "Canonical Ubuntu 22.04 LTS Security Technical Implementation Guide"
    assert b.release_info == "Release: 8 Benchmark Date: 01 Apr 2026"
    assert b.version == "2"
    assert load_benchmark("rke2").release_info == "Release: 1 Benchmark Date: 24 Jul 2024"


def test_rule_fields() -> None:
    r = load_benchmark("ubuntu2204").rules["UBTU-22-211015"]
    assert (r.stig_id, r.vuln_id, r.rule_id, r.severity, r.cat) == (
        "UBTU-22-211015", "V-260469", "SV-260469r991589_rule", "high", 1)
    assert r.title == "Ubuntu 22.04 LTS must disable the x86 Ctrl-Alt-Delete key sequence."
    assert r.ccis == ("CCI-000366",)
    assert "ctrl-alt-del.target" in r.check_content and "is masked" in r.check_content
    assert r.fixtext.startswith("Configure Ubuntu 22.04 LTS to disable the Ctrl-Alt-Delete")


def test_ids_are_stig_ids_in_document_order() -> None:
    rules = list(load_benchmark("slmicro5").rules.values())
    assert rules[0].stig_id == "SLEM-05-211010"
    assert all(r.stig_id.startswith("SLEM-05-") and r.vuln_id.startswith("V-") and r.rule_id.startswith("SV-")
               and r.rule_id.endswith("_rule") for r in rules)


def test_loader_is_cached() -> None:
    assert load_benchmark("rke2") is load_benchmark("rke2")
    assert load_benchmark(benchmark_path("rke2")) is load_benchmark("rke2")


def test_benchmarks_ship_in_the_repository() -> None:
    repo = Path(xccdf.__file__).resolve().parents[2]
    for name, file in BENCHMARKS.items():
        assert (repo / "stig" / "benchmarks" / file).is_file(), name


def test_reference_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / BENCHMARKS["rke2"]).write_text(TINY)
    monkeypatch.setenv("IMAGEFACTORY_STIG_REFERENCE", str(tmp_path))
    assert reference_dir() == tmp_path
    b = load_benchmark("rke2")
    assert b.id == "T_STIG" and b.release_info == "Release: 3 Benchmark Date: 01 Jan 2030"
    r = b.rules["TINY-00-000001"]
    assert (r.vuln_id, r.rule_id, r.cat, r.ccis, r.check_content, r.fixtext) == (
        "V-1", "SV-1r2_rule", 3, ("CCI-000001",), "Check it.", "Fix it.")


def test_missing_file_names_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFACTORY_STIG_REFERENCE", str(tmp_path))
    with pytest.raises(UserError, match="not found") as e:
        load_benchmark("slmicro5")
    assert "IMAGEFACTORY_STIG_REFERENCE" in str(e.value)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown STIG benchmark"):
        benchmark_path("rhel9")
    bad = tmp_path / "bad.xml"
    bad.write_text("<not-closed")
    with pytest.raises(UserError, match="not valid XML"):
        parse_benchmark(bad)
    other = tmp_path / "other.xml"
    other.write_text("<Benchmark/>")
    with pytest.raises(UserError, match=r"not an XCCDF 1\.1 Benchmark"):
        parse_benchmark(other)
    dup = tmp_path / "dup.xml"
    group = TINY[TINY.index("  <Group"):TINY.index("</Benchmark>")]
    dup.write_text(TINY.replace("</Benchmark>", group + "</Benchmark>"))
    with pytest.raises(UserError, match="duplicate STIG id TINY-00-000001"):
        parse_benchmark(dup)
