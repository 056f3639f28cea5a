"""The harness's reading of the suites' JUnit: a skip is a pass only when the recipe decided it."""

from __future__ import annotations

from pathlib import Path

from imagefactory.testing.harness import DECLARED_SKIP, parse_junit

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="3" tests="7">
<testcase classname="test_hygiene" name="test_a[c0]"/>
<testcase classname="test_hygiene" name="test_a[c1]"/>
<testcase classname="test_hygiene" name="test_b[c0]"><failure message="assert 1 == 2">x</failure></testcase>
<testcase classname="test_stig" name="test_c[c0]"><error message="boom">y</error></testcase>
<testcase classname="test_rke2" name="test_zarf[c0]">
  <skipped type="pytest.skip" message="{declared}bakes no Zarf">test_rke2.py:123: skipped</skipped>
</testcase>
<testcase classname="test_recipe" name="test_services[NOTSET]">
  <skipped type="pytest.skip" message="got empty parameter set ['unit']">empty</skipped>
</testcase>
<testcase classname="test_hygiene" name="test_no_egress[c0]">
  <skipped type="pytest.skip" message="no bash in the guest">probe</skipped>
</testcase>
</testsuite></testsuites>
"""


def test_only_recipe_declared_skips_pass(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT.format(declared=DECLARED_SKIP))
    passed, failed, errors, skipped, names = parse_junit(junit)
    # 7 tests: 2 passed, 1 failure + 2 undeclared skips failed, 1 error, 1 declared skip
    assert (passed, failed, errors, skipped) == (2, 3, 1, 1)
    assert names[:2] == ["test_hygiene::test_b[c0]", "test_stig::test_c[c0]"]
    assert names[2].startswith("test_recipe::test_services[NOTSET] (skipped, not by the recipe: got empty")
    assert names[3].startswith("test_hygiene::test_no_egress[c0] (skipped, not by the recipe: no bash")


def test_a_clean_run(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT.format(declared="").replace('errors="1"', 'errors="0"'))
    # with the prefix gone, the Zarf skip is undeclared too
    assert parse_junit(junit)[1] == 4
