"""OpenSCAP as a second opinion: an offline scan of an image root with SCAP Security Guide content,
mapped back to DISA STIG ids.

The scan runs `oscap xccdf eval` with `OSCAP_PROBE_ROOT=<root>` against the packaged SSG datastream
of the image's OS family (`CONTENT`), with a tailoring file (`compile_tailoring`) that widens the
family's profile to every SSG rule ComplianceAsCode maps to the benchmark's STIG ids (Ubuntu 22.04:
CIS Level 1 Server, 27 STIG rules, becomes 187 - SSG 0.1.65 has no STIG profile for it) and
applies the image's waivers and disabled controls. The ARF results are parsed (`parse_arf`) and
folded into STIG ids through ComplianceAsCode's control files (`cac`, `to_stig`); `stig.compare`
puts them next to imagefactory's own results.

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
  trustworthy offline, and not those of files under /proc and /sys (empty in an image root: the
  NX bit from /proc/cpuinfo, FIPS mode from /proc/sys/crypto/fips_enabled); a scan of the booted
  VM is authoritative. `offline_probes` finds, from the datastream, the rules whose OVAL check or
  CPE platform uses one of the `UNRELIABLE_OFFLINE` probes or reads `RUNTIME_PATHS`; `to_stig`
  reports those as `notchecked` (the evidence keeps what OpenSCAP said) instead of passing false
  passes and false findings on to the report. On a built Ubuntu 22.04 image that is 122 of the
  157 STIG ids OpenSCAP gives a result, 109 of them with dpkginfo among their probes.
- Content bugs remain: SSG 0.1.65's no_empty_passwords looks for nullok in RHEL's
  /etc/pam.d/system-auth, which Ubuntu does not have, so it always passes there (`CONTENT_BUGS`:
  notchecked too). Rules that check something other than DISA's check text, or that an offline
  scan before first boot cannot judge, are listed with the reason in `KNOWN_DIFFERENCES`;
  `stig.compare` attaches it to each disagreement.
- Generated fixes are never run: `oscap xccdf generate fix` scripts would run `sysctl -w` against
  the build host's kernel from a chroot.

Tailoring: the widening selects the mapped rules and the Groups enclosing them (the CIS profiles
deselect whole Groups, which hides any rule selected inside), and sets the mapping's variables
(`refine-value`/`set-value`, e.g. PASS_MAX_DAYS 60 instead of CIS's 365, the DoD banner instead
of CIS's). A not-applicable waiver or a disabled control deselects the rules (they become
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
from .cac import CacMapping, load_mapping, rule_id, short_name, value_id
from .results import Result, RuleResult, ScanResults, WaiverDecision
from .sources import inroot

log = logging.getLogger(__name__)

ENV_CONTENT = "IMAGEFACTORY_SCAP_CONTENT"
DEFAULT_CONTENT_DIR = Path("/usr/share/xml/scap/ssg/content")
TAILORED_PROFILE = "xccdf_imagefactory_profile_tailored"
ARF_NAME = "openscap-arf.xml"
REPORT_NAME = "openscap-report.html"

# OS family -> (datastream file, profile id); None: the packaged SSG has no content for it.
# Ubuntu 22.04 content in SSG 0.1.65 has CIS and "standard" only (its STIG profile arrived in
# 0.1.74); CIS Level 1 Server is the base the tailoring widens to the STIG's rules. SLE Micro 5
# has no product in 0.1.65; SLE 15's STIG profile is the nearest (and offline its rpm-based
# platform check fails anyway).
CONTENT: dict[str, tuple[str, str] | None] = {
    "ubuntu": ("ssg-ubuntu2204-ds.xml", "xccdf_org.ssgproject.content_profile_cis_level1_server"),
    "sle-micro": ("ssg-sle15-ds.xml", "xccdf_org.ssgproject.content_profile_stig"),
    "debian": None,
}
# (family, release) -> content where a release must not use the family's entry: SSG content is
# written for one release, and its platform CPE gates every rule on it (ssg-ubuntu2204-ds.xml
# requires jammy in /etc/lsb-release: on a noble root every rule is notapplicable). Ubuntu 24.04
# has its own product (with a STIG profile) in newer SSG releases only; Debian 12's 0.1.65 has
# none, so a 24.04 image is recorded as "no content" unless `IMAGEFACTORY_SCAP_CONTENT` points
# at content that has it.
RELEASE_CONTENT: dict[tuple[str, str], tuple[str, str] | None] = {
    ("ubuntu", "24.04"): ("ssg-ubuntu2404-ds.xml", "xccdf_org.ssgproject.content_profile_stig"),
}
# The OS release each benchmark's catalogue is for, where the OS family is the benchmark's own
# (Debian uses ubuntu2204's family-generic controls and has no content either way).
BENCHMARK_RELEASE: dict[str, tuple[str, str]] = {
    "ubuntu2204": ("ubuntu", "22.04"),
    "ubuntu2404": ("ubuntu", "24.04"),
}
NO_CONTENT: dict[str, str] = {
    "debian": "SCAP Security Guide 0.1.65 (Debian 12's ssg-* packages) has no Debian 12 product",
}
# Why a release-specific datastream is missing (instead of the generic "install the packages").
MISSING_CONTENT: dict[tuple[str, str], str] = {
    ("ubuntu", "24.04"): ("SCAP Security Guide 0.1.65 (Debian 12's ssg-debderived) has no Ubuntu 24.04 "
                          "product, and ssg-ubuntu2204-ds.xml only applies to Ubuntu 22.04 (its platform "
                          "check requires jammy)"),
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

# Variables of the ComplianceAsCode mapping (newer than the packaged content) -> their name in
# older content, used when the content lacks the newer name: SSG 0.1.65 has one `login_banner_text`
# (selector dod_banners) for /etc/issue, /etc/issue.net and GNOME; ComplianceAsCode split it later.
VALUE_ALIASES = {"remote_login_banner_text": "login_banner_text",
                 "dconf_login_banner_text": "login_banner_text"}

# File systems an image root has only as empty mount points: an OVAL object reading a file there
# (e.g. /proc/cpuinfo for the NX bit) describes nothing offline. Reported like a probe.
RUNTIME_PATHS = {"files under /proc": "/proc/", "files under /sys": "/sys/"}

# (datastream, SSG release, rule short name) -> why the rule's OVAL cannot judge this OS at all;
# `to_stig` reports it notchecked, like a rule whose probes do not work offline.
CONTENT_BUGS: dict[tuple[str, str, str], str] = {
    ("ssg-ubuntu2204-ds.xml", "0.1.65", "no_empty_passwords"): (
        "SSG 0.1.65 content bug: looks for nullok in RHEL's /etc/pam.d/system-auth and password-auth, "
        "which Ubuntu does not have, so it passes whatever /etc/pam.d/common-* say"),
}
# (datastream, SSG release, rule short name) -> why the rule's result can differ from imagefactory's
# check of DISA's check text on these images; `stig.compare` attaches it to each disagreement.
# Found by comparing the scans of a built Ubuntu 22.04 image (README, "STIG hardening").
KNOWN_DIFFERENCES: dict[tuple[str, str, str], str] = {
    ("ssg-ubuntu2204-ds.xml", "0.1.65", "permissions_local_var_log"): (
        "SSG 0.1.65 content bug: checks every file in /var/log for mode 0640, including btmp, wtmp and "
        "lastlog, which DISA's check text excludes (utmp keeps them 0660/0664)"),
    ("ssg-ubuntu2204-ds.xml", "0.1.65", "root_permissions_syslibrary_files"): (
        "SSG 0.1.65 content bug: checks the group of every file under /lib, /lib64, /usr/lib and "
        "/usr/lib64, DISA's check text only '*.so*' files; fails on dbus-daemon-launch-helper (group "
        "messagebus by design)"),
    ("ssg-ubuntu2204-ds.xml", "0.1.65", "file_groupowner_var_log"): (
        "SSG 0.1.65 content bug: expects /var/log group-owned by root (gid 0); DISA's check text "
        "requires group syslog"),
    ("ssg-ubuntu2204-ds.xml", "0.1.65", "accounts_tmout"): (
        "SSG 0.1.65 is stricter than DISA's check text: it accepts only 'declare -xr TMOUT=N' in "
        "/etc/profile or /etc/profile.d/*.sh, DISA's check and fix a plain 'TMOUT=900'"),
    ("ssg-ubuntu2204-ds.xml", "0.1.65", "file_permissions_var_log"): (
        "offline limit: the image has /var/log 0755, Ubuntu's rsyslog makes it 0775 at every boot "
        "(DISA: not applicable while rsyslog is active)"),
    ("ssg-ubuntu2204-ds.xml", "0.1.65", "sudo_remove_nopasswd"): (
        "offline limit: the image is scanned before first boot; cloud-init writes "
        "/etc/sudoers.d/90-cloud-init-users (NOPASSWD for the default user) at first boot"),
}

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


def _content_spec(family: str, release: str | None = None) -> tuple[str, str] | None:
    """The (datastream, profile) for a family, or for one of its releases when that release has
    its own entry; None if there is no content."""
    if family not in CONTENT:
        raise UserError(f"unknown OS family {family!r} for OpenSCAP", hint=f"one of: {', '.join(CONTENT)}")
    if release is not None and (family, release) in RELEASE_CONTENT:
        return RELEASE_CONTENT[(family, release)]
    return CONTENT[family]


def no_content_reason(family: str, release: str | None = None) -> str | None:
    """Why a family (or one release of it) is not scanned by OpenSCAP, or None if its content is
    there."""
    spec = _content_spec(family, release)
    if spec is None:
        return NO_CONTENT.get(family, "no SCAP content configured")
    path = content_dir() / spec[0]
    if not path.is_file():
        if release is not None and (family, release) in MISSING_CONTENT:
            return (f"{MISSING_CONTENT[(family, release)]}: {path} not found "
                    f"(set {ENV_CONTENT} to newer content)")
        return (f"SCAP content {path} not found: install ssg-debderived and ssg-nondebian "
                f"(ci/bootstrap.sh does), or set {ENV_CONTENT}")
    return None


def root_release(root: Path, family: str) -> str | None:
    """The image's own release (`VERSION_ID` of its /etc/os-release) when the tree is of `family`
    (its `ID`); None otherwise: the content of the family is then used as asked."""
    ids = {"ubuntu": ("ubuntu",), "debian": ("debian",), "sle-micro": ("sle-micro", "sl-micro")}
    fields: dict[str, str] = {}
    for name in ("/etc/os-release", "/usr/lib/os-release"):
        p = inroot(root, name)  # links resolve inside the image (etc/os-release -> ../usr/lib/...)
        if p.is_file():
            for line in p.read_text(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    fields[key.strip()] = value.strip().strip("\"'")
            break
    if fields.get("ID") not in ids.get(family, (family,)):
        return None
    return fields.get("VERSION_ID") or None


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


def content_info(family: str, release: str | None = None) -> ContentInfo | None:
    """Datastream, profile and SSG version for an OS family (and release, where it has content of
    its own); None if there is no content or its datastream is not installed (`no_content_reason`
    says which): the scan is advisory, like a missing oscap, a missing package must not fail a build."""
    spec = _content_spec(family, release)
    why = no_content_reason(family, release)
    if spec is None or why:
        if spec is not None and (family, release) not in MISSING_CONTENT:
            log.warning("OpenSCAP: %s", why)
        return None
    name, profile = spec
    path = content_dir() / name
    return ContentInfo(family, path, profile, _benchmark_version(path.resolve(), path.stat().st_mtime_ns))


def _remark(parent: ET.Element, text: str) -> None:
    ET.SubElement(parent, f"{_X}remark").text = text


def compile_tailoring(out: Path, *, family: str, benchmark: str, waivers: dict[str, WaiverDecision],
                      disabled: dict[str, str], release: str | None = None) -> Path | None:
    """Write an XCCDF 1.2 Tailoring file whose `TAILORED_PROFILE` extends the family's profile,
    widened to the STIG and tailored by the waivers.

    - Every SSG rule that ComplianceAsCode maps to a STIG id of `benchmark` and that the
      datastream has is selected (CIS Level 1 Server, the base for Ubuntu 22.04, holds only 27 of
      them), and so are the Groups enclosing it: the CIS profiles deselect whole Groups (`apt`,
      `auditing`, ...), and a rule in a deselected Group stays notselected whatever its own select
      says. SSG rules are all `selected="false"` by default, so a re-selected Group brings in no
      other rule.
    - The mapping's variable selections (`var_accounts_maximum_age_login_defs=60`, ...) override
      the base profile's: `refine-value` with the selector where the content has it, else
      `set-value` for a numeric selector the content predates (SSG 0.1.65 has no 100000 option for
      `var_password_pam_unix_rounds`).
    - `waivers` and `disabled` (reason) are keyed by STIG id. Not-applicable waivers and disabled
      controls deselect their SSG rules (deselection wins over the widening); other waivers that
      have not expired make them unscored. STIG ids ComplianceAsCode does not map are skipped.

    Returns None for families without content, and when the datastream (default release: the
    benchmark's) is not installed.
    """
    if release is None and BENCHMARK_RELEASE.get(benchmark, ("", ""))[0] == family:
        release = BENCHMARK_RELEASE[benchmark][1]
    spec = _content_spec(family, release)
    if spec is None or no_content_reason(family, release):
        return None
    ds_name, base_profile = spec
    datastream = content_dir() / ds_name
    index = datastream_index(datastream)
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
    mapped = mapping.all_rules()
    widen = [rid for rid in mapped if rid in index.rules and rid not in deselect]
    missing = [rid for rid in mapped if rid not in index.rules]
    if missing:
        log.debug("OpenSCAP: %d ComplianceAsCode %s rules are not in %s: %s", len(missing), benchmark,
                  ds_name, ", ".join(short_name(r) for r in missing))
    groups = list(dict.fromkeys(g for rid in widen for g in index.groups.get(rid, ())))
    refine, set_values = _variables(mapping, index)
    ET.register_namespace("xccdf", NS["x"])
    root = ET.Element(f"{_X}Tailoring", {"id": f"xccdf_imagefactory_tailoring_{family}"})
    ET.SubElement(root, f"{_X}benchmark", {"href": str(datastream)})
    ET.SubElement(root, f"{_X}version", {"time": _timestamp()}).text = "1"
    profile = ET.SubElement(root, f"{_X}Profile", {"id": TAILORED_PROFILE, "extends": base_profile})
    ET.SubElement(profile, f"{_X}title").text = (
        f"{base_profile} widened to the {benchmark} STIG and tailored by imagefactory")
    ET.SubElement(profile, f"{_X}description").text = (
        f"{len(widen)} rules ComplianceAsCode maps to {benchmark} STIG ids ({mapping.policy_version}) "
        f"selected ({len(missing)} mapped rules are not in this content), {len(refine) + len(set_values)} "
        f"values from the mapping; {len(deselect)} rules deselected (not-applicable waivers, disabled "
        f"controls), {len(unscored)} unscored (waived: evaluated, not scored).")
    for gid in groups:
        ET.SubElement(profile, f"{_X}select", {"idref": gid, "selected": "true"})
    for rid in widen:
        sel = ET.SubElement(profile, f"{_X}select", {"idref": rid, "selected": "true"})
        _remark(sel, "STIG: " + ", ".join(mapping.stig_ids(rid)))
    for rid in sorted(deselect):
        sel = ET.SubElement(profile, f"{_X}select", {"idref": rid, "selected": "false"})
        for text in deselect[rid] + unscored.get(rid, []):  # deselection wins; keep the waiver's word
            _remark(sel, text)
    for vid, selector in refine.items():
        ET.SubElement(profile, f"{_X}refine-value", {"idref": vid, "selector": selector})
    for vid, value in set_values.items():
        ET.SubElement(profile, f"{_X}set-value", {"idref": vid}).text = value
    for rid in sorted(set(unscored) - set(deselect)):
        ref = ET.SubElement(profile, f"{_X}refine-rule", {"idref": rid, "role": "unscored"})
        for text in unscored[rid]:
            _remark(ref, text)
    ET.indent(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return out


def _variables(mapping: CacMapping, index: DatastreamIndex) -> tuple[dict[str, str], dict[str, str]]:
    """The mapping's variable selections as (Value id -> selector for refine-value, Value id ->
    literal for set-value); selections the content cannot express are left out (logged)."""
    refine: dict[str, str] = {}
    set_values: dict[str, str] = {}
    for stig_id, pairs in mapping.variables.items():
        for var, selector in pairs:
            vid = value_id(var)
            if vid not in index.values and var in VALUE_ALIASES:
                vid = value_id(VALUE_ALIASES[var])
            if vid in refine or vid in set_values:
                continue  # first STIG id wins (ComplianceAsCode selects each variable once)
            if vid not in index.values:
                log.debug("%s: variable %s is not in the content", stig_id, var)
            elif selector in index.values[vid]:
                refine[vid] = selector
            elif re.fullmatch(r"-?\d+", selector):
                set_values[vid] = selector
            else:
                log.debug("%s: the content has no selector %r for %s", stig_id, selector, var)
    return dict(sorted(refine.items())), dict(sorted(set_values.items()))


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
                 timeout: float = 600, attempts: int = 2, release: str | None = None) -> OscapScan | None:
    """Scan the image tree `root` offline; None for families (or releases) without content.

    The content follows the image's release (`release`, else the tree's own /etc/os-release):
    a release with content of its own never falls back to the family's (e.g. Ubuntu 24.04 is not
    scanned with the 22.04 datastream).

    Writes `openscap-arf.xml` and `openscap-report.html` to `outdir`. Exit codes 0 (all pass)
    and 2 (some rule failed) are results; anything else is a `BuildError`. A scan of a built
    Ubuntu 22.04 image with the tailoring widened to the STIG takes 1-1.5 minutes on 2 cores (the
    CIS profile alone seconds), but oscap 1.3.7 now and then deadlocks in its probe threads (seen
    here: all threads in futex waits, no CPU): after `timeout` seconds it is stopped and run
    again, up to `attempts` times.
    """
    release = release or root_release(root, family)
    info = content_info(family, release)
    if info is None:
        log.info("OpenSCAP: no scan for %s%s: %s", family, f" {release}" if release else "",
                 no_content_reason(family, release))
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


@dataclass(frozen=True)
class DatastreamIndex:
    """What the tailoring and the roll-up need to know about one datastream."""

    rules: frozenset[str]  # every XCCDF rule id (SSG: all selected="false" unless a profile selects them)
    values: dict[str, frozenset[str]]  # XCCDF Value id -> its selectors ("" for the default value)
    probes: dict[str, frozenset[str]]  # see `offline_probes`
    # rule id -> the Groups enclosing it, outermost first
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)



def offline_probes(datastream: Path) -> dict[str, frozenset[str]]:
    """XCCDF rule id -> the `UNRELIABLE_OFFLINE` probes that its OVAL check, or the CPE platform
    checks of the rule, its groups and the benchmark use (rules using none are left out)."""
    return datastream_index(datastream).probes


def datastream_index(datastream: Path) -> DatastreamIndex:
    """Rules, Values and offline-unreliable rules of a datastream (parsed once per file version)."""
    return _index(datastream.resolve(), datastream.stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _index(path: Path, mtime_ns: int) -> DatastreamIndex:
    defs: dict[str, tuple[list[str], list[str]]] = {}  # OVAL definition -> (tests, extended definitions)
    tests: dict[str, str] = {}  # OVAL test id -> probe (textfilecontent54, dpkginfo, ...)
    test_objects: dict[str, str] = {}  # OVAL test id -> its object
    runtime_objects: dict[str, frozenset[str]] = {}  # OVAL object -> `RUNTIME_PATHS` kinds it reads
    platforms: dict[str, list[str]] = {}  # CPE platform id -> CPE names (fact-refs)
    cpe_checks: dict[str, str] = {}  # CPE name -> OVAL definition
    rules: dict[str, tuple[list[str], list[str]]] = {}  # rule -> (OVAL definitions, platform idrefs)
    values: dict[str, frozenset[str]] = {}
    groups: dict[str, tuple[str, ...]] = {}
    scopes: list[tuple[int, list[str]]] = []  # (depth, platform idrefs) of enclosing Benchmark/Group/Rule
    open_groups: list[str] = []
    depth = 0
    try:
        for event, el in ET.iterparse(path, events=("start", "end")):
            tag = el.tag
            if event == "start":
                depth += 1
                if tag in (f"{_X}Benchmark", f"{_X}Group", f"{_X}Rule"):
                    scopes.append((depth, []))
                if tag == f"{_X}Group":
                    open_groups.append(el.get("id", ""))
                continue
            if tag == f"{_X}platform" and scopes and scopes[-1][0] == depth - 1:
                scopes[-1][1].append(el.get("idref", ""))
            elif tag == f"{_X}Rule":
                refs = [r.get("name", "") for c in el.findall(f"{_X}check") if c.get("system") == OVAL_SYSTEM
                        for r in c.findall(f"{_X}check-content-ref")]
                rules[el.get("id", "")] = (refs, [p for _, level in scopes for p in level])
                groups[el.get("id", "")] = tuple(open_groups)
                scopes.pop()
                el.clear()
            elif tag == f"{_X}Value":
                values[el.get("id", "")] = frozenset(v.get("selector", "") for v in el.findall(f"{_X}value"))
                el.clear()
            elif tag in (f"{_X}Benchmark", f"{_X}Group"):
                scopes.pop()
                if tag == f"{_X}Group":
                    open_groups.pop()
            elif tag == f"{_OVALDEF}definition":
                defs[el.get("id", "")] = ([c.get("test_ref", "") for c in el.iter(f"{_OVALDEF}criterion")],
                                          [e.get("definition_ref", "") for e in
                                           el.iter(f"{_OVALDEF}extend_definition")])
                el.clear()
            elif tag == f"{_OVALDEF}tests":
                for t in el:
                    tests[t.get("id", "")] = t.tag.rpartition("}")[2].removesuffix("_test")
                    obj = next((c.get("object_ref", "") for c in t if c.tag.endswith("}object")), "")
                    if obj:
                        test_objects[t.get("id", "")] = obj
                el.clear()
            elif tag == f"{_OVALDEF}objects":
                for o in el:
                    where = [c.text or "" for c in o if c.tag.rpartition("}")[2] in ("filepath", "path")
                             and c.get("operation", "equals") == "equals"]
                    kinds = {k for w in where for k, prefix in RUNTIME_PATHS.items()
                             if w.strip() == prefix.rstrip("/") or w.strip().startswith(prefix)}
                    if kinds:
                        runtime_objects[o.get("id", "")] = frozenset(kinds)
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
            for t in test_refs:
                found |= runtime_objects.get(test_objects.get(t, ""), frozenset())
            for d in extends:
                found |= probes_of(d)
            memo[definition] = frozenset(found & (UNRELIABLE_OFFLINE | set(RUNTIME_PATHS)))
        return memo[definition]

    out: dict[str, frozenset[str]] = {}
    for rid, (refs, idrefs) in rules.items():
        names = [n for i in idrefs for n in (platforms.get(i[1:], []) if i.startswith("#") else [i])]
        found = frozenset().union(*(probes_of(d) for d in refs + [cpe_checks.get(n, "") for n in names]))
        if found:
            out[rid] = found
    return DatastreamIndex(rules=frozenset(rules), values=values, probes=out, groups=groups)


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
    """One SSG rule's status for the STIG roll-up, and how its result reads (without the rule id)."""
    raw = scan.results.get(rid)
    if raw is None:
        return None, "not in the datastream"
    text = raw
    if raw == "informational" and rid in scan.check_outcomes:
        raw = scan.check_outcomes[rid]
        text = f"{raw} (unscored by tailoring)"
    if raw not in XCCDF_RESULTS:
        return "error", f"unexpected result {raw!r}"
    status = XCCDF_RESULTS[raw]
    if status is None:
        return None, f"{text} (deselected by tailoring, or not in the profile)"
    if rid in scan.unreliable:
        probes = ", ".join(scan.unreliable[rid])
        return "notchecked", f"{text}, not trusted offline (OVAL probes: {probes})"
    bug = CONTENT_BUGS.get((scan.content.datastream.name, scan.content.ssg_version, short_name(rid)))
    if bug:
        return "notchecked", f"{text}, not trusted ({bug})"
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
        rids = [rule_id(s) for s in shorts]
        pairs = [_rule_status(scan, rid) for rid in rids]
        status = _roll_up([p[0] for p in pairs])
        if status is None:
            continue
        evidence = (f"OpenSCAP offline ({scan.content.datastream.name}): "
                    + "; ".join(f"{rid}: {text}" for rid, (_, text) in zip(rids, pairs, strict=True)))
        out[stig_id] = RuleResult(status=status, evidence=evidence, source="openscap",
                                  rules={rid: text for rid, (_, text) in zip(rids, pairs, strict=True)})
    return ScanResults(benchmark=benchmark, target=target, mode="offline", results=out,
                       scanner=str(scan.scanner), content=scan.describe_content())
