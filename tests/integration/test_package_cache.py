"""Warm rebuilds with the real mmdebstrap, apt and tar, against a signed loopback archive.

The package cache (imagefactory.debcache): a second bootstrap gets every package from the cache
and downloads none (the archive's pool is gone by then, so a download would fail the run); a
cache entry that no longer hashes to the signed index's SHA256 is never handed to apt.

The root cache (imagefactory.rootcache): a second bootstrap from the same inputs restores the
first one's root - owners, modes, mtimes, hard links and file capabilities intact - without
running mmdebstrap; an archive update, a corrupt entry or an archive that moved under the
bootstrap means a fresh bootstrap, and a root apt resolved against other Release files than the
key's is never kept."""

from __future__ import annotations

import email.utils
import functools
import hashlib
import http.server
import lzma
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagefactory import archive, debcache, rootcache
from imagefactory.artifacts import Cache, ChecksumMismatch, sha256_file
from imagefactory.proxy import PackageProxy
from tests.aptsign import gpg
from tests.conftest import require_root

pytestmark = pytest.mark.integration

PACKAGES = [("alpha", "1:1.0-1", "all"), ("beta", "2.0+b1", "amd64")]  # an epoch, a plus sign


def _deb(work: Path, name: str, version: str, arch: str) -> Path:
    out = work / f"{name}-{version}.deb"
    if out.exists():  # republished unchanged
        return out
    root = work / f"{name}-{version}-src"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share" / name).mkdir(parents=True)
    (root / "usr/share" / name / "payload").write_text(f"{name} {version}\n" * 1000)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: t <t@example.invalid>\n"
        f"Description: test package {name}\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)],
                   check=True, capture_output=True)
    return out


def _publish(repo: Path, home: Path, packages: list[tuple[str, str, str]] = PACKAGES,
             by_hash: bool = False) -> None:
    stanzas = []
    for name, version, arch in packages:
        deb = _deb(repo.parent, name, version, arch)
        rel = f"pool/main/{name[0]}/{name}/{name}_{version.split(':')[-1]}_{arch}.deb"
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deb, repo / rel)
        data = deb.read_bytes()
        stanzas.append(f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
                       f"Maintainer: t <t@example.invalid>\nFilename: {rel}\nSize: {len(data)}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\nDescription: test package {name}\n")
    d = repo / "dists/stable/main/binary-amd64"
    d.mkdir(parents=True, exist_ok=True)
    text = "\n".join(stanzas).encode()
    (d / "Packages").write_bytes(text)
    (d / "Packages.xz").write_bytes(lzma.compress(text))
    listed = "".join(f" {hashlib.sha256((d / f).read_bytes()).hexdigest()} {(d / f).stat().st_size} "
                     f"main/binary-amd64/{f}\n" for f in ("Packages", "Packages.xz"))
    if by_hash:  # as dak publishes: each index also under its hash, older ones kept a while
        (d / "by-hash/SHA256").mkdir(parents=True, exist_ok=True)
        for f in ("Packages", "Packages.xz"):
            data = (d / f).read_bytes()
            (d / "by-hash/SHA256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    release = repo / "dists/stable/Release"
    release.write_text(f"Suite: stable\nCodename: stable\nDate: {email.utils.formatdate(usegmt=True)}\n"
                       + ("Acquire-By-Hash: yes\n" if by_hash else "")
                       + f"Architectures: amd64\nComponents: main\nSHA256:\n{listed}")
    (repo / "dists/stable/InRelease").write_bytes(gpg(home, "--clearsign", "-o", "-", str(release)))


@pytest.fixture
def served(tmp_path: Path, apt_keys: dict[str, Path]) -> Iterator[tuple[str, Path]]:
    require_root()
    repo = tmp_path / "repo"
    repo.mkdir()
    _publish(repo, apt_keys["archive-home"])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(repo))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", repo
    finally:
        httpd.shutdown()
        httpd.server_close()


