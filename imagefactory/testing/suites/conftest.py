"""Fixtures for the in-guest suites: the booted clones, from IMAGEFACTORY_TEST_TARGET (JSON).

The target file names each clone's SSH port, user, key file, boot time and identity (instance id,
hostname), plus what the recipe asked for and what the build host looked like (to prove that
nothing of it leaked into the image).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import testinfra


def _target() -> dict[str, Any]:
    path = os.environ["IMAGEFACTORY_TEST_TARGET"]
    with open(path) as f:
        return json.load(f)  # type: ignore[no-any-return]


TARGET = _target()


def _connect(clone: dict[str, Any]) -> Any:
    url = f"paramiko://{TARGET['user']}@127.0.0.1:{clone['port']}"
    return testinfra.get_host(url, ssh_identity_file=TARGET["key"], sudo=True)


@pytest.fixture(scope="session")
def target() -> dict[str, Any]:
    return TARGET


@pytest.fixture(scope="session")
def clones() -> list[tuple[dict[str, Any], Any]]:
    """All clones, for tests that compare them."""
    return [(c, _connect(c)) for c in TARGET["clones"]]


@pytest.fixture(scope="session", params=[c["name"] for c in TARGET["clones"]])
def clone(request: pytest.FixtureRequest) -> tuple[dict[str, Any], Any]:
    """One clone at a time, for per-VM tests."""
    info = next(c for c in TARGET["clones"] if c["name"] == request.param)
    return info, _connect(info)
