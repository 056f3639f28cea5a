"""OpenSCAP as a second opinion: an offline scan of an image root with SCAP Security Guide content,
mapped back to DISA STIG ids.

The scan runs `oscap xccdf eval` with `OSCAP_PROBE_ROOT=<root>` against the packaged SSG datastream
of the image's OS family (`CONTENT`), optionally with a tailoring file compiled from the image's
waivers and disabled controls (`compile_tailoring`). The ARF results are parsed (`parse_arf`) and
folded into STIG ids through ComplianceAsCode's control files (`cac`, `to_stig`).

Offline results are **advisory**; when they disagree with the factory's own checks, the booted
imagefactory checks win. On these hosts (openscap-scanner 1.3.7, SSG 0.1.65):

- The platform CPE gates every rule: ubuntu2204 content checks `/etc/lsb-release` for
  Ubuntu/jammy, sle15 content checks the `sles-release` rpm. On any other root - and on SLE Micro
  offline, where the rpm probe fails on a Debian host - every rule is `notapplicable`.
- The dpkginfo probe fails offline in 1.3.7 ("dpkginfo_init has failed"; fixed in 1.3.10), so
  every package is "not installed": `package_*_removed` pass, `package_*_installed` fail, and rules
  guarded by "package installed" are wrong - e.g. all sshd_* rules pass whatever sshd_config says,
  because "openssh-server is not installed".
- The sysctl, shadow and uname probes do not support offline mode: sysctl_* rules fail or error.
- Only file-content and file-metadata checks (permissions, ownership, textfilecontent) are
  trustworthy offline; a scan of the booted VM is authoritative. `offline_probes` finds, from the
  datastream, the rules whose OVAL check or CPE platform uses one of the `UNRELIABLE_OFFLINE`
  probes; `to_stig` reports those as `notchecked` (the evidence keeps what OpenSCAP said) instead
  of passing false passes and false findings on to the report.
- Content bugs remain: e.g. SSG 0.1.65's no_empty_passwords looks for nullok in RHEL's
  /etc/pam.d/system-auth, which Ubuntu does not have, so it always passes there.
- Generated fixes are never run: `oscap xccdf generate fix` scripts would run `sysctl -w` against
  the build host's kernel from a chroot.

Tailoring: a not-applicable waiver or a disabled control deselects the rules (they become
`notselected` and the STIG id gets no OpenSCAP result); other live waivers mark the rules
`role="unscored"`, which OpenSCAP evaluates but reports as `informational` (XCCDF 1.2 semantics).
A waiver must never change a result (`results.py`), so for those rules the OVAL check's own outcome
is recovered from the ARF and reported instead. Expired waivers are not compiled: they count.

Content version: the SSG release is read from the datastream itself (the Benchmark's
`<xccdf:version>`, e.g. 0.1.65) rather than from `dpkg-query`, because
`IMAGEFACTORY_SCAP_CONTENT` may point at content that no package installed.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import BuildError, CommandFailed, CommandNotFound, UserError
from ..run import run
from .cac import CacMapping, load_mapping, rule_id
from .results import Result, RuleResult, ScanResults, WaiverDecision

log = logging.getLogger(__name__)

ENV_CONTENT = "IMAGEFACTORY_SCAP_CONTENT"
DEFAULT_CONTENT_DIR = Path("/usr/share/xml/scap/ssg/content")
TAILORED_PROFILE = "xccdf_imagefactory_profile_tailored"
ARF_NAME = "openscap-arf.xml"
REPORT_NAME = "openscap-report.html"

# OS family -> (datastream file, profile id); None: the packaged SSG has no content for it.
# Ubuntu 22.04 content in SSG 0.1.65 has CIS and "standard" only (its STIG profile arrived in
# 0.1.74); CIS Level 1 Server is the closest to the STIG. SLE Micro 5 has no product in 0.1.65;
# SLE 15's STIG profile is the nearest (and offline its rpm-based platform check fails anyway).
CONTENT: dict[str, tuple[str, str] | None] = {
    "ubuntu": ("ssg-ubuntu2204-ds.xml", "xccdf_org.ssgproject.content_profile_cis_level1_server"),
    "sle-micro": ("ssg-sle15-ds.xml", "xccdf_org.ssgproject.content_profile_stig"),
    "debian": None,
}
NO_CONTENT: dict[str, str] = {
    "debian": "SCAP Security Guide 0.1.65 (Debian 12's ssg-* packages) has no Debian 12 product",
}

NS = {
    "x": "http://checklists.nist.gov/xccdf/1.2",
    "arf": "http://scap.nist.gov/schema/asset-reporting-format/1.1",
    "ovalres": "http://oval.mitre.org/XMLSchema/oval-results-5",
}
_X, _ARF, _OVALRES = (f"{{{NS[k]}}}" for k in ("x", "arf", "ovalres"))
OVAL_SYSTEM = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
_OVALDEF = f"{{{OVAL_SYSTEM}}}"
_CPELANG = "{http://cpe.mitre.org/language/2.0}"
_CPEDICT = "{http://cpe.mitre.org/dictionary/2.0}"
_DS = "{http://scap.nist.gov/schema/scap/source/1.2}"

# OVAL probes whose results are wrong or missing when openscap 1.3.7 scans a tree through
# OSCAP_PROBE_ROOT: dpkginfo fails ("dpkginfo_init has failed": every package looks absent); the
# rpm probes fail on a Debian host; sysctl, shadow and uname refuse offline mode; the systemd,
# process, network and mount probes describe the build host (or nothing), not the image.
UNRELIABLE_OFFLINE = frozenset({
    "dpkginfo", "rpminfo", "rpmverify", "rpmverifyfile", "rpmverifypackage", "sysctl", "shadow", "uname",
    "systemdunitproperty", "systemdunitdependency", "process", "process58", "interface", "partition",
    "routingtable", "inetlisteningservers", "iflisteners", "runlevel", "selinuxboolean",
    "selinuxsecuritycontext", "environmentvariable", "environmentvariable58",
})

# XCCDF rule result -> the narrowed vocabulary of `results.Result`; None = not evaluated.
XCCDF_RESULTS: dict[str, Result | None] = {
    "pass": "pass",
    "fixed": "pass",  # only after --remediate, which the factory never runs
    "fail": "fail",
    "error": "error",
    "unknown": "error",
    "notapplicable": "notapplicable",
    "notchecked": "notchecked",
    "informational": "notchecked",
    "notselected": None,
}
# OVAL result of a compliance definition (SSG has no other kind of rule check) -> XCCDF result.
OVAL_TO_XCCDF = {"true": "pass", "false": "fail", "unknown": "unknown", "error": "error",
                 "not evaluated": "notchecked", "not applicable": "notapplicable"}


@dataclass(frozen=True)
class ScannerVersion:
    version: str  # e.g. 1.3.7

    def __str__(self) -> str:
        return f"OpenSCAP {self.version}"


@dataclass(frozen=True)
class ContentInfo:
    family: str
    datastream: Path
    profile: str  # the SSG profile id (tailoring extends it)
    ssg_version: str  # e.g. 0.1.65, from the datastream's Benchmark <version>

    def describe(self, profile: str | None = None) -> str:
        """e.g. `ssg-ubuntu2204-ds.xml (SSG 0.1.65) profile xccdf_..._cis_level1_server`."""
        return f"{self.datastream.name} (SSG {self.ssg_version}) profile {profile or self.profile}"


@dataclass(frozen=True)
class ArfResults:
    results: dict[str, str]  # XCCDF rule id -> result as OpenSCAP wrote it
    check_outcomes: dict[str, str]  # unscored (informational) rules: their OVAL check's outcome


@dataclass(frozen=True)
class OscapScan:
    root: Path
    arf: Path
    report: Path
    scanner: ScannerVersion
    content: ContentInfo
    profile: str  # the profile evaluated: TAILORED_PROFILE when a tailoring file was used
    tailoring: Path | None
    returncode: int  # 0 all pass, 2 some failed
    results: dict[str, str]  # XCCDF rule id -> result, every rule of the datastream
    check_outcomes: dict[str, str] = field(default_factory=dict)  # see `ArfResults`
    # evaluated rule id -> the `UNRELIABLE_OFFLINE` probes its check or platform uses
    unreliable: dict[str, tuple[str, ...]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def scanner_version(self) -> str:
        return str(self.scanner)

    def describe_content(self) -> str:
        text = self.content.describe()
        return f"{text}, tailored ({self.tailoring.name})" if self.tailoring else text

    def summary(self) -> dict[str, Any]:
        """JSON-able facts for build records."""
        return {"scanner": str(self.scanner), "content": self.describe_content(), "profile": self.profile,
                "arf": str(self.arf), "report": str(self.report), "returncode": self.returncode,
                "counts": dict(self.counts)}


def content_dir() -> Path:
    """`$IMAGEFACTORY_SCAP_CONTENT`, else Debian's `/usr/share/xml/scap/ssg/content`."""
    env = os.environ.get(ENV_CONTENT)
    return Path(env) if env else DEFAULT_CONTENT_DIR


