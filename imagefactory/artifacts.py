"""External build inputs (RKE2, Zarf, ...): a content-addressed cache, mirrors, upstream, bundles.

Every artifact is named by the lock (name, sha256, upstream URL). `Fetcher.get()` tries, in order,
the local cache (`<workdir>/cache/sha256/<hex>`), each configured mirror (`<mirror>/sha256/<hex>`)
and the upstream URL (unless the configuration says `offline: true`), and verifies the sha256
before anything enters the cache or is used. Bundles (`artifacts export/import`) carry the blobs
plus a manifest across an air gap; an import verifies everything before anything is cached.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import FactoryConfig
from .errors import BuildError, UserError

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Artifact:
    name: str  # the upstream file name
    sha256: str
    url: str  # upstream URL
    role: str  # rke2-sums, rke2-bundle, rke2-images, rke2-install, zarf-sums, zarf-binary, zarf-init

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class ChecksumMismatch(BuildError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def http_get(url: str, timeout: float = 60) -> bytes:
    """GET a small document (sums files, install.sh); TLS verification is always on."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as e:
        raise BuildError(f"GET {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise BuildError(f"GET {url}: {getattr(e, 'reason', e)}",
                         hint="check the network, or use a mirror / an artifact bundle") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def redirect_location(url: str, timeout: float = 30) -> str:
    """The `Location` of a redirect (the RKE2 channel server answers 302 with the version)."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=timeout) as resp:
            raise BuildError(f"GET {url}: expected a redirect, got HTTP {resp.status}")
    except urllib.error.HTTPError as e:
        if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
            return str(e.headers["Location"])
        raise BuildError(f"GET {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise BuildError(f"GET {url}: {getattr(e, 'reason', e)}") from None


def parse_sums(text: str) -> dict[str, str]:
    """`sha256sum` output ("<hex>  <name>" or "<hex> *<name>") -> {name: hex}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


class Cache:
    """Content-addressed blobs: `<root>/sha256/<hex>`; entries appear only once verified."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, src: Path, sha256: str, what: str) -> Path:
        """Move a downloaded file into the cache after checking its digest."""
        actual = sha256_file(src)
        if actual != sha256:
            src.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{what}: sha256 mismatch: expected {sha256}, got {actual}",
                                   hint="the source is corrupt or has been tampered with; nothing was cached")
        dest = self.path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(src, 0o644)
        os.replace(src, dest)
        return dest

    def tmpfile(self) -> Path:
        d = self.root / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=d, prefix="dl-")
        os.close(fd)
        return Path(name)


class Fetcher:
    def __init__(self, cache: Cache, config: FactoryConfig) -> None:
        self.cache = cache
        self.config = config

    def sources(self, a: Artifact) -> list[str]:
        urls = [f"{m.rstrip('/')}/sha256/{a.sha256}" for m in self.config.mirrors]
        if not self.config.offline:
            urls.append(a.url)
        return urls

    def get(self, a: Artifact, recipe: str) -> Path:
        """A verified local copy of `a` (from the cache, a mirror or upstream)."""
        if self.cache.has(a.sha256):
            path = self.cache.path(a.sha256)
            actual = sha256_file(path)
            if actual == a.sha256:
                return path
            log.warning("cache entry for %s is corrupt (sha256 %s): fetching it again", a.name, actual)
            path.unlink()
        tried: list[str] = ["cache"]
        mismatch: ChecksumMismatch | None = None
        for url in self.sources(a):
            tmp = self.cache.tmpfile()
            try:
                self._download(url, tmp)
                log.info("fetched %s from %s", a.name, url)
                return self.cache.put(tmp, a.sha256, f"{a.name} from {url}")
            except ChecksumMismatch as e:
                mismatch = e
            except BuildError as e:
                log.info("%s: %s", a.name, e.message)
            finally:
                tmp.unlink(missing_ok=True)
            tried.append(url)
        if mismatch is not None:
            raise mismatch
        raise BuildError(
            f"artifact {a.name} (sha256 {a.sha256}) is not available; tried: {', '.join(tried)}",
            hint=f"on a connected machine: 'imagefactory artifacts fetch {recipe}' and "
                 f"'imagefactory artifacts export {recipe} -o bundle.tar'; here: "
                 "'imagefactory artifacts import bundle.tar' (or add a mirror in imagefactory.yaml)",
        )

    def _download(self, url: str, dest: Path) -> None:
        if url.startswith("file://"):
            src = Path(urllib.request.url2pathname(url[len("file://"):]))
            if not src.is_file():
                raise BuildError(f"{src}: not found")
            shutil.copyfile(src, dest)
            return
        if url.startswith("s3://"):
            raise BuildError(f"{url}: s3 mirrors need the S3 store support (publish issue)")
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as f:
                shutil.copyfileobj(resp, f, CHUNK)
        except urllib.error.HTTPError as e:
            raise BuildError(f"GET {url}: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            raise BuildError(f"GET {url}: {getattr(e, 'reason', e)}") from None

    def verify_against_sums(self, artifacts: Iterable[Artifact], recipe: str) -> None:
        """Cross-check each artifact's locked hash with the upstream sums file it is listed in."""
        items = list(artifacts)
        for sums_role, member_roles in (("rke2-sums", ("rke2-bundle", "rke2-images")),
                                        ("zarf-sums", ("zarf-binary", "zarf-init"))):
            sums = [a for a in items if a.role == sums_role]
            if not sums:
                continue
            listed = parse_sums(self.get(sums[0], recipe).read_text())
            for a in items:
                if a.role in member_roles and listed.get(a.name) != a.sha256:
                    raise ChecksumMismatch(
                        f"{a.name}: the lock says sha256 {a.sha256} but {sums[0].name} says "
                        f"{listed.get(a.name, 'nothing')}", hint="run 'imagefactory lock update'")


