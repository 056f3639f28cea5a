"""Gathering a clone's facts in batches (`imagefactory.testing.facts`): the guest script run for
real on this host and its JSON read back, the store's batching, on-demand and collecting modes,
rounds, testinfra's modules on top of the store, and the STIG checks evaluated from gathered facts
giving exactly what they give through a live host."""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from imagefactory.stig.actions import Tailoring, check_host
from imagefactory.stig.catalogue import load_catalogue
from imagefactory.stig.kinds import Sysctl
from imagefactory.stig.selection import Selected
from imagefactory.stig.sources import HostSource, Pending
from imagefactory.testing import facts as F
from imagefactory.testing.suites.test_stig import BOOTED_PHASES, booted_tasks
from tests.unit.test_stig_actions import UBUNTU, FakeHost

# --- the guest script, run here ---------------------------------------------------------------


def test_guest_script_is_python_3_6() -> None:
    # SLE Micro 5 guests have python3.6: no walrus, no positional-only parameters, ...
    ast.parse(F.GUEST_SCRIPT, feature_version=(3, 6))
    assert "capture_output" not in F.GUEST_SCRIPT and "text=" not in F.GUEST_SCRIPT  # 3.7+


def run_guest(items: list[F.Item]) -> dict[F.Item, Any]:
    r = subprocess.run(["/bin/sh", "-c", F.command_line(items)], capture_output=True, text=True, check=False)
    return F.parse_reply(items, r.returncode, r.stdout, r.stderr)


def test_guest_script_answers_every_kind(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("hello\n")
    (tmp_path / "text").chmod(0o640)
    os.utime(tmp_path / "text", (1_000_000_000, 1_000_000_000.5))
    (tmp_path / "bin").write_bytes(b"\x00\xff\xfe")
    (tmp_path / "dir").mkdir()
    (tmp_path / ".hidden.pub").write_text("x")
    (tmp_path / "a.pub").write_text("a")
    (tmp_path / "link").symlink_to("text")
    (tmp_path / "dangling").symlink_to("nowhere")
    t = str(tmp_path)
    items = [F.cmd("printf 'out\\377'; echo err >&2; exit 3"), F.cmd("cat"),  # stdin is closed, no hang
             F.read(f"{t}/text"), F.read(f"{t}/bin"), F.read(f"{t}/dir"), F.read(f"{t}/missing"),
             F.read(f"{t}/link"), F.stat(f"{t}/text"), F.stat(f"{t}/link"), F.stat(f"{t}/dangling"),
             F.stat(f"{t}/dir"), F.stat(f"{t}/missing"), F.glob(f"{t}/*.pub"), F.glob(f"{t}/none*")]
    got = run_guest(items)

    out = got[F.cmd("printf 'out\\377'; echo err >&2; exit 3")]
    assert (out.rc, out.stdout_bytes, out.stderr) == (3, b"out\xff", "err\n")
    assert out.stdout == "out\ufffd"  # undecodable bytes are replaced, never an exception
    assert got[F.cmd("cat")].rc == 0
    assert got[F.read(f"{t}/text")] == b"hello\n" == got[F.read(f"{t}/link")]
    assert got[F.read(f"{t}/bin")] == b"\x00\xff\xfe"
    assert got[F.read(f"{t}/dir")] is None and got[F.read(f"{t}/missing")] is None

    text = got[F.stat(f"{t}/text")]
    assert (text.exists, text.is_file, text.is_directory, text.is_symlink) == (True, True, False, False)
    assert (text.mode, text.size, text.mtime, text.kind) == (0o640, 6, 1_000_000_000.5, "file")
    assert (text.uid, text.user) == (os.getuid(), "root" if os.getuid() == 0 else text.user)
    link = got[F.stat(f"{t}/link")]
    assert (link.is_symlink, link.exists, link.is_file, link.link_target) == (True, True, True, "text")
    dangling = got[F.stat(f"{t}/dangling")]
    assert (dangling.lexists, dangling.exists, dangling.is_symlink) == (True, False, True)
    assert got[F.stat(f"{t}/dir")].is_directory
    assert got[F.stat(f"{t}/missing")] == F.FileFact(f"{t}/missing")

    assert got[F.glob(f"{t}/*.pub")] == [f"{t}/a.pub"]  # like the shell: no dot files for '*'
    assert got[F.stat(f"{t}/a.pub")].size == 1  # every match comes with its stat
    assert got[F.glob(f"{t}/none*")] == []


def test_a_command_that_hangs_is_cut_off() -> None:
    items = [F.cmd("echo started; sleep 30"), F.cmd("echo other")]
    started = time.monotonic()
    line = F.command_line(items, timeout=1)  # per command; the default is minutes
    r = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, check=False)
    got = F.parse_reply(items, r.returncode, r.stdout, r.stderr)
    assert got[items[0]].rc == 124 and "timed out" in got[items[0]].stderr
    assert got[items[1]].stdout == "other\n"
    assert time.monotonic() - started < 20