def _content_spec(family: str) -> tuple[str, str] | None:
    if family not in CONTENT:
        raise UserError(f"unknown OS family {family!r} for OpenSCAP", hint=f"one of: {', '.join(CONTENT)}")
    return CONTENT[family]


def no_content_reason(family: str) -> str | None:
    """Why a family is not scanned by OpenSCAP, or None if its content is there."""
    spec = _content_spec(family)
    if spec is None:
        return NO_CONTENT.get(family, "no SCAP content configured")
    path = content_dir() / spec[0]
    if not path.is_file():
        return (f"SCAP content {path} not found: install ssg-debderived and ssg-nondebian "
                f"(ci/bootstrap.sh does), or set {ENV_CONTENT}")
    return None


def scanner_info() -> ScannerVersion | None:
    """The installed oscap's version, or None when oscap is not installed."""
    try:
        res = run(["oscap", "--version"], check=False, quiet=True, timeout=60)
    except CommandNotFound:
        return None
    first = res.stdout.splitlines()[0] if res.stdout else ""
    m = re.search(r"\(oscap\)\s+(\d[\w.+~-]*)", first)
    if res.returncode != 0 or not m:
        raise BuildError(f"unexpected output of 'oscap --version' (exit code {res.returncode}): {first!r}")
    return ScannerVersion(m.group(1))


