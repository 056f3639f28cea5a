"""STIG on the booted image: every applicable control checked through testinfra, results written
for the report (the gate is decided by the build from them, with waivers), plus what hardening
must never break: SSH with exactly the STIG cipher/MAC/key-exchange lists.

First-boot controls are left out here: their settings are site values that arrive at deployment,
so the image report shows them as not reviewed with the reason (never as passed).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import paramiko
import pytest

from imagefactory.stig.actions import check_host
from imagefactory.stig.catalogue import load_catalogue
from imagefactory.stig.kinds_svc import SshdOption
from imagefactory.stig.results import RuleResult, ScanResults, write_scans
from imagefactory.stig.selection import Selected, selection_from_json

Clone = tuple[dict[str, Any], Any]
BOOTED_PHASES = ("bake", "verify", "waive-by-default")
SSH_ALGORITHMS = {"Ciphers": "UBTU-22-255050", "MACs": "UBTU-22-255055", "KexAlgorithms": "UBTU-22-255060"}


@pytest.fixture(scope="session")
def selected(target: dict[str, Any]) -> list[Selected]:
    return [selection_from_json(s) for s in target["stig"]["selections"]]


@pytest.fixture(scope="session")
def scans(clones: list[Clone], target: dict[str, Any], selected: list[Selected]) -> list[ScanResults]:
    """Checks on the first clone (the clones are identical images); written for the report."""
    from imagefactory import __version__

    _, host = clones[0]
    out = []
    for s in selected:
        results = check_host(host, s.target, s.catalogue.controls_for(s.target), s.tailoring,
                             phases=BOOTED_PHASES)
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


def _stig_list(option: str) -> list[str]:
    control = load_catalogue("ubuntu2204").get(SSH_ALGORITHMS[option])
    assert control is not None
    for action in control.fix_for("debian"):
        if isinstance(action, SshdOption) and action.key == option:
            return action.value.split(",")
    raise AssertionError(f"no {option} in {SSH_ALGORITHMS[option]}")


def test_ssh_with_only_the_stig_algorithms(clone: Clone, target: dict[str, Any],
                                           selected: list[Selected]) -> None:
    if not any(s.benchmark == "ubuntu2204" for s in selected):
        pytest.skip("the SSH algorithm lists belong to the ubuntu2204 benchmark")
    info, _ = clone
    want = {opt: _stig_list(opt) for opt in SSH_ALGORITHMS}
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
