"""STIG waivers: loading with located problems, validation against the XCCDF, scope matching,
expiry, the choice between overlapping waivers, and the shipped RKE2 node set."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from imagefactory.errors import Problem, UserError, ValidationError
from imagefactory.stig.catalogue import Catalogue, load_catalogue
from imagefactory.stig.waivers import (
    WaiverScope,
    WaiverSet,
    default_waiver_path,
    expired,
    load_waivers,
    validate_waivers,
)

TODAY = date(2026, 11, 29)  # fixed: the shipped set is approved on this date and must be valid on it

# A CAT II rule (UBTU-22-251015 ufw active) and a CAT I rule (UBTU-22-215040 NFS packages).
HEAD = "# waivers for tests\nwaivers:\n"
GOOD = """\
  - id: W-1
    stig_ids: [UBTU-22-251015]
    scope: {os: [ubuntu], release: ["22.04"], role: [server, agent]}
    type: compensating
    justification: "the CNI owns netfilter"
    compensating_controls: ["NetworkPolicy"]
    approved: 2026-01-15
    approver: "Jane Doe, ISSM"
    expires: 2027-01-15
    poam_id: POAM-1
"""
LINE_W1 = 3  # `- id: W-1`
LINE_W2 = LINE_W1 + GOOD.count("\n")  # the entry appended after GOOD


def write(tmp_path: Path, body: str, name: str = "w.yaml") -> Path:
    p = tmp_path / name
    p.write_text(HEAD + body)
    return p


def second(entry: str) -> str:
    """GOOD followed by one more entry, written as YAML lines under the list."""
    return GOOD + entry


@pytest.fixture(scope="module")
def ubuntu() -> Catalogue:
    return load_catalogue("ubuntu2204")


@pytest.fixture(scope="module")
def catalogues() -> list[Catalogue]:
    return [load_catalogue(n) for n in ("ubuntu2204", "slmicro5", "rke2")]


def only_problem(e: pytest.ExceptionInfo[ValidationError]) -> Problem:
    assert len(e.value.problems) == 1, e.value.problems
    return e.value.problems[0]


def test_valid_file_loads(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD)
    ws = load_waivers(p)
    assert ws.sources == (p,)
    [w] = ws.waivers
    assert (w.id, w.stig_ids, w.type, w.poam_id) == ("W-1", ("UBTU-22-251015",), "compensating", "POAM-1")
    assert w.scope == WaiverScope(os=("ubuntu",), release=("22.04",), role=("server", "agent"))
    assert (w.approved, w.expires) == (date(2026, 1, 15), date(2027, 1, 15))
    assert w.compensating_controls == ("NetworkPolicy",)
    assert ws.origin("W-1").file == str(p) and ws.origin("W-1").line == LINE_W1


def test_minimal_waiver_defaults_to_any_scope(tmp_path: Path) -> None:
    ws = load_waivers(write(tmp_path, "  - {id: W-9, stig_ids: [UBTU-22-251015], type: risk-accepted,"
                                      " justification: accepted}\n"))
    [w] = ws.waivers
    assert w.scope == WaiverScope() and w.approver is None and w.expires is None
    assert w.scope.matches("sle-micro", "5.5", None)


ENTRY_ERRORS = [
    ("missing justification",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], type: risk-accepted}\n",
     "W-2.justification", "missing"),
    ("blank justification",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], type: risk-accepted, justification: '  '}\n",
     "W-2.justification", "needs a justification"),
    ("unknown type",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], type: accepted, justification: x}\n",
     "W-2.type", "operational-requirement"),
    ("expires before approved",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], type: risk-accepted, justification: x,"
     " approver: me, approved: 2026-05-01, expires: 2026-04-30}\n",
     "W-2.expires", "before approved"),
    ("compensating without controls",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], type: compensating, justification: x}\n",
     "W-2.compensating_controls", "compensating controls"),
    ("approver without a date",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], type: risk-accepted, justification: x, approver: me}\n",
     "W-2.approved", "date"),
    ("malformed STIG id",
     "  - {id: W-2, stig_ids: [UBTU22-251020], type: risk-accepted, justification: x}\n",
     "W-2.stig_ids", "not a STIG id"),
    ("unknown OS family in scope",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], scope: {os: [ubunt]}, type: risk-accepted,"
     " justification: x}\n",
     "W-2.scope.os", "unknown OS family ubunt"),
    ("unquoted release",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], scope: {release: [22.04]}, type: risk-accepted,"
     " justification: x}\n",
     "W-2.scope.release.0", "string"),
    ("unknown key",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], type: risk-accepted, justification: x, expiry: 2027-01-01}\n",
     "W-2.expiry", "Extra inputs"),
    ("no STIG ids",
     "  - {id: W-2, stig_ids: [], type: risk-accepted, justification: x}\n",
     "W-2.stig_ids", "at least one STIG id"),
    ("empty scope list",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], scope: {role: []}, type: risk-accepted, justification: x}\n",
     "W-2.scope.role", "matches nothing"),
    ("approval date without approver",
     "  - {id: W-2, stig_ids: [UBTU-22-251020], type: risk-accepted, justification: x,"
     " approved: 2026-01-01}\n",
     "W-2.approved", "needs an approver"),
    ("duplicate id",
     "  - {id: W-1, stig_ids: [UBTU-22-251020], type: risk-accepted, justification: x}\n",
     "W-1.id", "duplicate waiver id"),
]


@pytest.mark.parametrize(("entry", "where", "message"), [e[1:] for e in ENTRY_ERRORS],
                         ids=[e[0] for e in ENTRY_ERRORS])
def test_entry_problem_names_file_line_and_key(tmp_path: Path, entry: str, where: str, message: str) -> None:
    p = write(tmp_path, second(entry))
    with pytest.raises(ValidationError) as e:
        load_waivers(p)
    prob = only_problem(e)
    assert (prob.file, prob.line, prob.path) == (str(p), LINE_W2, where)
    assert message in prob.message
    assert prob.hint, "every waiver problem says what to do"
    assert f"{p}:{LINE_W2}: {where}" in str(e.value)


def test_unquoted_release_hint_says_quote(tmp_path: Path) -> None:
    p = write(tmp_path, "  - {id: W-2, stig_ids: [UBTU-22-251020], scope: {release: [22.04]},"
                        " type: risk-accepted, justification: x}\n")
    with pytest.raises(ValidationError) as e:
        load_waivers(p)
    assert "quote" in (only_problem(e).hint or "")


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD
              + "  - {id: W-2, stig_ids: [UBTU-22-251020], type: bogus, justification: x}\n"
              + "  - {id: W-1, stig_ids: [UBTU-22-251020], type: risk-accepted}\n")
    with pytest.raises(ValidationError) as e:
        load_waivers(p)
    got = sorted((pr.line or 0, pr.path) for pr in e.value.problems)
    assert got == [(LINE_W2, "W-2.type"), (LINE_W2 + 1, "W-1.id"), (LINE_W2 + 1, "W-1.justification")]


def test_not_a_waiver_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as e:
        load_waivers(write(tmp_path, ""))  # `waivers:` with no list
    assert only_problem(e).path == "waivers"
    (tmp_path / "x.yaml").write_text("controls: []\n")
    with pytest.raises(ValidationError, match="`waivers:`"):
        load_waivers(tmp_path / "x.yaml")
    (tmp_path / "bad.yaml").write_text("waivers: [\n")
    with pytest.raises(ValidationError, match="not valid YAML"):
        load_waivers(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="not found"):
        load_waivers(tmp_path / "missing.yaml")


def test_cat1_without_approver_is_an_error(tmp_path: Path, ubuntu: Catalogue) -> None:
    p = write(tmp_path, second(
        "  - {id: W-2, stig_ids: [UBTU-22-251020, UBTU-22-215040], type: operational-requirement,"
        " justification: NFS CSI}\n"))
    ws = load_waivers(p)  # the file alone is fine: CAT is known only from the XCCDF
    with pytest.raises(ValidationError) as e:
        validate_waivers(ws, [ubuntu])
    prob = only_problem(e)
    assert (prob.file, prob.line, prob.path) == (str(p), LINE_W2, "W-2.approver")
    assert "UBTU-22-215040 is CAT I" in prob.message and prob.hint


def test_cat1_with_approver_validates(tmp_path: Path, ubuntu: Catalogue) -> None:
    ws = load_waivers(write(tmp_path, second(
        "  - {id: W-2, stig_ids: [UBTU-22-215040], type: operational-requirement, justification: NFS CSI,"
        " approver: 'J. Doe, ISSM', approved: 2026-01-01}\n")))
    validate_waivers(ws, [ubuntu])


def test_unknown_stig_id_is_an_error(tmp_path: Path, ubuntu: Catalogue) -> None:
    p = write(tmp_path, second(
        "  - {id: W-2, stig_ids: [UBTU-22-999999], type: risk-accepted, justification: x}\n"))
    with pytest.raises(ValidationError) as e:
        validate_waivers(load_waivers(p), [ubuntu])
    prob = only_problem(e)
    assert (prob.file, prob.line, prob.path) == (str(p), LINE_W2, "W-2.stig_ids")
    assert "UBTU-22-999999" in prob.message and "Ubuntu 22.04" in prob.message and prob.hint


def test_ids_of_benchmarks_not_given_are_ignored(tmp_path: Path, ubuntu: Catalogue) -> None:
    ws = load_waivers(write(tmp_path, second(
        "  - {id: W-2, stig_ids: [UBTU-24-100310, SLEM-05-999999], type: risk-accepted,"
        " justification: x}\n")))
    validate_waivers(ws, [ubuntu])  # neither prefix is ubuntu2204's
    with pytest.raises(ValidationError, match="SLEM-05-999999"):
        validate_waivers(ws, [ubuntu, load_catalogue("slmicro5")])


def test_merge_rejects_duplicate_ids_across_files(tmp_path: Path) -> None:
    a = load_waivers(write(tmp_path, GOOD, "a.yaml"))
    w0 = "  - {id: W-0, stig_ids: [UBTU-22-251020], type: risk-accepted, justification: x}\n"
    b_path = write(tmp_path, w0 + GOOD, "b.yaml")
    b = load_waivers(b_path)
    with pytest.raises(ValidationError) as e:
        WaiverSet.merge(a, b)
    prob = only_problem(e)
    assert (prob.file, prob.line, prob.path) == (str(b_path), LINE_W1 + 1, "W-1.id")
    assert f"{tmp_path / 'a.yaml'}:{LINE_W1}" in prob.message


def test_merge_keeps_order_sources_and_origins(tmp_path: Path) -> None:
    a = load_waivers(write(tmp_path, GOOD, "a.yaml"))
    b = load_waivers(write(tmp_path, "  - {id: W-0, stig_ids: [UBTU-22-251020], type: risk-accepted,"
                                     " justification: x}\n", "b.yaml"))
    m = WaiverSet.merge(a, b)
    assert [w.id for w in m.waivers] == ["W-1", "W-0"]
    assert m.sources == (tmp_path / "a.yaml", tmp_path / "b.yaml")
    assert m.origin("W-0").file == str(tmp_path / "b.yaml")
    assert len(WaiverSet.merge()) == 0


@pytest.mark.parametrize(("scope", "os_family", "release", "role", "expected"), [
    ({}, "debian", "12", None, True),
    ({"os": ["ubuntu"]}, "ubuntu", "22.04", None, True),
    ({"os": ["ubuntu"]}, "debian", "12", None, False),
    ({"release": ["22.04"]}, "ubuntu", "22.04", "agent", True),
    ({"release": ["22.04"]}, "ubuntu", "24.04", "agent", False),
    ({"role": ["server"]}, "ubuntu", "22.04", "server", True),
    ({"role": ["server"]}, "ubuntu", "22.04", "agent", False),
    ({"role": ["server", "agent"]}, "ubuntu", "22.04", None, False),  # plain image: no role
    ({"os": ["ubuntu", "debian"], "release": ["22.04", "12"], "role": ["agent"]},
     "debian", "12", "agent", True),
    ({"os": ["ubuntu", "debian"], "release": ["22.04"], "role": ["agent"]},
     "debian", "12", "agent", False),
])
def test_scope_matching(scope: dict[str, list[str]], os_family: str, release: str, role: str | None,
                        expected: bool) -> None:
    assert WaiverScope.model_validate(scope).matches(os_family, release, role) is expected


def waiver_entry(wid: str, sid: str, *, scope: str = "{}", expires: str | None = None) -> str:
    dates = f", approver: me, approved: 2025-01-01, expires: {expires}" if expires else ""
    return (f"  - {{id: {wid}, stig_ids: [{sid}], scope: {scope}, type: risk-accepted,"
            f" justification: because {wid}{dates}}}\n")


def test_decisions_follow_scope_and_benchmark(tmp_path: Path, ubuntu: Catalogue) -> None:
    ws = load_waivers(write(tmp_path,
                            waiver_entry("W-a", "UBTU-22-251015", scope="{os: [ubuntu]}")
                            + waiver_entry("W-b", "UBTU-22-251020", scope="{role: [server]}")
                            + waiver_entry("W-c", "SLEM-05-253040")))

    def ids(os_family: str, role: str | None) -> dict[str, str]:
        d = ws.decisions("ubuntu2204", os_family=os_family, release="22.04", role=role, today=TODAY,
                         catalogue=ubuntu)
        return {k: v.waiver_id for k, v in d.items()}

    assert ids("ubuntu", "server") == {"UBTU-22-251015": "W-a", "UBTU-22-251020": "W-b"}
    assert ids("ubuntu", None) == {"UBTU-22-251015": "W-a"}
    assert ids("debian", "server") == {"UBTU-22-251020": "W-b"}
    with pytest.raises(ValueError, match="slmicro5"):
        ws.decisions("slmicro5", os_family="sle-micro", release="5.5", role=None, today=TODAY,
                     catalogue=ubuntu)


def test_decision_carries_the_waiver(tmp_path: Path, ubuntu: Catalogue) -> None:
    p = write(tmp_path, GOOD)
    d = load_waivers(p).decisions("ubuntu2204", os_family="ubuntu", release="22.04", role="agent",
                                  today=TODAY, catalogue=ubuntu)["UBTU-22-251015"]
    assert (d.waiver_id, d.type, d.approver, d.poam_id, d.source) == (
        "W-1", "compensating", "Jane Doe, ISSM", "POAM-1", str(p))
    assert d.compensating_controls == ("NetworkPolicy",) and d.expires == date(2027, 1, 15)
    assert not d.expired and "POA&M POAM-1" in d.comment()


@pytest.mark.parametrize(("today", "is_expired"), [
    (date(2027, 1, 14), False), (date(2027, 1, 15), False), (date(2027, 1, 16), True)])
def test_expiry_makes_the_decision_expired(tmp_path: Path, ubuntu: Catalogue, today: date,
                                           is_expired: bool) -> None:
    ws = load_waivers(write(tmp_path, GOOD))
    d = ws.decisions("ubuntu2204", os_family="ubuntu", release="22.04", role="server", today=today,
                     catalogue=ubuntu)
    assert d["UBTU-22-251015"].expired is is_expired
    assert [w.id for w in expired(ws, today)] == (["W-1"] if is_expired else [])
    assert ("EXPIRED" in d["UBTU-22-251015"].comment()) is is_expired


def test_overlapping_waivers_valid_latest_expiry_wins(tmp_path: Path, ubuntu: Catalogue) -> None:
    sid = "UBTU-22-251015"
    ws = load_waivers(write(tmp_path,
                            waiver_entry("W-old", sid, expires="2026-06-01")  # expired on TODAY
                            + waiver_entry("W-soon", sid, expires="2027-01-01")
                            + waiver_entry("W-late", sid, expires="2028-01-01")
                            + waiver_entry("W-other-os", sid, scope="{os: [debian]}")))

    def winner(w: WaiverSet, today: date) -> tuple[str, bool]:
        d = w.decisions("ubuntu2204", os_family="ubuntu", release="22.04", role=None, today=today,
                        catalogue=ubuntu)[sid]
        return d.waiver_id, d.expired

    assert winner(ws, TODAY) == ("W-late", False)
    # once every in-scope waiver has expired, the most recently expired one is reported, as expired
    assert winner(ws, date(2029, 1, 1)) == ("W-late", True)
    never = load_waivers(write(tmp_path, waiver_entry("W-late", sid, expires="2028-01-01")
                               + waiver_entry("W-never", sid), "n.yaml"))
    assert winner(never, TODAY) == ("W-never", False)


def test_default_waiver_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = default_waiver_path("rke2-node")
    assert p.is_file() and p.parent.name == "waivers" and p.parent.parent.name == "stig"
    missing = default_waiver_path("no-such-set")  # a path, so callers can report it where it is used
    assert missing == p.parent / "no-such-set.yaml" and not missing.exists()
    with pytest.raises(UserError, match="rke2-node"):  # the hint lists the shipped sets
        load_waivers(missing)
    with pytest.raises(UserError):
        default_waiver_path("../ubuntu2204")
    # a catalogue directory override without waivers falls back to the repository's
    monkeypatch.setenv("IMAGEFACTORY_STIG_CATALOGUE", str(tmp_path))
    assert default_waiver_path("rke2-node") == p
    (tmp_path / "waivers").mkdir()
    (tmp_path / "waivers" / "rke2-node.yaml").write_text("waivers: []\n")
    assert default_waiver_path("rke2-node") == tmp_path / "waivers" / "rke2-node.yaml"


# --- the shipped default set ---------------------------------------------------------------------

# Controls the catalogues bake but that RKE2 nodes waive: NFS client needed by NFS CSI (the catalogue
# says "disable by tailoring with a waiver"), and disk_full_action=SYSLOG, which the rule accepts
# only when the availability decision is documented with the ISSO - the waiver is that record.
BAKED_BUT_WAIVED = {"UBTU-22-215040", "UBTU-22-653030", "SLEM-05-653035"}
FAMILY = {"ubuntu2204": ("ubuntu", "22.04"), "slmicro5": ("sle-micro", "5.5")}


@pytest.fixture(scope="module")
def shipped() -> WaiverSet:
    return load_waivers(default_waiver_path("rke2-node"))


def test_shipped_set_loads_and_validates(shipped: WaiverSet, catalogues: list[Catalogue]) -> None:
    assert len(shipped) >= 5
    validate_waivers(shipped, catalogues)
    rules = {sid: r for c in catalogues for sid, r in c.benchmark.rules.items()}
    for w in shipped.waivers:
        # every id is a rule of a benchmark we validated against: none was skipped as "other benchmark"
        assert set(w.stig_ids) <= set(rules), w.id
        assert w.scope.role == ("server", "agent"), w.id
        assert w.expires is not None and not w.is_expired(TODAY), w.id
        assert len(w.justification.split()) >= 20, f"{w.id}: a real justification, not a placeholder"
        if any(rules[s].cat == 1 for s in w.stig_ids):
            assert w.approver and "re-approve" in w.approver and w.approved == TODAY
            assert w.expires == date(2027, 11, 29)


def test_shipped_set_waives_only_what_the_catalogues_expect(shipped: WaiverSet,
                                                             catalogues: list[Catalogue]) -> None:
    for cat in catalogues:
        for w in shipped.waivers:
            for sid in w.stig_ids:
                control = cat.get(sid)
                if control is not None:
                    assert control.phase == "waive-by-default" or sid in BAKED_BUT_WAIVED, (w.id, sid)


@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("role", ["server", "agent"])
def test_shipped_set_covers_every_waive_by_default_control(shipped: WaiverSet, name: str,
                                                           role: str) -> None:
    cat = load_catalogue(name)
    family, release = FAMILY[name]
    got = shipped.decisions(name, os_family=family, release=release, role=role, today=TODAY, catalogue=cat)
    wanted = {c.id for c in cat.controls_for(family) if c.phase == "waive-by-default"}
    assert wanted, "the catalogue has waive-by-default controls"
    assert wanted <= set(got), sorted(wanted - set(got))
    assert not any(d.expired for d in got.values())
    assert all(d.source.endswith("rke2-node.yaml") for d in got.values())
    # the firewall is waived on both distributions, with compensating controls
    firewall = {"ubuntu2204": "UBTU-22-251015", "slmicro5": "SLEM-05-251010"}[name]
    assert got[firewall].type == "compensating" and got[firewall].compensating_controls


def test_shipped_set_does_not_apply_to_plain_images(shipped: WaiverSet) -> None:
    for name, (family, release) in FAMILY.items():
        cat = load_catalogue(name)
        assert shipped.decisions(name, os_family=family, release=release, role=None, today=TODAY,
                                 catalogue=cat) == {}


def test_shipped_set_debian_gets_the_ubuntu2204_waivers(shipped: WaiverSet, ubuntu: Catalogue) -> None:
    got = shipped.decisions("ubuntu2204", os_family="debian", release="12", role="agent", today=TODAY,
                            catalogue=ubuntu)
    assert {"UBTU-22-215040", "UBTU-22-251015", "UBTU-22-432011"} <= set(got)


def test_shipped_yaml_uses_only_known_keys() -> None:
    raw = yaml.safe_load(default_waiver_path("rke2-node").read_text())
    assert set(raw) <= {"description", "waivers"}
    assert len({w["id"] for w in raw["waivers"]}) == len(raw["waivers"])
