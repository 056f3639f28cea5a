"""RPM repository metadata (imagefactory.rpmrepo): rpm's version order and the checksum chain
repomd.xml -> primary -> package."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from imagefactory import rpmrepo
from imagefactory.errors import BuildError


@pytest.mark.parametrize(("a", "b", "want"), [
    ("1.0", "1.0", 0), ("1.10", "1.9", 1), ("0.18", "0.9", 1), ("2.0", "1.999", 1),
    ("1.0a", "1.0", 1), ("1.0", "1.0.1", -1), ("a", "1", -1), ("1.0~rc1", "1.0", -1),
    ("1.0~rc1", "1.0~rc2", -1), ("1.0^git1", "1.0", 1), ("1.0^git1", "1.0.1", -1),
    ("1.slemicro", "2.slemicro", -1), ("010", "10", 0),
])
def test_vercmp_is_rpms(a: str, b: str, want: int) -> None:
    assert rpmrepo.vercmp(a, b) == want
    assert rpmrepo.vercmp(b, a) == -want


def _repo(packages: list[tuple[str, str, str, str]], tamper: bool = False) -> dict[str, bytes]:
    body = "".join(f'<package type="rpm"><name>{n}</name><arch>noarch</arch><version epoch="{e}" ver="{v}" '
                   f'rel="{r}"/><checksum type="sha256" pkgid="YES">{"ab" * 32}</checksum>'
                   f'<location href="{n}-{v}-{r}.noarch.rpm"/></package>' for n, e, v, r in packages)
    primary = gzip.compress(f'<metadata xmlns="http://linux.duke.edu/metadata/common">{body}</metadata>'.encode())
    sha = hashlib.sha256(primary + (b"x" if tamper else b"")).hexdigest()
    repomd = (f'<repomd xmlns="http://linux.duke.edu/metadata/repo"><data type="primary"><checksum '
              f'type="sha256">{sha}</checksum><location href="repodata/p.xml.gz"/></data></repomd>').encode()
    return {"http://r/repodata/repomd.xml": repomd, "http://r/repodata/p.xml.gz": primary}


def test_newest_build_by_epoch_version_release() -> None:
    files = _repo([("rke2-selinux", "0", "0.9", "1"), ("rke2-selinux", "0", "0.18", "1"),
                   ("rke2-selinux", "0", "0.18", "2.sm"), ("other", "3", "9.9", "1")])
    pkgs = rpmrepo.packages("http://r", files.__getitem__)
    best = rpmrepo.newest(pkgs, "rke2-selinux")
    assert best is not None and (best.version, best.release, best.href) == ("0.18", "2.sm",
                                                                           "rke2-selinux-0.18-2.sm.noarch.rpm")
    files = _repo([("rke2-selinux", "1", "0.1", "1"), ("rke2-selinux", "0", "0.99", "1")])
    best = rpmrepo.newest(rpmrepo.packages("http://r", files.__getitem__), "rke2-selinux")
    assert best is not None and best.evr == "1:0.1-1"  # the epoch wins
    assert rpmrepo.newest(pkgs, "absent") is None


def test_primary_must_match_repomd() -> None:
    files = _repo([("rke2-selinux", "0", "0.18", "1")], tamper=True)
    with pytest.raises(BuildError, match=r"does not match the checksum in repomd\.xml"):
        rpmrepo.packages("http://r", files.__getitem__)
