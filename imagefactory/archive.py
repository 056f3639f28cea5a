"""apt archives as a build meets them: the suites a build installs from (the release, its
`-updates` and `-security` pockets), their Release files, and the signatures on those.

A Release file is trusted only after `gpgv` has verified its detached signature (`Release.gpg`)
with the recipe's keyring - the distribution's keys, shipped or installed, never a key fetched at
build time. Its fields then say whether the mirror really serves what the recipe asks for (the
codename, the components), so that a wrong mirror path or a partial site mirror fails in the
first seconds, naming the recipe key, instead of as an apt error a minute into the bootstrap.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .distros import get as distro_of
from .errors import BuildError, UserError
from .recipes.model import MmdebstrapSource, Recipe
from .run import run

log = logging.getLogger(__name__)


def fetch(url: str, timeout: float = 30) -> bytes | None:
    """GET a small document; None when it does not exist (HTTP 404, a missing file:// path)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            return None
        raise BuildError(f"GET {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, FileNotFoundError):
            return None
        raise BuildError(f"GET {url}: {e.reason}", hint="check the network, proxy and mirror URL") from None
    except OSError as e:
        raise BuildError(f"GET {url}: {e}", hint="check the network, proxy and mirror URL") from None


def release_fields(release: bytes) -> dict[str, str]:
    """The fields of a Release file (its first paragraph; continuation lines dropped)."""
    out: dict[str, str] = {}
    for line in release.decode(errors="replace").splitlines():
        if not line.strip():
            break
        if line[0].isspace() or ":" not in line:
            continue
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def pocket_suites(recipe: Recipe) -> dict[str, tuple[str, str]]:
    """(archive base URL, suite) of the pockets a build of `recipe` adds to its release:
    `updates` (stable updates) and `security`. Debian/Ubuntu only.

    An mmdebstrap source uses its own mirror; a Packer build that applies updates
    (`packer.update`) uses the first of its package mirrors. Ubuntu serves both pockets from the
    same archive; Debian serves `-updates` from the same archive and `-security` from a sibling
    one, `debian-security` next to `debian` (deb.debian.org and the usual mirror layouts). Derived
    in this one place, so that what the lock and `updates check` track is what a build installs.
    """
    family = recipe.os.family
    if family not in ("debian", "ubuntu"):
        return {}
    distro = distro_of(family)
    codename = distro.releases.get(recipe.os.release)
    src = recipe.source
    if isinstance(src, MmdebstrapSource):
        base = src.mirror
    elif recipe.builder == "packer" and recipe.packer.update:
        mirrors = distro.package_mirrors(recipe)
        if not mirrors:
            return {}
        base = mirrors[0]
    else:
        return {}
    if codename is None:
        return {}
    base = base.rstrip("/")
    security = base
    if family == "debian":
        parts = urllib.parse.urlsplit(base)
        path = parts.path.rstrip("/")
        path = f"{path}-security" if path else "/debian-security"
        security = urllib.parse.urlunsplit(parts._replace(path=path))
    return {"updates": (base, f"{codename}-updates"), "security": (security, f"{codename}-security")}


@dataclass(frozen=True)
class Suite:
    """A verified Release file of one suite of an archive."""

    mirror: str
    suite: str
    release: bytes
    signer: str  # the key fingerprint gpgv reported

    @property
    def fields(self) -> dict[str, str]:
        return release_fields(self.release)

    @property
    def epoch(self) -> int | None:
        """The Release file's `Date:` as a Unix time (None without one)."""
        try:
            return int(email.utils.parsedate_to_datetime(self.fields["Date"]).timestamp())
        except (KeyError, TypeError, ValueError):
            return None

    def identity(self) -> dict[str, Any]:
        return {"mirror": self.mirror, "suite": self.suite,
                "release_sha256": hashlib.sha256(self.release).hexdigest(),
                "date": self.fields.get("Date"), "signed_by": self.signer}


def _keyring_files(keyring: str, key: str) -> list[Path]:
    path = Path(keyring)
    files = sorted(path.glob("*.gpg")) if path.is_dir() else [path]
    if not path.is_absolute() or not files or not all(f.is_file() for f in files):
        raise UserError(f"{key}: keyring '{keyring}' not found (an absolute path to a binary keyring "
                        "file or a directory of *.gpg files)", hint="e.g. /usr/share/keyrings/debian-archive-"
                        "keyring.gpg; Ubuntu recipes use the keyring shipped with imagefactory by default")
    armored = [f for f in files if f.read_bytes()[:5] == b"-----"]
    if armored:
        raise UserError(f"{key}: {armored[0]} is an ASCII-armored key",
                        hint="convert it once: gpg --dearmor < key.asc > key.gpg")
    return files


def verify(mirror: str, suite: str, keyring: str | None, *, key: str, required: bool) -> Suite | None:
    """The suite's Release file, verified with `keyring`: `InRelease` (signed inline: one
    atomic GET, as apt prefers - a busy archive can change between fetching `Release` and
    `Release.gpg`), else `Release` + `Release.gpg`. A missing suite is None unless `required`;
    a bad or missing signature is a UserError naming `key` (the recipe key of the keyring)."""
    base = f"{mirror.rstrip('/')}/dists/{suite}"
    try:
        inline = fetch(f"{base}/InRelease")
        release = None if inline is not None else fetch(f"{base}/Release")
    except BuildError as e:
        raise BuildError(f"mirror unreachable: {e.message.removeprefix('GET ')}",
                         hint="check source.mirror and the network/proxy settings") from None
    if inline is None and release is None:
        if required:
            raise UserError(f"source: {base}/Release not found", hint="check source.mirror and source.suite")
        return None
    if keyring is None:
        log.warning("%s: no keyring configured; apt's own trust store decides", base)
        return Suite(mirror, suite, release or _cleartext(inline or b""), "")
    files = _keyring_files(keyring, key)
    with tempfile.TemporaryDirectory(prefix="imagefactory-release-") as d:
        argv = ["gpgv", "--status-fd", "1"]
        for f in files:
            argv += ["--keyring", str(f)]
        if inline is not None:
            url = f"{base}/InRelease"
            (Path(d) / "InRelease").write_bytes(inline)
            argv += ["--output", str(Path(d) / "Release"), str(Path(d) / "InRelease")]
        else:
            url = f"{base}/Release"
            signature = fetch(f"{url}.gpg")
            if signature is None:
                raise UserError(f"{key}: {url} is not signed (no InRelease, no Release.gpg)",
                                hint="an unsigned mirror cannot be trusted; sign it (aptly publish) and "
                                     "name its key in source.keyring")
            assert release is not None
            (Path(d) / "Release").write_bytes(release)
            (Path(d) / "Release.gpg").write_bytes(signature)
            argv += [str(Path(d) / "Release.gpg"), str(Path(d) / "Release")]
        result = run(argv, check=False, quiet=True)
        signer = next((line.split()[2] for line in result.stdout.splitlines()
                       if line.startswith("[GNUPG:] VALIDSIG ")), "")
        if result.returncode != 0 or not signer:
            why = "BAD signature" if "[GNUPG:] BADSIG" in result.stdout else "signed by no key in the keyring"
            raise UserError(f"{key}: {url}: {why} ({keyring})",
                            hint="the mirror or the keyring is wrong; a site mirror that re-signs needs "
                                 "source.keyring pointing at the site's public key")
        signed = (Path(d) / "Release").read_bytes()
    log.info("%s: signature good (key %s)", url, signer)
    return Suite(mirror, suite, signed, signer)


def _cleartext(inline: bytes) -> bytes:
    """The signed text of a cleartext-signed InRelease (without verifying it)."""
    text = inline.decode(errors="replace")
    body = text.split("\n\n", 1)[1] if text.startswith("-----BEGIN PGP SIGNED MESSAGE-----") else text
    body = body.split("\n-----BEGIN PGP SIGNATURE-----", 1)[0]
    lines = (line[2:] if line.startswith("- ") else line for line in body.split("\n"))
    return ("\n".join(lines) + "\n").encode()


def check_suite(found: Suite, codename: str, components: tuple[str, ...]) -> None:
    """The Release file is for the recipe's release and serves its components."""
    fields = found.fields
    names = {fields.get("Codename", ""), fields.get("Suite", "")}
    if codename not in names and not any(n.startswith(f"{codename}-") for n in names):
        raise UserError(f"source.suite: {found.mirror} dists/{found.suite} is "
                        f"'{fields.get('Codename') or fields.get('Suite')}', not {codename}",
                        hint="the mirror path serves another release")
    served = set(fields.get("Components", "").split())
    # Debian's security archive names components 'updates/main'
    served |= {c.rsplit("/", 1)[-1] for c in served}
    missing = [c for c in components if c not in served]
    if missing:
        listed = ", ".join(sorted(fields.get("Components", "").split())) or "nothing"
        raise UserError(f"source.components: {found.mirror} {found.suite} does not serve "
                        f"{', '.join(missing)}", hint=f"it serves: {listed}")