def _bootstrap(url: str, keyring: Path, cache: Cache, scratch: Path) -> tuple[debcache.Reuse, debcache.Reuse]:
    """What builders/rootfs.bootstrap does, on the extract variant (no essential set needed)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o755)
    suite = archive.verify(url, "stable", str(keyring), key="source.keyring", required=True)
    assert suite is not None
    index = debcache.load_index([suite], ["main"], "amd64", cache)
    reused = debcache.stage(index, cache, scratch / "in")
    known = {index.hashes[p.name] for p in (scratch / "in").iterdir()}
    ring = scratch / "archive.gpg"
    shutil.copyfile(keyring, ring)
    ring.chmod(0o644)
    r = subprocess.run(["mmdebstrap", "--mode=root", "--variant=extract", "--include=alpha,beta",
                        f"--keyring={ring}", *debcache.hooks(scratch / "in", scratch / "out", "extract"),
                        "stable", str(scratch / "root"), f"deb {url} stable main"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(r.stderr[-3000:])
    assert (scratch / "root/usr/share/beta/payload").is_file()
    assert not list((scratch / "root/var/cache/apt/archives").glob("*.deb"))  # the root keeps none
    return reused, debcache.collect(scratch / "out", cache, known)


def test_apt_names_and_signed_index() -> None:
    assert debcache.archive_name("alpha", "1:1.0-1", "all") == "alpha_1%3a1.0-1_all.deb"
    assert debcache.archive_name("g++", "2.0+b1", "amd64") == "g++_2.0+b1_amd64.deb"
    listed = debcache.release_files(
        b"Codename: x\nMD5Sum:\n aa 1 main/Packages\nSHA256:\n bb 22 main/Packages\n")
    assert listed == {"main/Packages": ("bb", 22)}


def test_warm_bootstrap_downloads_no_package(served: tuple[str, Path], apt_keys: dict[str, Path],
                                             tmp_path: Path) -> None:
    url, repo = served
    cache = Cache(tmp_path / "cache")
    cold_reused, cold_new = _bootstrap(url, apt_keys["archive"], cache, tmp_path / "b1")
    assert (cold_reused.files, cold_new.files) == (0, 2)
    shutil.rmtree(repo / "pool")  # from now on a package apt has to download fails the run
    warm_reused, warm_new = _bootstrap(url, apt_keys["archive"], cache, tmp_path / "b2")
    assert (warm_reused.files, warm_new.files, warm_new.bytes) == (2, 0, 0)
    assert warm_reused.bytes == cold_new.bytes > 0
    # The indexes came from the cache too: keyed by the hash the signed Release lists.
    suite = archive.verify(url, "stable", str(apt_keys["archive"]), key="k", required=True)
    assert suite is not None
    assert debcache.load_index([suite], ["main"], "amd64", cache).fetched_bytes == 0


def test_a_tampered_cache_entry_is_not_used(served: tuple[str, Path], apt_keys: dict[str, Path],
                                            tmp_path: Path) -> None:
    url, repo = served
    cache = Cache(tmp_path / "cache")
    _bootstrap(url, apt_keys["archive"], cache, tmp_path / "b1")
    suite = archive.verify(url, "stable", str(apt_keys["archive"]), key="k", required=True)
    assert suite is not None
    index = debcache.load_index([suite], ["main"], "amd64", cache)
    beta = cache.path(index.hashes["beta_2.0+b1_amd64.deb"])
    beta.write_bytes(beta.read_bytes()[:-10] + b"x" * 10)  # same size: apt alone would take it
    shutil.rmtree(repo / "pool")
    staged = debcache.stage(index, cache, tmp_path / "staged")
    assert staged.files == 1
    assert [p.name for p in (tmp_path / "staged").iterdir()] == ["alpha_1%3a1.0-1_all.deb"]
    assert not beta.exists()  # dropped from the cache
    with pytest.raises(AssertionError, match="beta"):  # apt must download beta, and the pool is gone
        _bootstrap(url, apt_keys["archive"], cache, tmp_path / "b2")


def test_an_index_is_fetched_by_its_hash_while_the_mirror_moves_on(
        served: tuple[str, Path], apt_keys: dict[str, Path], tmp_path: Path) -> None:
    """A mirror that publishes between our Release and our index GET (CI met it on
    noble-updates): by-hash still serves the index the verified Release names, as apt fetches it."""
    url, repo = served
    _publish(repo, apt_keys["archive-home"], by_hash=True)
    suite = archive.verify(url, "stable", str(apt_keys["archive"]), key="k", required=True)
    assert suite is not None
    _publish(repo, apt_keys["archive-home"], [*PACKAGES, ("gamma", "3.0-1", "all")], by_hash=True)
    index = debcache.load_index([suite], ["main"], "amd64", Cache(tmp_path / "cache"))
    assert sorted(index.hashes) == ["alpha_1%3a1.0-1_all.deb", "beta_2.0+b1_amd64.deb"]
    assert index.fetched_bytes > 0
    # the plain path now serves the newer index: what the old code fetched, refused as tampered
    stale = suite.release.replace(b"Acquire-By-Hash: yes\n", b"")
    without = archive.Suite(suite.mirror, suite.suite, stale, suite.signer)
    with pytest.raises(ChecksumMismatch, match=r"Packages\.xz: sha256 mismatch against stable's signed"):
        debcache.load_index([without], ["main"], "amd64", Cache(tmp_path / "cache2"))
    # a mirror that lists by-hash but lost the file: the plain path is still tried
    for f in (repo / "dists/stable/main/binary-amd64/by-hash/SHA256").iterdir():
        f.unlink()
    fresh = archive.verify(url, "stable", str(apt_keys["archive"]), key="k", required=True)
    assert fresh is not None
    got = debcache.load_index([fresh], ["main"], "amd64", Cache(tmp_path / "cache3"))
    assert "gamma_3.0-1_all.deb" in got.hashes


# --- the root cache -----------------------------------------------------------------------------

def _inputs(url: str, keyring: Path) -> rootcache.Inputs:
    suite = archive.verify(url, "stable", str(keyring), key="source.keyring", required=True)
    assert suite is not None
    return rootcache.Inputs(("--mode=root", "--variant=extract", "--include=alpha,beta"), "stable",
                            (f"deb {url} stable main",), (keyring,), (suite,), rootcache.tool_version())


def _cached_bootstrap(url: str, keyring: Path, cache: rootcache.RootCache | None, scratch: Path,
                      inputs: rootcache.Inputs | None = None) -> tuple[rootcache.Outcome, int]:
    """What builders/rootfs.bootstrap does; returns the outcome and how often mmdebstrap ran. The
    bootstrap also leaves what real roots hold and a naive copy loses: a file capability (ping's
    cap_net_raw), a foreign owner, a hard link, a setuid bit, a nanosecond mtime."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o755)  # no root directory yet: a build's bootstrap step starts without one
    ring = scratch / "archive.gpg"
    shutil.copyfile(keyring, ring)
    ring.chmod(0o644)
    ran = []

    def mmdebstrap(extra: list[str]) -> None:
        ran.append(extra)
        r = subprocess.run(["mmdebstrap", "--mode=root", "--variant=extract", "--include=alpha,beta",
                            f"--keyring={ring}", *extra, "stable", str(scratch / "root"),
                            f"deb {url} stable main"], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(r.stderr[-3000:])
        payload = scratch / "root/usr/share/beta/payload"
        subprocess.run(["setcap", "cap_net_raw+ep", str(payload)], check=True)
        os.chown(scratch / "root/usr/share/alpha/payload", 1234, 5678)
        os.link(payload, scratch / "root/usr/share/beta/hardlink")
        os.chmod(scratch / "root/usr/share/alpha", 0o4755)
        os.utime(scratch / "root/usr/share/alpha/payload", ns=(1, 1_700_000_000_123_456_789))

    outcome = rootcache.bootstrap(cache, "r", inputs or _inputs(url, keyring), scratch / "root", scratch,
                                  "extract", mmdebstrap)
    return outcome, len(ran)


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        regular = p.is_file() and not p.is_symlink()
        content = p.read_bytes() if regular else os.readlink(p) if p.is_symlink() else b""
        caps = subprocess.run(["getcap", str(p)], capture_output=True, text=True).stdout.split()[1:] \
            if regular else []
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink,
                                         content, caps)
    return out


