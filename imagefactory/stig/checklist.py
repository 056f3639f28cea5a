"""STIG Viewer checklists of a `StigReport`: CKLB (STIG Viewer 3, JSON) and CKL (STIG Viewer 2, XML).

One checklist per benchmark and target, its asset being the image. Every id is a uuid5 under a
fixed namespace, derived from the image digest and the rule, so the same report always yields the
same bytes (checklists are kept next to the image and diffed between builds).

FINDING_DETAILS carry the result, its source and the evidence (truncated: STIG Viewer struggles
with very long fields; the full text is in stig-report.json). COMMENTS carry the row's comments:
the control's phase, the recipe's tailoring reason and the waiver.
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # report.py imports this module; the models are only needed for typing here
    from .report import BenchmarkReport, Row, StigReport

# Fixed namespace: uuid5 ids must stay stable across runs and machines.
NAMESPACE = uuid.UUID("6f1d7a52-0c1e-5b8e-9a43-3f0e6b9d2c71")
EVIDENCE_LIMIT = 4000
CKLB_STATUS = {"NotAFinding": "not_a_finding", "Open": "open", "Not_Applicable": "not_applicable",
               "Not_Reviewed": "not_reviewed"}
TECHNOLOGY_AREA = "UNIX OS"
ROLE = "Member Server"


def truncate(text: str, limit: int = EVIDENCE_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters: full evidence in stig-report.json]"


def checklist_name(b: BenchmarkReport) -> str:
    return f"{b.benchmark}-{b.target}"


def finding_details(r: Row) -> str:
    head = f"Result: {r.result} (source: {r.source})"
    return f"{head}\n{truncate(r.evidence)}" if r.evidence.strip() else head


def _ids(report: StigReport, b: BenchmarkReport) -> tuple[uuid.UUID, uuid.UUID]:
    """(checklist id, stig uuid) for the image and benchmark."""
    base = f"{report.image.digest}/{b.benchmark}/{b.target}"
    return uuid.uuid5(NAMESPACE, base), uuid.uuid5(NAMESPACE, f"{base}/{b.benchmark_id}/{b.version}")


def _target_comment(report: StigReport, b: BenchmarkReport) -> str:
    # No timestamp: the checklist of the same results must be byte-identical (it is diffed).
    img = report.image
    return (f"Golden image {img.name} (recipe {img.recipe}, build {img.build_id}), sha256 {img.digest}; "
            f"{img.os_family} {img.os_release}; STIG target {b.target}; {report.generator}")


# --- CKLB (STIG Viewer 3) --------------------------------------------------------------------


def _cklb_rule(r: Row, stig_uuid: uuid.UUID) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid5(stig_uuid, r.rule_id)),
        "stig_uuid": str(stig_uuid),
        "target_key": None,
        "stig_ref": None,
        "group_id": r.vuln_id,
        "group_id_src": r.vuln_id,
        "group_title": r.title,
        "rule_id": r.rule_id.removesuffix("_rule"),
        "rule_id_src": r.rule_id,
        "rule_version": r.stig_id,
        "rule_title": r.title,
        "severity": r.severity,
        "weight": "10.0",
        "classification": "Unclassified",
        "discussion": "",
        "check_content": r.check_content,
        "fix_text": r.fixtext,
        "false_positives": "",
        "false_negatives": "",
        "documentable": "false",
        "mitigations": "",
        "potential_impacts": "",
        "third_party_tools": "",
        "mitigation_control": "",
        "responsibility": "",
        "security_override_guidance": "",
        "ia_controls": "",
        "legacy_ids": [],
        "ccis": list(r.ccis),
        "group_tree": [{"id": r.vuln_id, "title": r.title,
                        "description": "<GroupDescription></GroupDescription>"}],
        "status": CKLB_STATUS[r.status],
        "overrides": {},
        "comments": r.comments,
        "finding_details": finding_details(r),
    }


def to_cklb(report: StigReport, b: BenchmarkReport) -> str:
    """The STIG Viewer 3 checklist (CKLB JSON) for one benchmark of the report."""
    cid, stig_uuid = _ids(report, b)
    doc = {
        "title": f"{report.image.name} - {b.title}",
        "id": str(cid),
        "active": False,
        "mode": 1,
        "has_path": True,
        "target_data": {
            "target_type": "Computing",
            "host_name": report.image.name,
            "ip_address": "",
            "mac_address": "",
            "fqdn": "",
            "comments": _target_comment(report, b),
            "role": ROLE,
            "is_web_database": False,
            "technology_area": TECHNOLOGY_AREA,
            "web_db_site": "",
            "web_db_instance": "",
        },
        "stigs": [{
            "stig_name": b.title,
            "display_name": b.title,
            "stig_id": b.benchmark_id,
            "version": b.version,
            "release_info": b.release_info,
            "uuid": str(stig_uuid),
            "reference_identifier": "",
            "size": len(b.rows),
            "rules": [_cklb_rule(r, stig_uuid) for r in b.rows],
        }],
        "cklb_version": "1.0",
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


# --- CKL (STIG Viewer 2) ---------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def _asset(root: ET.Element, report: StigReport, b: BenchmarkReport) -> None:
    asset = _sub(root, "ASSET")
    for tag, text in (("ROLE", ROLE), ("ASSET_TYPE", "Computing"), ("MARKING", "CUI"),
                      ("HOST_NAME", report.image.name), ("HOST_IP", ""), ("HOST_MAC", ""), ("HOST_FQDN", ""),
                      ("TARGET_COMMENT", _target_comment(report, b)), ("TECH_AREA", TECHNOLOGY_AREA),
                      ("TARGET_KEY", ""), ("WEB_OR_DATABASE", "false"), ("WEB_DB_SITE", ""),
                      ("WEB_DB_INSTANCE", "")):
        _sub(asset, tag, text)


# STIG Viewer 2 expects these attributes in this order; the ones DISA's XCCDF gives us are filled.
_VULN_ATTRS = ("Vuln_Num", "Severity", "Group_Title", "Rule_ID", "Rule_Ver", "Rule_Title", "Vuln_Discuss",
               "IA_Controls", "Check_Content", "Fix_Text", "False_Positives", "False_Negatives",
               "Documentable", "Mitigations", "Potential_Impact", "Third_Party_Tools", "Mitigation_Control",
               "Responsibility", "Security_Override_Guidance", "Check_Content_Ref", "Weight", "Class",
               "STIGRef", "TargetKey", "STIG_UUID", "LEGACY_ID")


def _vuln(istig: ET.Element, r: Row, b: BenchmarkReport, stig_uuid: uuid.UUID) -> None:
    vuln = _sub(istig, "VULN")
    values = {"Vuln_Num": r.vuln_id, "Severity": r.severity, "Group_Title": r.title, "Rule_ID": r.rule_id,
              "Rule_Ver": r.stig_id, "Rule_Title": r.title, "Check_Content": r.check_content,
              "Fix_Text": r.fixtext, "Documentable": "false", "Weight": "10.0", "Class": "Unclass",
              "STIGRef": f"{b.title} :: Version {b.version}, {b.release_info}", "STIG_UUID": str(stig_uuid)}
    data = [(a, values.get(a, "")) for a in _VULN_ATTRS] + [("CCI_REF", c) for c in r.ccis]
    for attr, value in data:
        sd = _sub(vuln, "STIG_DATA")
        _sub(sd, "VULN_ATTRIBUTE", attr)
        _sub(sd, "ATTRIBUTE_DATA", value)
    _sub(vuln, "STATUS", r.status)
    _sub(vuln, "FINDING_DETAILS", finding_details(r))
    _sub(vuln, "COMMENTS", r.comments)
    _sub(vuln, "SEVERITY_OVERRIDE", "")
    _sub(vuln, "SEVERITY_JUSTIFICATION", "")


def to_ckl(report: StigReport, b: BenchmarkReport) -> str:
    """The STIG Viewer 2 checklist (CKL XML) for one benchmark of the report."""
    _, stig_uuid = _ids(report, b)
    root = ET.Element("CHECKLIST")
    _asset(root, report, b)
    istig = _sub(_sub(root, "STIGS"), "iSTIG")
    info = _sub(istig, "STIG_INFO")
    for name, value in (("version", b.version), ("classification", "UNCLASSIFIED"), ("customname", ""),
                        ("stigid", b.benchmark_id), ("description", ""), ("filename", ""),
                        ("releaseinfo", b.release_info), ("title", b.title), ("uuid", str(stig_uuid)),
                        ("notice", "terms-of-use"), ("source", "")):
        si = _sub(info, "SI_DATA")
        _sub(si, "SID_NAME", name)
        if value:  # STIG Viewer writes SID_DATA only for set values
            _sub(si, "SID_DATA", value)
    for r in b.rows:
        _vuln(istig, r, b, stig_uuid)
    ET.indent(root, space="\t")
    body = ET.tostring(root, encoding="unicode", short_empty_elements=False)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<!--imagefactory STIG checklist-->\n{body}\n'