@lru_cache(maxsize=8)
def _benchmark_version(path: Path, mtime_ns: int) -> str:
    """The first XCCDF 1.2 Benchmark's own <version> (SSG writes its release there), read
    incrementally: it sits a few hundred lines into a 10-20 MB file."""
    depth, bench_depth = 0, -1
    try:
        for event, el in ET.iterparse(path, events=("start", "end")):
            if event == "start":
                depth += 1
                if el.tag == f"{_X}Benchmark" and bench_depth < 0:
                    bench_depth = depth
                continue
            if el.tag == f"{_X}version" and depth == bench_depth + 1 and bench_depth >= 0:
                return (el.text or "").strip()
            depth -= 1
    except ET.ParseError as e:
        raise UserError(f"{path}: not valid XML: {e}") from None
    raise UserError(f"{path}: no XCCDF 1.2 Benchmark version found (not an SSG datastream?)")


def content_info(family: str) -> ContentInfo | None:
    """Datastream, profile and SSG version for an OS family; None if the family has no content or
    its datastream is not installed (`no_content_reason` says which): the scan is advisory, like
    a missing oscap, a missing package must not fail a build."""
    spec = _content_spec(family)
    why = no_content_reason(family)
    if spec is None or why:
        if spec is not None:
            log.warning("OpenSCAP: %s", why)
        return None
    name, profile = spec
    path = content_dir() / name
    return ContentInfo(family, path, profile, _benchmark_version(path.resolve(), path.stat().st_mtime_ns))


def _remark(parent: ET.Element, text: str) -> None:
    ET.SubElement(parent, f"{_X}remark").text = text


