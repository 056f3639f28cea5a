"""CLI commands that read STIG results of images: `stig report IMAGE`, `stig diff A B`, and the
STIG part of `imagefactory test`. Thin: the work is in `steps.stig` and `stig.report`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from .errors import UserError

if TYPE_CHECKING:
    from .cli import App
    from .recipes.model import Recipe
    from .stig.report import GateResult, StigReport
    from .stig.results import ScanResults

TEST_RECORD = "test.json"  # what `imagefactory test` ran: image, digest, merged recipe, results


def results_dir(app: App, ref: str) -> Path:
    """The directory holding an image's STIG results: a build directory, an `imagefactory test`
    output directory, an image file in one of them, or a store reference."""
    p = Path(ref)
    if p.is_dir():
        d = p
    elif p.is_file():
        d = p.parent
    else:
        d = app.store().resolve(ref).parent
    if not ((d / "manifest.json").is_file() or (d / TEST_RECORD).is_file()):
        raise UserError(f"{d}: neither a build directory (manifest.json) nor a test output ({TEST_RECORD})",
                        hint="pass a store reference, a build directory or an 'imagefactory test' --output")
    return d


def image_record(d: Path) -> tuple[Recipe, dict[str, Any]]:
    """(merged recipe, manifest-like dict) of a build or test output directory."""
    from .recipes.model import Recipe

    path = d / "manifest.json" if (d / "manifest.json").is_file() else d / TEST_RECORD
    try:
        data = json.loads(path.read_text())
        recipe = Recipe.model_validate(data["recipe"]["merged"])
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: cannot read the image record: {e}") from None
    return recipe, data


def run_report(app: App, d: Path, out: Path | None, waivers: list[Path], as_of: dt.date | None
               ) -> tuple[StigReport, GateResult]:
    from .steps import stig

    recipe, data = image_record(d)
    if recipe.stig is None:
        raise UserError(f"{d}: the image's recipe has no stig section",
                        hint="nothing was hardened or checked")
    image = data.get("image", {}).get("path") if (d / TEST_RECORD).is_file() else None
    scans = recorded_scans(d, Path(image) if image else None)
    if not scans:
        raise UserError(f"{d}: no STIG results ({stig.BOOTED_RESULTS}, {stig.OFFLINE_RESULTS})",
                        hint="results are written by a build with tests or by 'imagefactory test'")
    for w in waivers:
        if not w.is_file():
            raise UserError(f"{w}: waiver file not found")
    return stig.report(recipe, app.book().directory, data, scans, out, today=as_of,
                       extra_waivers=waivers)


def recorded_scans(d: Path, image: Path | None = None) -> list[ScanResults]:
    """The STIG results recorded in `d`. An `imagefactory test` output directory has the booted
    ones only: the offline ones of the same image (imagefactory's check and OpenSCAP, which the
    report compares) are taken from the build directory of `image`, the tested image, when that
    directory's manifest names it."""
    from .steps import stig
    from .stig.results import read_scans

    scans = stig.load_scans(d)
    if image is None or (d / stig.OFFLINE_RESULTS).is_file() or image.parent.resolve() == d.resolve():
        return scans
    offline, manifest = image.parent / stig.OFFLINE_RESULTS, image.parent / "manifest.json"
    try:
        built = json.loads(manifest.read_text()).get("image", {}).get("file") == image.name
    except (OSError, ValueError, AttributeError):
        built = False
    return scans + read_scans(offline) if built and offline.is_file() else scans


def show_report(app: App, report: StigReport, gate: GateResult, out: Path | None) -> None:
    t = Table("benchmark", "target", "rules", "pass", "fail", "n/a", "not reviewed", "open I/II/III",
              "waived")
    for b in report.benchmarks:
        c = b.counts
        res = {r: sum(c.results[cat][r] for cat in (1, 2, 3)) for r in ("pass", "fail", "error",
                                                                        "notapplicable", "notchecked")}
        t.add_row(b.benchmark, b.target, str(c.total), str(res["pass"]), str(res["fail"] + res["error"]),
                  str(res["notapplicable"]), str(res["notchecked"]),
                  "/".join(str(c.open[cat]) for cat in (1, 2, 3)), str(c.waived))
    app.out.print(t)
    verdict = "[bold green]passed[/]" if gate.passed else "[bold red]FAILED[/]"
    app.out.print(f"STIG gate {verdict}")
    for reason in gate.reasons:
        app.out.print(f"  {reason}", markup=False)
    if out is not None:
        app.out.print(f"reports in {out}")


def cmd_stig_report(app: App) -> int:
    out = Path(app.args.output) if app.args.output else None
    as_of = dt.date.fromisoformat(app.args.as_of) if app.args.as_of else None
    d = results_dir(app, app.args.image)
    report, gate = run_report(app, d, out, [Path(w) for w in app.args.waivers or []], as_of)
    data = {"image": str(d), "gate": gate.model_dump(mode="json"), "summary": report.summary(),
            "output": str(out) if out else None}
    app.emit(data, lambda: show_report(app, report, gate, out))
    return 0 if gate.passed else 1


def cmd_stig_diff(app: App) -> int:
    from .stig.report import REPORT_JSON, diff_reports, load_report

    a, b = (results_dir(app, r) / REPORT_JSON for r in (app.args.image_a, app.args.image_b))
    diff = diff_reports(load_report(a), load_report(b))
    app.emit(diff.to_json(), lambda: app.out.print(diff.render_text(), markup=False))
    return 0


def test_stig(app: App, recipe: Recipe, image: Path, out: Path) -> dict[str, Any] | None:
    """After `imagefactory test`: the STIG report of the booted results, into `out`."""
    from .fsutil import digests
    from .steps import stig

    if recipe.stig is None or not (out / stig.BOOTED_RESULTS).is_file():
        return None
    manifest_path = image.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("image", {}).get("file") != image.name:
        manifest = {"image": {"sha256": digests(image)[0]}}  # not the built image: report what ran
    scans = recorded_scans(out, image)
    report, gate = stig.report(recipe, app.book().directory, manifest, scans, out)
    return {"gate": gate.model_dump(mode="json"), "summary": report.summary(), "report": str(out)}


def add_parsers(sts: Any, set_func: Any) -> None:
    s = sts.add_parser("report", help="STIG report and gate of a built or tested image (re-evaluated "
                       "with today's waivers)")
    s.add_argument("image", help="store reference, build directory or 'imagefactory test' output directory")
    s.add_argument("--waivers", action="append", metavar="FILE", help="extra waiver file (repeatable)")
    s.add_argument("--as-of", metavar="DATE", help="evaluate waiver expiry on this date (YYYY-MM-DD)")
    s.add_argument("-o", "--output", help="write stig-report.json/html and checklists here")
    set_func(s, cmd_stig_report)
    s = sts.add_parser("diff", help="what changed in the STIG results between two images")
    s.add_argument("image_a")
    s.add_argument("image_b")
    set_func(s, cmd_stig_diff)