# --- cloud images ------------------------------------------------------------------------------


def cloud_image_artifact(url: str, checksum: str | None, checksum_url: str | None) -> Artifact:
    """The base image of a `cloud-image` source, with its expected sha256.

    With `checksum_url` (a SHA256SUMS file) the expected hash is the file's line for the image's
    name; the sums file itself is fetched over TLS-verified HTTPS from the same publisher.
    """
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if checksum is not None:
        algo, _, digest = checksum.partition(":")
        if algo != "sha256":
            raise UserError(f"source.checksum: {algo} is not supported for downloads yet",
                            hint="use a sha256: checksum or checksum_url")
        return Artifact(name, digest, url, "base-image")
    assert checksum_url is not None
    listed = {k.removeprefix("./"): v for k, v in
              parse_sums(http_get(checksum_url).decode(errors="replace")).items()}
    if name not in listed:
        raise BuildError(f"{checksum_url} lists no {name}",
                         hint="check source.url against the checksum file")
    return Artifact(name, listed[name], url, "base-image")


# --- bundles -----------------------------------------------------------------------------------

BUNDLE_MANIFEST = "bundle.json"


def export_bundle(fetcher: Fetcher, recipe: str, entry: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write a tar with `bundle.json` and `sha256/<hex>` blobs of every artifact of `recipe`."""
    arts = [Artifact(**a) for a in entry["artifacts"]]
    paths = {a.sha256: fetcher.get(a, recipe) for a in arts}
    manifest = {"schema": 1, "recipe": recipe, "lock": entry,
                "files": [{"name": a.name, "sha256": a.sha256, "size": paths[a.sha256].stat().st_size}
                          for a in arts]}
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(tmp, "w") as tar:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(BUNDLE_MANIFEST)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
            for sha, path in sorted(paths.items()):
                tar.add(path, arcname=f"sha256/{sha}", recursive=False)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def import_bundle(cache: Cache, bundle: Path, lock_entry_for: Any) -> dict[str, Any]:
    """Verify a bundle against its manifest *and* the local lock, then add its blobs to the cache.

    `lock_entry_for(recipe)` returns the local lock's entry (or raises if there is none).
    """
    if not bundle.is_file():
        raise UserError(f"{bundle}: no such bundle")
    cache.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="import-", dir=cache.root))
    try:
        with tarfile.open(bundle, "r") as tar:
            try:
                manifest: dict[str, Any] = json.load(tar.extractfile(BUNDLE_MANIFEST))  # type: ignore[arg-type]
            except KeyError:
                raise UserError(f"{bundle}: not an imagefactory bundle (no {BUNDLE_MANIFEST})") from None
            recipe = manifest["recipe"]
            local = lock_entry_for(recipe)
            local_hashes = {a["sha256"]: a["name"] for a in local["artifacts"]}
            wanted = {f["sha256"]: f["name"] for f in manifest["files"]}
            if set(wanted) != set(local_hashes):
                raise ChecksumMismatch(
                    f"{bundle}: its artifacts for {recipe} differ from the local lock",
                    hint="export the bundle from the same lock (git revision) as this side")
            for member in tar.getmembers():
                if member.name == BUNDLE_MANIFEST:
                    continue
                sha = member.name.removeprefix("sha256/")
                if not member.isfile() or sha not in wanted or "/" in sha:
                    raise UserError(f"{bundle}: unexpected member {member.name}")
                src = tar.extractfile(member)
                assert src is not None
                dest = staging / sha
                with open(dest, "wb") as f:
                    shutil.copyfileobj(src, f, CHUNK)
                actual = sha256_file(dest)
                if actual != sha:
                    raise ChecksumMismatch(
                        f"{bundle}: {wanted[sha]}: sha256 mismatch: expected {sha}, got {actual}",
                        hint="the bundle is corrupt; nothing was imported")
        missing = [wanted[s] for s in wanted if not (staging / s).is_file()]
        if missing:
            raise UserError(f"{bundle}: missing artifacts: {', '.join(sorted(missing))}")
        for sha in wanted:  # everything verified: now (and only now) into the cache
            cache.put(staging / sha, sha, wanted[sha])
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