def test_settle_commands_run_before_anything_is_looked_at(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / "settled"
    settle = f"sleep 1; echo yes > {flag}"
    monkeypatch.setattr(F, "SETTLE", (settle,))
    items = [F.cmd(f"cat {flag}"), F.read(str(flag)), F.cmd(settle), F.stat(str(flag))]
    got = run_guest(items)
    assert got[F.cmd(f"cat {flag}")].stdout == "yes\n" and got[F.read(str(flag))] == b"yes\n"
    assert got[F.stat(str(flag))].exists


@pytest.mark.parametrize(("rc", "stdout", "stderr", "message"), [
    (127, "", "sh: 1: python3: not found", "python3 missing in the guest"),
    (1, "", "Traceback ...", "fact gathering exited 1"),
    (0, "not json", "", "unreadable reply"),
    (0, '{"v": 1, "answers": []}', "", "expected 1 answers"),
    (0, '{"v": 2, "answers": [{}]}', "", "version 1"),
    (0, '{"v": 1, "answers": [{"rc": 0}]}', "", "unreadable reply"),
])
def test_a_broken_reply_is_an_error_not_a_fact(rc: int, stdout: str, stderr: str, message: str) -> None:
    with pytest.raises(F.FactsError, match=re.escape(message)):
        F.parse_reply([F.cmd("true")], rc, stdout, stderr)


def test_big_requests_are_split_under_the_argv_limit() -> None:
    items = [F.cmd(f"echo {i} {os.urandom(200).hex()}") for i in range(400)]
    parts = F.batches(items)
    assert len(parts) > 1 and [i for p in parts for i in p] == items
    assert all(len(F.encode_request(p)) <= F.MAX_PAYLOAD for p in parts)
    assert F.batches([]) == []


# --- the store --------------------------------------------------------------------------------


class World:
    """A fake guest answering items from a dict of commands; counts round trips."""

    def __init__(self, commands: dict[str, str]) -> None:
        self.commands = commands
        self.calls: list[list[F.Item]] = []

    def fetch(self, items: list[F.Item]) -> dict[F.Item, Any]:
        self.calls.append(items)
        out: dict[F.Item, Any] = {}
        for kind, key in items:
            assert kind == "cmd", kind
            text = self.commands.get(key)
            out[(kind, key)] = F.CmdFact(0 if text is not None else 1, (text or "").encode(), b"")
        return out


def test_prefetch_is_one_round_trip_and_known_facts_are_not_fetched_again() -> None:
    w = World({"a": "1\n", "b": "2\n"})
    store = F.FactStore("c0", w.fetch)
    store.prefetch([F.cmd("a"), F.cmd("b"), F.cmd("a")])
    store.prefetch([F.cmd("a")])
    assert w.calls == [[F.cmd("a"), F.cmd("b")]] and store.round_trips == 1
    assert store.cmd("b").stdout == "2\n" and store.on_demand == []
    # not declared: fetched on demand, and said so
    assert store.cmd("c").rc == 1
    assert store.on_demand == [F.cmd("c")] and store.round_trips == 2


def test_collecting_records_what_is_missing_instead_of_fetching() -> None:
    w = World({"a": "1"})
    store = F.FactStore("c0", w.fetch)
    store.collecting = True
    with pytest.raises(Pending, match="c0: cmd a"):
        store.cmd("a")
    assert w.calls == [] and store.pending == {F.cmd("a")}


def test_rounds_follow_a_chain_and_keep_finished_results() -> None:
    # each file names the next: one round trip per link, whatever the number of tasks
    w = World({"cat start": "one", "cat one": "two", "cat two": "end", "cat solo": "x"})
    store = F.FactStore("c0", w.fetch)
    runs = {"chain": 0, "solo": 0}

    def chain() -> str:
        runs["chain"] += 1
        name = "start"
        while name != "end":
            name = store.cmd(f"cat {name}").stdout
        return "reached end"

    def solo() -> str:
        runs["solo"] += 1
        return store.cmd("cat solo").stdout

    got = F.evaluate_in_rounds(store, {"chain": chain, "solo": solo})
    assert got == {"chain": "reached end", "solo": "x"} and list(got) == ["chain", "solo"]
    assert [len(c) for c in w.calls] == [2, 1, 1]  # start+solo, then one, then two
    assert runs == {"chain": 4, "solo": 2}  # solo, done in round 2, is not evaluated again


def test_first_round_is_what_tasks_ask_before_anything_is_known() -> None:
    store = F.FactStore("c0", World({}).fetch)
    assert F.first_round(store, {1: lambda: store.cmd("b"), 2: lambda: store.cmd("a")}) == [
        F.cmd("a"), F.cmd("b")]
    assert store.pending == set() and not store.collecting and store.round_trips == 0


def test_a_cached_host_answers_testinfra_and_the_stig_source_from_facts() -> None:
    answers: dict[F.Item, Any] = {
        F.cmd("echo 'a b'"): F.CmdFact(0, b"a b\n", b""),
        F.cmd("command -v command"): F.CmdFact(0, b"command\n", b""),
        F.cmd("command -v sshd"): F.CmdFact(0, b"/usr/sbin/sshd\n", b""),
        F.PACKAGES: F.CmdFact(0, b"auditd\tinstall ok installed\ntelnetd\tdeinstall ok config-files\n", b""),
        F.read("/proc/sys/kernel/dmesg_restrict"): b"1\n",
        F.read("/proc/sys/net/ipv4/ip_local_port_range"): b"32768\t60999\n",
        F.read("/proc/sys/net/ipv4/conf/eth0.100/forwarding"): b"0\n",
        F.read("/proc/sys/kernel/nope"): None,
        F.read("/etc/motd"): b"hi\n",
        F.glob("/etc/*.conf"): ["/etc/b.conf", "/etc/a.conf"],
    }
    calls: list[list[F.Item]] = []

    def fetch(items: list[F.Item]) -> dict[F.Item, Any]:
        calls.append(items)
        return {i: answers[i] for i in items}

    host = F.CachedHost(F.FactStore("c0", fetch))
    assert host.run("echo %s", "a b").stdout == "a b\n"  # testinfra's quoting, then the store
    assert host.exists("sshd")  # testinfra's own logic, its commands from the store
    assert host.package("auditd").is_installed and not host.package("telnetd").is_installed
    assert host.sysctl("kernel.dmesg_restrict") == 1  # an int, as testinfra's sysctl says
    assert host.sysctl("net.ipv4.ip_local_port_range") == "32768\t60999"
    assert host.sysctl("net.ipv4.conf.eth0/100.forwarding") == 0  # sysctl's slash for a dot
    with pytest.raises(AssertionError, match=r"kernel\.nope"):
        host.sysctl("kernel.nope")
    src = HostSource(host)
    assert src.read("/etc/motd") == "hi\n" and src.glob("/etc/*.conf") == ["/etc/a.conf", "/etc/b.conf"]
    assert not any(k == "cmd" and v.startswith(("cat", "for f in")) for c in calls for k, v in c)


def test_installed_packages_as_testinfra_decides() -> None:
    listing = ("less\tinstall ok installed\nvim\tdeinstall ok config-files\nheld\thold ok installed\n"
               "half\tinstall ok half-installed\n")
    assert F.installed_packages(listing) == {"less", "held"}


# --- STIG checks from gathered facts -----------------------------------------------------------


def guest_of(fake: FakeHost) -> World:
    """The fact-gathering view of a FakeHost: its files, commands, packages and sysctls."""
    class FakeGuest(World):
        def fetch(self, items: list[F.Item]) -> dict[F.Item, Any]:
            self.calls.append(items)
            return {(k, key): self.answer(k, key) for k, key in items}

        def answer(self, kind: str, key: str) -> Any:
            if kind == "glob":
                return sorted(p for p in fake.files if fnmatch.fnmatch(p, key))
            if kind == "read" and key.startswith("/proc/sys/"):
                v = fake.sysctls.get(key[len("/proc/sys/"):].replace("/", "."))
                return None if v is None else f"{v}\n".encode()
            if kind == "read":
                text = fake.files.get(key)
                return None if text is None else text.encode()
            assert kind == "cmd", (kind, key)
            if key == F.PACKAGES[1]:
                listing = "".join(f"{p}\tinstall ok installed\n" for p in fake.packages)
                return F.CmdFact(0, listing.encode(), b"")
            r = fake.run(key)
            return F.CmdFact(r.rc, r.stdout.encode(), b"")
    return FakeGuest({})


def fake_ubuntu(**changes: Any) -> FakeHost:
    ids = load_catalogue("ubuntu2204").controls_for("ubuntu")
    sysctls = {k.key: int(k.value) if k.value.isdigit() else k.value
               for c in ids for k in c.checks_for("ubuntu") if isinstance(k, Sysctl)}
    spec: dict[str, Any] = {
        "files": {f"/{p}": t for p, t in UBUNTU.items() if isinstance(t, str)},
        "commands": {"sshd -T": "x11forwarding no\npermitemptypasswords no\nciphers aes256-ctr\n",
                     "auditctl -l": "-w /etc/passwd -p wa -k identity\n",
                     "systemctl is-enabled": "masked\n", "systemctl is-active": "active\n"},
        "packages": ["auditd", "aide", "chrony", "libpam-pwquality", "apparmor"],
        "sysctls": sysctls,
    }
    spec.update(changes)
    return FakeHost(**spec)


def in_rounds(fake: FakeHost) -> tuple[dict[str, Any], int]:
    cat = load_catalogue("ubuntu2204")
    world = guest_of(fake)
    store = F.FactStore("c0", world.fetch)
    tasks = booted_tasks(F.CachedHost(store), [Selected(cat, "ubuntu", Tailoring())])
    done = F.evaluate_in_rounds(store, tasks)
    return {cid: r for res in done.values() for cid, r in res.items()}, len(world.calls)


def test_stig_from_gathered_facts_equals_the_live_host() -> None:
    cat = load_catalogue("ubuntu2204")
    live = check_host(fake_ubuntu(), "ubuntu", cat.controls_for("ubuntu"), phases=BOOTED_PHASES)
    batched, round_trips = in_rounds(fake_ubuntu())
    assert list(batched) == list(live)  # same controls, same order
    assert {cid: (r.status, r.evidence) for cid, r in batched.items()} == {
        cid: (r.status, r.evidence) for cid, r in live.items()}
    assert {r.status for r in live.values()} >= {"pass", "fail"}
    assert round_trips <= 5, round_trips  # a few round trips, not one per command
    assert not any("pending" in r.evidence for r in batched.values())


@pytest.mark.parametrize(("stig_id", "changes"), [
    ("UBTU-22-213010", {"sysctls": {"kernel.dmesg_restrict": 0}}),  # a live sysctl value
    ("UBTU-22-255040", {"commands": {"sshd -T": "x11forwarding yes\n"}}),  # sshd -T
    ("UBTU-22-215035", {"packages": ["telnetd"]}),  # a forbidden package
])
def test_a_stig_check_from_gathered_facts_fails_on_failing_facts(stig_id: str,
                                                                  changes: dict[str, Any]) -> None:
    good, _ = in_rounds(fake_ubuntu())
    bad, _ = in_rounds(fake_ubuntu(**changes))
    assert stig_id in good and stig_id in bad
    assert (good[stig_id].status, bad[stig_id].status) == ("pass", "fail"), (good[stig_id], bad[stig_id])