def test_second_bootstrap_restores_the_same_root(served: tuple[str, Path], apt_keys: dict[str, Path],
                                                 tmp_path: Path) -> None:
    url, repo = served
    cache = rootcache.RootCache(tmp_path / "roots")
    cold, ran = _cached_bootstrap(url, apt_keys["archive"], cache, tmp_path / "b1")
    assert (cold.hit, ran) == (False, 1) and cold.stored and cold.stored > 0
    shutil.rmtree(repo / "pool")  # a bootstrap that reaches apt now fails
    warm, ran = _cached_bootstrap(url, apt_keys["archive"], cache, tmp_path / "b2")
    assert (warm.hit, ran, warm.key) == (True, 0, cold.key)
    first, second = _tree(tmp_path / "b1/root"), _tree(tmp_path / "b2/root")
    assert second == first
    assert first["usr/share/beta/payload"][-1] == ["cap_net_raw=ep"]  # the check can see a lost capability
    assert first["usr/share/alpha/payload"][1:4] == (1234, 5678, 1_700_000_000_123_456_789)
    assert first["usr/share/beta/payload"][4] == 2


def test_an_archive_update_means_a_fresh_bootstrap(served: tuple[str, Path], apt_keys: dict[str, Path],
                                                  tmp_path: Path) -> None:
    url, repo = served
    cache = rootcache.RootCache(tmp_path / "roots")
    cold, _ = _cached_bootstrap(url, apt_keys["archive"], cache, tmp_path / "b1")
    _publish(repo, apt_keys["archive-home"], [PACKAGES[0], ("beta", "2.1", "amd64")])  # a fixed beta
    warm, ran = _cached_bootstrap(url, apt_keys["archive"], cache, tmp_path / "b2")
    assert (warm.hit, ran) == (False, 1) and warm.key != cold.key
    assert "beta 2.1" in (tmp_path / "b2/root/usr/share/beta/payload").read_text()
    assert [p.name for p in (tmp_path / "roots").glob("*.tar")] == [f"r-{warm.key}.tar"]  # one per recipe
    # ...and a republished archive with the same packages is the same key (its Date alone changed)
    _publish(repo, apt_keys["archive-home"], [PACKAGES[0], ("beta", "2.1", "amd64")])
    again, ran = _cached_bootstrap(url, apt_keys["archive"], cache, tmp_path / "b3")
    assert (again.hit, ran, again.key) == (True, 0, warm.key)


