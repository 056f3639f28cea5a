"""Fixtures for the in-guest suites: the booted clones, from IMAGEFACTORY_TEST_TARGET (JSON).

The target file names each clone's SSH port, user, key file, boot time and identity (instance id,
hostname), plus what the recipe asked for and what the build host looked like (to prove that
nothing of it leaked into the image).

Each clone is a `FactStore` (`imagefactory.testing.facts`): one SSH connection (testinfra,
paramiko, sudo) and the facts the suites read. Every suite module declares what it reads in
`wanted(target, clone)`; the first test to need a clone fetches that for all clones at once,
concurrently, one round trip per clone, and the tests evaluate the answers on this host.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import testinfra

from imagefactory.testing.facts import CmdFact, FactStore, Item, remote_fetch


def _target() -> dict[str, Any]:
    path = os.environ["IMAGEFACTORY_TEST_TARGET"]
    with open(path) as f:
        return json.load(f)  # type: ignore[no-any-return]


TARGET = _target()
Clone = tuple[dict[str, Any], FactStore]
Wanted = Callable[[dict[str, Any], dict[str, Any]], Iterable[Item]]
_STORES: list[FactStore] = []  # for the summary


def _connect(clone: dict[str, Any]) -> Any:
    url = f"paramiko://{TARGET['user']}@127.0.0.1:{clone['port']}"
    return testinfra.get_host(url, ssh_identity_file=TARGET["key"], sudo=True)


def _store(clone: dict[str, Any]) -> FactStore:
    host = _connect(clone)
    return FactStore(clone["name"], remote_fetch(host), host)


def wanted_by(session: pytest.Session) -> list[Wanted]:
    """The `wanted` functions of the suite modules this session runs."""
    mods = {id(m): m for item in session.items if (m := getattr(item, "module", None)) is not None}
    return [m.wanted for m in mods.values() if callable(getattr(m, "wanted", None))]


@pytest.fixture(scope="session")
def target() -> dict[str, Any]:
    return TARGET


@pytest.fixture(scope="session")
def stores(request: pytest.FixtureRequest) -> dict[str, FactStore]:
    """Every clone's facts, prefetched concurrently: what every suite of the session declared."""
    out = {c["name"]: _store(c) for c in TARGET["clones"]}
    _STORES.extend(out.values())
    wants = wanted_by(request.session)

    def prefetch(c: dict[str, Any]) -> None:
        out[c["name"]].prefetch(i for w in wants for i in w(TARGET, c))

    with ThreadPoolExecutor(max_workers=len(out)) as pool:
        list(pool.map(prefetch, TARGET["clones"]))
    return out


@pytest.fixture(scope="session")
def clones(stores: dict[str, FactStore]) -> list[Clone]:
    """All clones, for tests that compare them."""
    return [(c, stores[c["name"]]) for c in TARGET["clones"]]


@pytest.fixture(scope="session", params=[c["name"] for c in TARGET["clones"]])
def clone(request: pytest.FixtureRequest, stores: dict[str, FactStore]) -> Clone:
    """One clone at a time, for per-VM tests."""
    info = next(c for c in TARGET["clones"] if c["name"] == request.param)
    return info, stores[info["name"]]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Round trips and the slowest commands per clone; a fact a test read without declaring it in
    # `wanted` cost a round trip of its own: say so.
    say = terminalreporter.write_line
    for store in _STORES:
        trips = ", ".join(f"{n} items {s:.1f} s" for n, s in store.fetches)
        cmds = [(f.seconds, k[1]) for k, f in store.facts.items() if isinstance(f, CmdFact)]
        slow = "; ".join(f"{c[:60]} {t:.1f} s" for t, c in sorted(cmds, reverse=True)[:5])
        say(f"facts {store.name}: {len(store.facts)} in {store.round_trips} round trips ({trips})")
        say(f"facts {store.name}: slowest: {slow}")
        if store.on_demand:
            extra = ", ".join(f"{k} {v}" for k, v in store.on_demand[:10])
            say(f"facts {store.name}: fetched on demand ({len(store.on_demand)}): {extra}")
        # Where the boot's time went (read after the checks, so it costs them nothing): the
        # build log then says why a clone was slow to get ready.
        try:
            profile = store.host.run("systemd-analyze time; systemd-analyze blame --no-pager | head -n 8")
            lines = [" ".join(line.split()) for line in profile.stdout.splitlines() if line.strip()]
            say(f"facts {store.name}: boot: {' | '.join(lines)[:600]}")
        except Exception as e:  # diagnostics only: never fail a suite over them
            say(f"facts {store.name}: boot: no profile ({type(e).__name__})")
