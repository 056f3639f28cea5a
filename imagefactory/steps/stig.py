"""STIG build steps: bake the selected controls into the root, check them offline, scan with
OpenSCAP, and after the boot test turn all results into the report, checklists and gate.

Never touches the build host: fixes are pure-Python edits inside the root (sysctl only through
drop-in files, units only through symlinks), packages are installed by mmdebstrap and purged with
apt inside the chroot, and OpenSCAP only scans the root offline (its generated fixes never run).

Order in the rootfs builder: `packages()` goes into the bootstrap include list; `stig-packages`
purges what controls forbid; `stig-apply` edits files after every other writer (distro config,
recipe files, RKE2 config) so nothing overwrites a fix; `stig-check` runs after make-disk, when
grub.cfg (kernel arguments) exists, and fails the build if an applied fix does not hold.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from .. import __version__
from ..context import BuildContext, Step
from ..errors import BuildError
from ..recipes.model import Recipe
from ..stig import openscap
from ..stig.actions import apply_fixes, check_root, package_plan
from ..stig.report import (
    GatePolicy,
    GateResult,
    ImageInfo,
    ScannerInfo,
    Selection,
    StigReport,
    build_report,
    evaluate_gate,
    write_reports,
)
from ..stig.results import RuleResult, ScanResults, read_scans, write_scans
from ..stig.selection import Selected, recipe_waivers, selections
from ..stig.waivers import WaiverSet, load_waivers

log = logging.getLogger(__name__)
OFFLINE_RESULTS = "stig-offline.json"  # imagefactory's offline check + OpenSCAP, kept in the build dir
BOOTED_RESULTS = "stig-results.json"  # written by the booted suite


def packages(recipe: Recipe) -> tuple[list[str], list[str]]:
    """(remove, install) over all selected benchmarks."""
    remove: list[str] = []
    install: list[str] = []
    for s in selections(recipe):
        r, i = package_plan(s.target, s.catalogue.controls_for(s.target), s.tailoring)
        remove += [p for p in r if p not in remove]
        install += [p for p in i if p not in install]
    return remove, install


def stig_packages(ctx: BuildContext) -> None:
    remove, _ = packages(ctx.recipe)
    installed = {n for n, _ in ctx.distro.installed_packages(ctx.root)}
    present = [p for p in remove if p in installed]
    if present:
        ctx.in_root(["apt-get", "purge", "-y", "--auto-remove", *present])
    ctx.manifest.setdefault("stig", {})["purged"] = present


def stig_apply(ctx: BuildContext) -> None:
    summary: dict[str, Any] = {}
    failed: list[str] = []
    for s in selections(ctx.recipe):
        res = apply_fixes(ctx.root, s.target, s.catalogue.controls_for(s.target), s.tailoring)
        for arg in res.kernel_args:
            if arg not in ctx.kernel_args:
                ctx.kernel_args.append(arg)
        failed += [f"{s.benchmark} {cid}: {why}" for cid, why in res.failed.items()]
        summary[s.benchmark] = {"target": s.target, "applied": len(res.applied),
                                "skipped": len(res.skipped), "failed": len(res.failed)}
        log.info("STIG %s (%s): %d fixes applied, %d skipped", s.benchmark, s.target, len(res.applied),
                 len(res.skipped))
    if failed:
        raise BuildError("STIG fixes failed:\n  " + "\n  ".join(failed),
                         hint="fix the catalogue entry or disable the control in stig.tailoring "
                              "with a reason")
    ctx.manifest.setdefault("stig", {})["apply"] = summary
    ctx.manifest["stig"]["kernel_args"] = list(ctx.kernel_args)


def stig_check(ctx: BuildContext) -> None:
    """Offline check of every bake control; an applied fix that does not hold fails the build."""
    scans: list[ScanResults] = []
    broken: list[str] = []
    installed = [n for n, _ in ctx.distro.installed_packages(ctx.root)]
    for s in selections(ctx.recipe):
        controls = s.catalogue.controls_for(s.target)
        results = check_root(ctx.root, s.target, controls, s.tailoring, packages=installed)
        scans.append(ScanResults(
            s.benchmark, s.target, "offline",
            {cid: RuleResult(r.status, r.evidence, "offline") for cid, r in results.items()},
            scanner=f"imagefactory {__version__}",
            content=f"{s.catalogue.benchmark.title} {s.catalogue.benchmark.release_info}"))
        for c in controls:
            r = results.get(c.id)
            applied = (c.phase == "bake" and c.id not in s.tailoring.disable and c.fix_for(s.target))
            if applied and r is not None and r.status != "pass":
                broken.append(f"{c.id} ({s.benchmark}): {r.status}: {r.evidence.splitlines()[0][:200]}")
    scans += _openscap(ctx)
    write_scans(ctx.out_dir / OFFLINE_RESULTS, scans)
    if broken:
        raise BuildError("applied STIG fixes do not hold in the image:\n  " + "\n  ".join(broken),
                         hint="another build step overwrote them, or the catalogue fix and check disagree")


def _openscap(ctx: BuildContext) -> list[ScanResults]:
    """Scan the root with OpenSCAP where SSG content exists for the family (advisory, offline)."""
    assert ctx.recipe.stig is not None
    info = ctx.manifest.setdefault("stig", {})
    family = ctx.recipe.os.family
    if not ctx.recipe.stig.openscap:
        info["openscap"] = {"ran": False, "why": "stig.openscap: false"}
        return []
    if openscap.scanner_info() is None or openscap.content_info(family) is None:
        why = ("oscap is not installed" if openscap.scanner_info() is None
               else f"no SCAP Security Guide content for {family}")
        info["openscap"] = {"ran": False, "why": why}
        log.info("OpenSCAP: not run: %s", why)
        return []
    sel = selections(ctx.recipe)[0]
    tailoring = openscap.compile_tailoring(
        ctx.out_dir / "openscap-tailoring.xml", family=family, benchmark=sel.benchmark,
        waivers=_decisions(ctx.recipe, ctx.loaded.directory, sel, dt.date.today()),
        disabled=dict(sel.tailoring.disable))
    scan = openscap.scan_offline(ctx.root, family=family, outdir=ctx.out_dir, tailoring=tailoring)
    if scan is None:
        info["openscap"] = {"ran": False, "why": f"no SCAP Security Guide content for {family}"}
        return []
    info["openscap"] = {"ran": True, "mode": "offline", "arf": scan.arf.name, "report": scan.report.name,
                        "scanner": scan.scanner_version, "profile": scan.profile}
    return [openscap.to_stig(scan, sel.benchmark, sel.target)]


def _decisions(recipe: Recipe, recipe_dir: Path, sel: Selected, today: dt.date) -> dict[str, Any]:
    ws = recipe_waivers(recipe, recipe_dir)
    role = recipe.stig.rke2_role if recipe.stig and recipe.rke2 else None
    return ws.decisions(sel.benchmark, os_family=recipe.os.family, release=recipe.os.release, role=role,
                        today=today, catalogue=sel.catalogue)


def report(recipe: Recipe, recipe_dir: Path, manifest: dict[str, Any], scans: list[ScanResults],
           outdir: Path | None, *, today: dt.date | None = None, extra_waivers: list[Path] | None = None
           ) -> tuple[StigReport, GateResult]:
    """Join every scan with the XCCDF, waivers and gate policy; write the reports into `outdir`
    (JSON, HTML, CKLB and CKL checklists) unless it is None."""
    assert recipe.stig is not None
    today = today or dt.date.today()
    sels = selections(recipe)
    ws = recipe_waivers(recipe, recipe_dir)
    if extra_waivers:
        ws = WaiverSet.merge(ws, *(load_waivers(p) for p in extra_waivers))
    role = recipe.stig.rke2_role if recipe.rke2 else None
    waivers = {s.benchmark: ws.decisions(s.benchmark, os_family=recipe.os.family, release=recipe.os.release,
                                         role=role, today=today, catalogue=s.catalogue) for s in sels}
    image = manifest.get("image", {})
    info = ImageInfo(name=recipe.name, recipe=recipe.name, build_id=str(manifest.get("build_id", "")),
                     digest=str(image.get("sha256", "")), os_family=recipe.os.family,
                     os_release=recipe.os.release, kernel=manifest.get("kernel"),
                     created=str(manifest.get("created", "")))
    scanners = []
    seen: set[tuple[str, str, str]] = set()
    for sc in scans:
        name, _, version = sc.scanner.partition(" ")
        key = (name, version, sc.mode)
        if key not in seen:
            seen.add(key)
            scanners.append(ScannerInfo(name=name, version=version, content=sc.content, mode=sc.mode,
                                        artifact="openscap-arf.xml" if name == "OpenSCAP" else None))
    rep = build_report(
        scans, image=info,
        selections=[Selection(benchmark=s.benchmark, target=s.target, disabled=dict(s.tailoring.disable),
                              enabled=s.tailoring.enable) for s in sels],
        waivers=waivers, scanners=scanners, today=today)
    g = recipe.stig.gate
    gate = evaluate_gate(rep, GatePolicy(max_open={1: 0, 2: g.cat2_max_open, 3: g.cat3_max_open}))
    rep = rep.with_gate(gate)
    if outdir is not None:
        write_reports(rep, outdir)
    return rep, gate


def gate_error(gate: GateResult) -> BuildError:
    return BuildError("STIG gate failed:\n  " + "\n  ".join(gate.reasons),
                      hint="fix the findings, or waive them (stig.waivers) with a justification and, "
                           "for CAT I, an approver; see stig-report.html")


def load_scans(directory: Path) -> list[ScanResults]:
    """Booted results first (they win), then the offline ones, from an image's build directory."""
    out: list[ScanResults] = []
    for name in (BOOTED_RESULTS, OFFLINE_RESULTS):
        if (directory / name).is_file():
            out += read_scans(directory / name)
    return out


def steps_before_leaving_chroot(recipe: Recipe) -> list[Step]:
    if recipe.stig is None:
        return []
    return [Step("stig-packages", stig_packages), Step("stig-apply", stig_apply)]


def steps_after_disk(recipe: Recipe) -> list[Step]:
    return [Step("stig-check", stig_check)] if recipe.stig is not None else []