def test_a_corrupt_entry_is_dropped(served: tuple[str, Path], apt_keys: dict[str, Path],
                                    tmp_path: Path) -> None:
    url, _ = served
    cache = rootcache.RootCache(tmp_path / "roots")
    cold, _ = _cached_bootstrap(url, apt_keys["archive"], cache, tmp_path / "b1")
    tar = tmp_path / "roots" / f"r-{cold.key}.tar"
    with tar.open("r+b") as f:
        f.seek(tar.stat().st_size // 2)
        f.write(b"x")
    warm, ran = _cached_bootstrap(url, apt_keys["archive"], cache, tmp_path / "b2")
    assert (warm.hit, ran) == (False, 1)
    assert _tree(tmp_path / "b2/root").keys() == _tree(tmp_path / "b1/root").keys()
    assert sha256_file(tar) == (tar.with_suffix(".tar.sha256")).read_text().strip()  # kept anew


def test_a_root_from_another_archive_state_is_not_kept(served: tuple[str, Path], apt_keys: dict[str, Path],
                                                       tmp_path: Path) -> None:
    url, repo = served
    cache = rootcache.RootCache(tmp_path / "roots")
    keyed = _inputs(url, apt_keys["archive"])  # the build checked the archive...
    _publish(repo, apt_keys["archive-home"], [PACKAGES[0], ("beta", "2.1", "amd64")])  # ...then it moved
    moved, ran = _cached_bootstrap(url, apt_keys["archive"], cache, tmp_path / "b1", keyed)
    assert (moved.hit, ran, moved.stored) == (False, 1, None)
    assert not list((tmp_path / "roots").glob("*.tar"))


def test_without_the_cache_nothing_is_kept(served: tuple[str, Path], apt_keys: dict[str, Path],
                                           tmp_path: Path) -> None:
    url, _ = served
    first, ran = _cached_bootstrap(url, apt_keys["archive"], None, tmp_path / "b1")
    assert (first.hit, ran, first.stored) == (False, 1, None)
    assert ran == 1 and (tmp_path / "b1/root/usr/share/beta/payload").is_file()


# --- the Packer build VM's packages: the proxy's cache ----------------------------------------------

def _via(proxy: PackageProxy, url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy.port}"}))
    try:
        with opener.open(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_proxy_keeps_packages_under_the_index_hash(served: tuple[str, Path], tmp_path: Path) -> None:
    """What apt in the Packer build VM fetches through the allow-list proxy: a package named by an
    index that passed through is kept under that index's SHA256, and the next build's proxy answers
    from the cache - with the archive's pool gone. A cached file that no longer has the hash is
    never served; a package no index named is passed through and not kept."""
    url, repo = served
    cache = Cache(tmp_path / "cache")
    beta = repo / "pool/main/b/beta/beta_2.0+b1_amd64.deb"
    deb_url = f"{url}/pool/main/b/beta/beta_2.0%2bb1_amd64.deb"  # apt quotes '+'
    alpha_url = f"{url}/pool/main/a/alpha/alpha_1.0-1_all.deb"
    with PackageProxy((url,), cache) as p:
        assert _via(p, alpha_url) == (200, (repo / "pool/main/a/alpha/alpha_1.0-1_all.deb").read_bytes())
        assert debcache.cached_hashes(cache) == set()  # no index seen yet: passed through, not kept
        assert _via(p, f"{url}/dists/stable/main/binary-amd64/Packages.xz")[0] == 200
        assert _via(p, deb_url) == (200, beta.read_bytes())
    sha = hashlib.sha256(beta.read_bytes()).hexdigest()
    assert cache.has(sha)
    shutil.rmtree(repo / "pool")  # the next build: only the index is still upstream
    with PackageProxy((url,), cache) as p:
        assert _via(p, f"{url}/dists/stable/main/binary-amd64/Packages.xz")[0] == 200
        assert _via(p, deb_url) == (200, cache.path(sha).read_bytes())
        assert p.cache_hits == 1
        assert p.stats() == {"reused_files": 1, "reused_bytes": len(cache.path(sha).read_bytes()),
                             "downloaded_bytes": 0, "kept_files": 0}
        cache.path(sha).write_bytes(b"tampered")
        assert _via(p, deb_url)[0] == 404  # not served from the cache; upstream has no pool now
        assert not cache.has(sha)
