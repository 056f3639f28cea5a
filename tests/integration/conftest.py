"""Fixtures shared by the integration tests: the S3 servers the store is tested against."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from imagefactory.catalogue.s3 import Credentials
from tests.publishing import MotoServer
from tests.rgw import start_rgw


@dataclass(frozen=True)
class S3Server:
    """One running S3 server: `moto` (checks no signature, no Content-MD5 without IAM mode) or
    `rgw` (Ceph RADOS Gateway: SigV4, presigned URLs per method, Content-MD5 and payload hashes
    checked; tests/rgw.py names its quirks)."""

    kind: str
    port: int
    creds: Credentials

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[S3Server]:
    moto = MotoServer().start()
    try:
        yield S3Server("moto", moto.port, Credentials("AKIDTEST", "not-checked-by-this-server", None, "test"))
    finally:
        moto.stop()


@pytest.fixture(scope="module")
def rgw_server() -> Iterator[S3Server]:
    rgw = start_rgw()
    try:
        yield S3Server("rgw", rgw.port, Credentials(rgw.access_key, rgw.secret_key, None, "test"))
    finally:
        rgw.stop()


@pytest.fixture(params=["moto", "rgw"])
def s3(request: pytest.FixtureRequest) -> S3Server:
    """Each test that takes `s3` runs against moto and against RGW (one server of each per module)."""
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    return server