def compile_tailoring(out: Path, *, family: str, benchmark: str, waivers: dict[str, WaiverDecision],
                      disabled: dict[str, str]) -> Path | None:
    """Write an XCCDF 1.2 Tailoring file that extends the family's profile as `TAILORED_PROFILE`.

    `waivers` and `disabled` (reason) are keyed by STIG id. Not-applicable waivers and disabled
    controls deselect their SSG rules; other waivers that have not expired make them unscored.
    STIG ids ComplianceAsCode does not map are skipped. Returns None for families without content.
    """
    spec = _content_spec(family)
    if spec is None:
        return None
    ds_name, base_profile = spec
    mapping = load_mapping(benchmark)
    deselect: dict[str, list[str]] = {}  # XCCDF rule id -> remarks
    unscored: dict[str, list[str]] = {}
    for stig_id, reason in sorted(disabled.items()):
        for rid in _rules_of(mapping, stig_id):
            deselect.setdefault(rid, []).append(f"{stig_id}: disabled by tailoring: {reason.strip()}")
    for stig_id, w in sorted(waivers.items()):
        if w.expired:
            continue  # an expired waiver resurfaces the finding: OpenSCAP must score it
        target = deselect if w.type == "not-applicable" else unscored
        for rid in _rules_of(mapping, stig_id):
            target.setdefault(rid, []).append(f"{stig_id}: {w.comment()}")
    ET.register_namespace("xccdf", NS["x"])
    root = ET.Element(f"{_X}Tailoring", {"id": f"xccdf_imagefactory_tailoring_{family}"})
    ET.SubElement(root, f"{_X}benchmark", {"href": str(content_dir() / ds_name)})
    ET.SubElement(root, f"{_X}version", {"time": _timestamp()}).text = "1"
    profile = ET.SubElement(root, f"{_X}Profile", {"id": TAILORED_PROFILE, "extends": base_profile})
    ET.SubElement(profile, f"{_X}title").text = f"{base_profile} tailored by imagefactory ({benchmark})"
    ET.SubElement(profile, f"{_X}description").text = (
        f"{len(deselect)} rules deselected (not-applicable waivers, disabled controls), "
        f"{len(unscored)} unscored (waived: evaluated, not scored).")
    for rid in sorted(deselect):
        sel = ET.SubElement(profile, f"{_X}select", {"idref": rid, "selected": "false"})
        for text in deselect[rid] + unscored.get(rid, []):  # deselection wins; keep the waiver's word
            _remark(sel, text)
    for rid in sorted(set(unscored) - set(deselect)):
        ref = ET.SubElement(profile, f"{_X}refine-rule", {"idref": rid, "role": "unscored"})
        for text in unscored[rid]:
            _remark(ref, text)
    ET.indent(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return out


def _rules_of(mapping: CacMapping, stig_id: str) -> tuple[str, ...]:
    rules = mapping.xccdf_rules(stig_id)
    if not rules:
        log.debug("%s: ComplianceAsCode maps no SSG rule; nothing to tailor", stig_id)
    return rules


def _timestamp() -> str:
    # SOURCE_DATE_EPOCH keeps the tailoring file byte-identical across reproducible rebuilds.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S")


def scan_offline(root: Path, *, family: str, outdir: Path, tailoring: Path | None = None,
                 timeout: float = 300, attempts: int = 2) -> OscapScan | None:
    """Scan the image tree `root` offline; None for families without content.

    Writes `openscap-arf.xml` and `openscap-report.html` to `outdir`. Exit codes 0 (all pass)
    and 2 (some rule failed) are results; anything else is a `BuildError`. A whole-profile scan
    takes seconds, but oscap 1.3.7 now and then deadlocks in its probe threads (seen here: all
    threads in futex waits, no CPU): after `timeout` seconds it is stopped and run again, up to
    `attempts` times.
    """
    info = content_info(family)
    if info is None:
        log.info("OpenSCAP: no scan for %s: %s", family, no_content_reason(family))
        return None
    scanner = scanner_info()
    if scanner is None:
        raise CommandNotFound("oscap not found", hint="install the Debian package 'openscap-scanner'")
    root = root.resolve()
    if not root.is_dir():
        raise UserError(f"{root}: image root to scan is not a directory")
    outdir.mkdir(parents=True, exist_ok=True)
    arf, report = outdir / ARF_NAME, outdir / REPORT_NAME
    for stale in (arf, report):  # never read a previous run's results after a failed scan
        stale.unlink(missing_ok=True)
    profile = TAILORED_PROFILE if tailoring else info.profile
    argv: list[str | os.PathLike[str]] = ["oscap", "xccdf", "eval", "--profile", profile]
    if tailoring:
        argv += ["--tailoring-file", tailoring]
    argv += ["--results-arf", arf, "--report", report, info.datastream]
    # stdout is one "Title/Rule/Result" block per rule: the ARF has it all, keep it out of the log.
    for attempt in range(1, attempts + 1):
        try:
            res = run(argv, env={"OSCAP_PROBE_ROOT": str(root)}, check=False, timeout=timeout, quiet=True)
            break
        except CommandFailed as e:  # timed out: stopped (SIGINT, then SIGKILL)
            if attempt == attempts:
                raise BuildError(f"OpenSCAP scan of {root} hung {attempts} times ({e})",
                                 hint="oscap 1.3.7 deadlocks now and then; set stig.openscap: false to "
                                      "skip the advisory offline scan") from None
            log.warning("OpenSCAP scan hung for %.0f s (attempt %d of %d): running it again", timeout,
                        attempt, attempts)
            for stale in (arf, report):
                stale.unlink(missing_ok=True)
    if res.returncode not in (0, 2):
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
        raise BuildError(f"OpenSCAP scan of {root} failed with exit code {res.returncode}:\n{tail}",
                         hint="exit code 1 is an oscap error (bad content, tailoring or option)")
    if not arf.is_file():
        raise BuildError(f"OpenSCAP scan of {root} wrote no results to {arf}")
    parsed = read_arf(arf)
    probes = offline_probes(info.datastream)
    unreliable = {rid: tuple(sorted(probes[rid])) for rid, r in parsed.results.items()
                  if r != "notselected" and rid in probes}
    return OscapScan(root=root, arf=arf, report=report, scanner=scanner, content=info, profile=profile,
                     tailoring=tailoring, returncode=res.returncode, results=parsed.results,
                     check_outcomes=parsed.check_outcomes, unreliable=unreliable,
                     counts=dict(Counter(parsed.results.values())))


def offline_probes(datastream: Path) -> dict[str, frozenset[str]]:
    """XCCDF rule id -> the `UNRELIABLE_OFFLINE` probes that its OVAL check, or the CPE platform
    checks of the rule, its groups and the benchmark use (rules using none are left out)."""
    return _offline_probes(datastream.resolve(), datastream.stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _offline_probes(path: Path, mtime_ns: int) -> dict[str, frozenset[str]]:
    defs: dict[str, tuple[list[str], list[str]]] = {}  # OVAL definition -> (tests, extended definitions)
    tests: dict[str, str] = {}  # OVAL test id -> probe (textfilecontent54, dpkginfo, ...)
    platforms: dict[str, list[str]] = {}  # CPE platform id -> CPE names (fact-refs)
    cpe_checks: dict[str, str] = {}  # CPE name -> OVAL definition
    rules: dict[str, tuple[list[str], list[str]]] = {}  # rule -> (OVAL definitions, platform idrefs)
    scopes: list[tuple[int, list[str]]] = []  # (depth, platform idrefs) of enclosing Benchmark/Group/Rule
    depth = 0
    try:
        for event, el in ET.iterparse(path, events=("start", "end")):
            tag = el.tag
            if event == "start":
                depth += 1
                if tag in (f"{_X}Benchmark", f"{_X}Group", f"{_X}Rule"):
                    scopes.append((depth, []))
                continue
            if tag == f"{_X}platform" and scopes and scopes[-1][0] == depth - 1:
                scopes[-1][1].append(el.get("idref", ""))
            elif tag == f"{_X}Rule":
                refs = [r.get("name", "") for c in el.findall(f"{_X}check") if c.get("system") == OVAL_SYSTEM
                        for r in c.findall(f"{_X}check-content-ref")]
                rules[el.get("id", "")] = (refs, [p for _, level in scopes for p in level])
                scopes.pop()
                el.clear()
            elif tag in (f"{_X}Benchmark", f"{_X}Group"):
                scopes.pop()
            elif tag == f"{_OVALDEF}definition":
                defs[el.get("id", "")] = ([c.get("test_ref", "") for c in el.iter(f"{_OVALDEF}criterion")],
                                          [e.get("definition_ref", "") for e in
                                           el.iter(f"{_OVALDEF}extend_definition")])
                el.clear()
            elif tag == f"{_OVALDEF}tests":
                for t in el:
                    tests[t.get("id", "")] = t.tag.rpartition("}")[2].removesuffix("_test")
                el.clear()
            elif tag == f"{_CPELANG}platform":
                platforms[el.get("id", "")] = [f.get("name", "") for f in el.iter(f"{_CPELANG}fact-ref")]
                el.clear()
            elif tag == f"{_CPEDICT}cpe-item":
                check = el.find(f"{_CPEDICT}check")
                if check is not None and check.text:
                    cpe_checks[el.get("name", "")] = check.text.strip()
                el.clear()
            elif tag == f"{_DS}component":
                el.clear()  # bounds memory to one component (XCCDF, OVAL, CPE dictionary, ...)
            depth -= 1
    except ET.ParseError as e:
        raise UserError(f"{path}: not valid XML: {e}") from None

    memo: dict[str, frozenset[str]] = {}

    def probes_of(definition: str) -> frozenset[str]:
        if definition not in memo:
            memo[definition] = frozenset()  # cycle guard
            test_refs, extends = defs.get(definition, ([], []))
            found = {tests.get(t, "") for t in test_refs}
            for d in extends:
                found |= probes_of(d)
            memo[definition] = frozenset(found & UNRELIABLE_OFFLINE)
        return memo[definition]

    out: dict[str, frozenset[str]] = {}
    for rid, (refs, idrefs) in rules.items():
        names = [n for i in idrefs for n in (platforms.get(i[1:], []) if i.startswith("#") else [i])]
        found = frozenset().union(*(probes_of(d) for d in refs + [cpe_checks.get(n, "") for n in names]))
        if found:
            out[rid] = found
    return out


def parse_arf(path: Path) -> dict[str, str]:
    """Rule-result idref -> result (pass, fail, error, unknown, notapplicable, notchecked,
    notselected, informational, fixed) from an ARF (or plain XCCDF results) file."""
    return read_arf(path).results


def read_arf(path: Path) -> ArfResults:
    """`parse_arf` plus, for rules OpenSCAP reports as unscored/informational, the outcome of
    their OVAL check, recovered from the OVAL results embedded in the ARF.

    Parsed incrementally: an ARF embeds the whole datastream and the collected system
    characteristics (15-20 MB for a small root), so subtrees are dropped once read."""
    results: dict[str, str] = {}
    unscored: dict[str, tuple[str, str, bool]] = {}  # rule id -> (ARF report id, OVAL definition, negate)
    oval: dict[tuple[str, str], str] = {}  # (ARF report id, definition id) -> OVAL result
    report_id = ""
    in_rule = False
    try:
        for event, el in ET.iterparse(path, events=("start", "end")):
            if event == "start":
                if el.tag == f"{_ARF}report":
                    report_id = el.get("id", "")
                elif el.tag == f"{_X}rule-result":
                    in_rule = True
                continue
            if el.tag == f"{_X}rule-result":
                rid, result = el.get("idref", ""), (el.findtext(f"{_X}result") or "").strip()
                results[rid] = result
                if result == "informational" and el.get("role") == "unscored":
                    ref = _oval_ref(el)
                    if ref:
                        unscored[rid] = ref
                in_rule = False
                el.clear()
            elif el.tag == f"{_OVALRES}definition":
                oval[(report_id, el.get("definition_id", ""))] = el.get("result", "")
                el.clear()
            elif not in_rule:
                el.clear()
    except ET.ParseError as e:
        raise BuildError(f"{path}: OpenSCAP results are not valid XML: {e}") from None
    outcomes: dict[str, str] = {}
    for rid, (report, definition, negate) in unscored.items():
        raw = oval.get((report, definition))
        if raw is None:  # href did not name an ARF report: OVAL ids are unique in SSG content
            raw = next((v for (_, d), v in oval.items() if d == definition), None)
        if raw is None or raw not in OVAL_TO_XCCDF:
            continue
        outcome = OVAL_TO_XCCDF[raw]
        if negate and outcome in ("pass", "fail"):
            outcome = "fail" if outcome == "pass" else "pass"
        outcomes[rid] = outcome
    return ArfResults(results, outcomes)


def _oval_ref(rule_result: ET.Element) -> tuple[str, str, bool] | None:
    for check in rule_result.findall(f"{_X}check"):
        ref = check.find(f"{_X}check-content-ref")
        if check.get("system") == OVAL_SYSTEM and ref is not None and ref.get("name"):
            negate = check.get("negate", "false") in ("true", "1")
            return ref.get("href", "").lstrip("#"), ref.get("name", ""), negate
    return None


def _rule_status(scan: OscapScan, rid: str) -> tuple[Result | None, str]:
    """One SSG rule's status for the STIG roll-up, and how it reads in the evidence."""
    raw = scan.results.get(rid)
    if raw is None:
        return None, f"{rid}: not in the datastream"
    text = f"{rid}: {raw}"
    if raw == "informational" and rid in scan.check_outcomes:
        raw = scan.check_outcomes[rid]
        text = f"{rid}: {raw} (unscored by tailoring)"
    if raw not in XCCDF_RESULTS:
        return "error", f"{rid}: unexpected result {raw!r}"
    status = XCCDF_RESULTS[raw]
    if status is None:
        return None, f"{text} (not in the profile)"
    if rid in scan.unreliable:
        probes = ", ".join(scan.unreliable[rid])
        return "notchecked", f"{text}, not trusted offline (OVAL probes: {probes})"
    return status, text


def _roll_up(statuses: list[Result | None]) -> Result | None:
    evaluated = [s for s in statuses if s is not None]
    if not evaluated:
        return None
    if "fail" in evaluated:
        return "fail"  # a failing rule fails the STIG id even when the profile lacks its other rules
    if len(evaluated) < len(statuses):
        return None  # a partial pass is no pass: the STIG id gets no OpenSCAP result
    for s in ("error", "notchecked"):
        if s in evaluated:
            return s
    return "notapplicable" if all(s == "notapplicable" for s in evaluated) else "pass"


def to_stig(scan: OscapScan, benchmark: str, target: str) -> ScanResults:
    """Fold SSG rule results into STIG ids through the ComplianceAsCode mapping.

    Per STIG id: fail if any of its rules failed; otherwise only when every rule was evaluated
    (none notselected or missing from the profile - else the STIG id gets no OpenSCAP result):
    error if any errored (or was unknown), notchecked if any was not checked or is not trusted
    offline (`offline_probes`), notapplicable if all were, else pass (pass mixed with
    notapplicable is a pass, e.g. grub2 BIOS vs UEFI rules)."""
    mapping = load_mapping(benchmark)
    out: dict[str, RuleResult] = {}
    for stig_id, shorts in mapping.rules.items():
        if not shorts:
            continue
        pairs = [_rule_status(scan, rule_id(s)) for s in shorts]
        status = _roll_up([p[0] for p in pairs])
        if status is None:
            continue
        evidence = f"OpenSCAP offline ({scan.content.datastream.name}): " + "; ".join(p[1] for p in pairs)
        out[stig_id] = RuleResult(status=status, evidence=evidence, source="openscap")
    return ScanResults(benchmark=benchmark, target=target, mode="offline", results=out,
                       scanner=str(scan.scanner), content=scan.describe_content())
