"""STIG on the booted image: every applicable control checked through testinfra, results written
for the report (the gate is decided by the build from them, with waivers), plus what hardening
must never break: SSH with exactly the STIG cipher/MAC/key-exchange lists.

First-boot controls are left out here: their settings are site values that arrive at deployment,
so the image report shows them as not reviewed with the reason (never as passed).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
import pytest

from imagefactory.stig.actions import CheckResult, check_host
from imagefactory.stig.catalogue import Control
from imagefactory.stig.kinds_svc import SshdOption
from imagefactory.stig.results import RuleResult, ScanResults, write_scans
from imagefactory.stig.selection import Selected, selection_from_json
from imagefactory.testing.facts import CachedHost, FactStore, Item, evaluate_in_rounds, first_round

Clone = tuple[dict[str, Any], FactStore]
BOOTED_PHASES = ("bake", "verify", "waive-by-default")
# benchmark -> sshd option -> the control whose fix sets it (the lists differ between releases)
SSH_ALGORITHMS = {
    "ubuntu2204": {"Ciphers": "UBTU-22-255050", "MACs": "UBTU-22-255055", "KexAlgorithms": "UBTU-22-255060"},
    "ubuntu2404": {"Ciphers": "UBTU-24-100820", "MACs": "UBTU-24-100830", "KexAlgorithms": "UBTU-24-100840"},
}


def wanted(target: dict[str, Any], clone: dict[str, Any]) -> list[Item]:
    """The first round of the checks on the first clone, to fetch with the other suites' facts."""
    if clone["name"] != target["clones"][0]["name"]:
        return []
    probe = FactStore(clone["name"], lambda items: {})  # nothing known: every read is a miss
    sel = [selection_from_json(s) for s in target["stig"]["selections"]]
    return first_round(probe, booted_tasks(CachedHost(probe), sel))


@pytest.fixture(scope="session")
def selected(target: dict[str, Any]) -> list[Selected]:
    return [selection_from_json(s) for s in target["stig"]["selections"]]


Task = Callable[[], dict[str, CheckResult]]


def booted_tasks(host: Any, selected: list[Selected]) -> dict[tuple[int, str], Task]:
    """One task per selected control: its booted checks through a testinfra host."""
    def task(s: Selected, control: Control) -> Task:
        return lambda: check_host(host, s.target, [control], s.tailoring, phases=BOOTED_PHASES)
    return {(i, c.id): task(s, c) for i, s in enumerate(selected) for c in s.catalogue.controls_for(s.target)}


@pytest.fixture(scope="session")
def scans(clones: list[Clone], target: dict[str, Any], selected: list[Selected]) -> list[ScanResults]:
    """Checks on the first clone (the clones are identical images); written for the report.

    The checks run on this host from the clone's gathered facts, in rounds: each round fetches
    in one round trip whatever the checks found missing (a file naming the next file)."""
    from imagefactory import __version__

    _, g = clones[0]
    done = evaluate_in_rounds(g, booted_tasks(CachedHost(g), selected))
    out = []
    for i, s in enumerate(selected):
        results = {cid: r for (j, _), res in done.items() if j == i for cid, r in res.items()}
        out.append(ScanResults(
            s.benchmark, s.target, "booted",
            {cid: RuleResult(r.status, r.evidence, "booted") for cid, r in results.items()},
            scanner=f"imagefactory {__version__}",
            content=f"{s.catalogue.benchmark.title} {s.catalogue.benchmark.release_info}"))
    write_scans(Path(target["stig"]["results"]), out)
    return out


def test_every_applicable_control_was_checked(scans: list[ScanResults], selected: list[Selected]) -> None:
    for s, scan in zip(selected, scans, strict=True):
        want = {c.id for c in s.catalogue.controls_for(s.target) if c.phase in BOOTED_PHASES
                and any(k.where in ("both", "host") for k in c.checks_for(s.target))}
        assert want, f"{s.benchmark}: nothing to check for {s.target}"
        assert set(scan.results) == want, sorted(want ^ set(scan.results))


def test_no_check_errored(scans: list[ScanResults]) -> None:
    # An error means the check itself broke (missing tool, unreadable file): the result says nothing.
    errors = {f"{s.benchmark} {cid}": r.evidence[:300] for s in scans for cid, r in s.results.items()
              if r.status == "error"}
    assert not errors, errors


def test_applied_fixes_hold_when_booted(scans: list[ScanResults], selected: list[Selected]) -> None:
    # Passed offline at build time (stig-check); failing now means first boot or a service undid it.
    broken = {}
    for s, scan in zip(selected, scans, strict=True):
        for c in s.catalogue.controls_for(s.target):
            applied = c.phase == "bake" and c.id not in s.tailoring.disable and c.fix_for(s.target)
            r = scan.results.get(c.id)
            if applied and r is not None and r.status != "pass":
                broken[f"{s.benchmark} {c.id} CAT {c.rule.cat}"] = r.evidence[:300]
    assert not broken, broken


def stig_ssh_lists(sel: Selected) -> dict[str, list[str]]:
    """The Ciphers/MACs/KexAlgorithms lists the selected OS catalogue bakes for its target."""
    out = {}
    for option, stig_id in SSH_ALGORITHMS[sel.benchmark].items():
        control = sel.catalogue.get(stig_id)
        assert control is not None, stig_id
        value = next((a.value for a in control.fix_for(sel.target)
                      if isinstance(a, SshdOption) and a.key == option), None)
        assert value is not None, f"no {option} in {stig_id}"
        out[option] = value.split(",")
    return out


def test_ssh_with_only_the_stig_algorithms(clone: Clone, target: dict[str, Any],
                                           selected: list[Selected]) -> None:
    sel = next((s for s in selected if s.benchmark in SSH_ALGORITHMS), None)
    if sel is None:
        pytest.skip(f"recipe: no {'/'.join(SSH_ALGORITHMS)} benchmark (they own the SSH lists)")
    disabled = sorted(set(SSH_ALGORITHMS[sel.benchmark].values()) & set(sel.tailoring.disable))
    if disabled:
        pytest.skip(f"recipe: its tailoring disables {', '.join(disabled)}")
    info, _ = clone
    want = stig_ssh_lists(sel)
    sock = socket.create_connection(("127.0.0.1", info["port"]), timeout=30)
    t = paramiko.Transport(sock)
    try:
        # Offer the client nothing but the STIG lists: the handshake succeeds only if sshd agrees.
        opts = t.get_security_options()
        opts.ciphers = tuple(c for c in want["Ciphers"] if c in opts.ciphers)
        opts.digests = tuple(m for m in want["MACs"] if m in opts.digests)
        opts.kex = tuple(k for k in want["KexAlgorithms"] if k in opts.kex)
        assert opts.ciphers and opts.digests and opts.kex
        t.start_client(timeout=30)
        t.auth_publickey(target["user"], paramiko.Ed25519Key.from_private_key_file(target["key"]))
        assert t.is_authenticated()
        # paramiko records what the handshake agreed on (untyped attributes)
        agreed = (getattr(t, "remote_cipher", None), getattr(t, "remote_mac", None))
        assert agreed[0] in want["Ciphers"] and agreed[1] in want["MACs"], agreed
        chan = t.open_session()
        chan.exec_command("id -un")
        assert chan.recv(100).decode().strip() == target["user"]
    finally:
        t.close()
