"""Publish a build: build directory -> blobs (image, SBOM, STIG reports and checklists, junit,
build log) -> signed manifest -> catalogue index and page.

What may be published: a finished build directory (`<workdir>/builds/<recipe>/<build-id>/`, a
local-store reference `name[:version]` or a recipe name meaning its newest finished build). A
build whose tests or STIG gate failed is refused; an untested one (`--skip-tests`) only with
`allow_untested`. Versions are immutable: publishing a version again with the same image is a
no-op that uploads nothing (its channels and revocation are kept); with another image it is
refused.

Order (see `catalogue`): sign the manifest first (no key, no upload), upload and verify every
blob, then commit under the catalogue lock; if a concurrent prune removed a blob in between, it is
uploaded again and the commit retried.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import BuildError, UserError
from . import sbom, signing, trust
from .catalogue import Catalogue, MissingBlobs
from .manifest import DEFAULT_CHANNEL, KIND, SCHEMA, FileRef, blob_key, manifest_key, now, parse_manifest
from .stores import BlobStore, NotFound, Progress

ProgressFactory = Callable[[str, int], Progress]  # (label, total bytes) -> advance callback

# Files of a build directory that are published, with their role and media type.
PUBLISHED_FILES: dict[str, tuple[str, str]] = {
    "junit.xml": ("junit", "application/xml"),
    "build.log": ("build-log", "text/plain; charset=utf-8"),
    "stig-report.json": ("stig-report", "application/json"),
    "stig-report.html": ("stig-report", "text/html; charset=utf-8"),
    "stig-results.json": ("stig-results", "application/json"),
    "stig-offline.json": ("stig-results", "application/json"),
    "openscap-arf.xml": ("openscap", "application/xml"),
    "openscap-report.html": ("openscap", "text/html; charset=utf-8"),
    "files.zst": ("file-index", "application/zstd"),  # builders/inplace.py: the next build's base
}
CHECKLIST_TYPES = {".cklb": "application/json", ".ckl": "application/xml"}
IMAGE_TYPES = {"qcow2": "application/x-qemu-disk", "raw": "application/octet-stream"}
REQUIRED = ("name", "version", "created", "os.family", "os.release", "os.arch", "image.file",
            "image.format", "image.size", "image.sha256", "image.sha512")


@dataclass
class PublishResult:
    ref: str
    store: str
    manifest_key: str
    unchanged: bool
    channels: list[str]
    files: int
    blob_bytes: int  # total size of the image's blobs
    uploaded_bytes: int = 0  # blob bytes actually sent in this run
    skipped_blobs: int = 0  # blobs that were already in the store
    seconds: float = 0.0
    uploads: list[dict[str, Any]] = field(default_factory=list)


def find_build(spec: str, workdir: Path) -> Path:
    """A build directory from a path, `name:version`, or a recipe name (its newest build)."""
    p = Path(spec)
    if p.is_dir():
        if not (p / "manifest.json").is_file():
            raise UserError(f"{p}: not a build directory (no manifest.json)")
        return p
    builds = workdir / "builds"
    name, _, version = spec.partition(":")
    if version:
        d = builds / name / version
        if (d / "manifest.json").is_file():
            return d
        from ..store.local import LocalStore

        return LocalStore(workdir / "store").resolve(spec).parent
    finished = sorted(d for d in (builds / name).glob("*") if d.is_dir() and "." in d.name
                      and not d.name.endswith((".partial", ".failed")) and (d / "manifest.json").is_file()) \
        if (builds / name).is_dir() else []
    if not finished:
        raise UserError(f"{spec}: no finished build of that recipe in {builds / name}",
                        hint="pass a build directory or NAME:VERSION, or build it first")
    return finished[-1]


def read_build_manifest(build_dir: Path) -> dict[str, Any]:
    path = build_dir / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the build manifest: {e}") from None
    if not isinstance(m, dict):
        raise UserError(f"{path}: the build manifest is not a JSON object")
    for dotted in REQUIRED:
        cur: Any = m
        for part in dotted.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is None:
            raise UserError(f"{path}: {dotted}: missing",
                            hint="not a manifest written by 'imagefactory build'")
    return m


def check_publishable(bm: dict[str, Any], where: Path, allow_untested: bool) -> None:
    tests = bm.get("tests") or {}
    if tests.get("ok") is False:
        raise UserError(f"{where}: the image failed its boot tests; it cannot be published")
    if tests.get("ok") is None and not allow_untested:
        raise UserError(f"{where}: the image was not boot-tested ({tests.get('skipped', 'no test results')})",
                        hint="test it ('imagefactory test'), or publish with --allow-untested")
    gate = ((bm.get("stig") or {}).get("report") or {}).get("gate")
    if isinstance(gate, dict) and gate.get("passed") is False:
        raise UserError(f"{where}: the image failed its STIG gate; it cannot be published",
                        hint="see stig-report.html in the build directory")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()


def collect_files(build_dir: Path, bm: dict[str, Any], sbom_path: Path) -> list[tuple[FileRef, Path]]:
    """(reference, local path) of every file to publish; the image's digest comes from the build
    manifest (the upload verifies it), the small files are hashed here."""
    img = bm["image"]
    image_path = build_dir / str(img["file"])
    if not image_path.is_file():
        raise UserError(f"{image_path}: the image file named by the manifest is missing")
    out = [(FileRef(path=str(img["file"]), role="image", size=int(img["size"]), sha256=str(img["sha256"]),
                    media_type=IMAGE_TYPES.get(str(img["format"]), "application/octet-stream")), image_path),
           (FileRef(path=sbom.FILE_NAME, role="sbom", media_type=sbom.MEDIA_TYPE,
                    size=sbom_path.stat().st_size, sha256=_sha256(sbom_path)), sbom_path)]
    for name, (role, media) in PUBLISHED_FILES.items():
        p = build_dir / name
        if p.is_file():
            out.append((FileRef(path=name, role=role, media_type=media, size=p.stat().st_size,
                                sha256=_sha256(p)), p))
    for p in sorted((build_dir / "checklists").glob("*")) if (build_dir / "checklists").is_dir() else []:
        if p.is_file() and p.suffix in CHECKLIST_TYPES:
            out.append((FileRef(path=f"checklists/{p.name}", role="stig-checklist",
                                media_type=CHECKLIST_TYPES[p.suffix], size=p.stat().st_size,
                                sha256=_sha256(p)), p))
    return out


def _inputs(bm: dict[str, Any]) -> dict[str, Any] | None:
    """The lock entry's key and digest, and the build key with its named inputs (the nightly plan
    compares a recipe's key with the newest published one)."""
    inputs = bm.get("inputs")
    out: dict[str, Any] = {}
    if isinstance(inputs, dict):
        out["key"] = inputs.get("key")
        out["digest"] = hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":"))
                                       .encode()).hexdigest()
    bk = bm.get("build_key")
    if isinstance(bk, dict) and bk.get("key"):
        out["build_key"] = bk["key"]
        out["build_inputs"] = bk.get("inputs") or {}
    return out or None


def sbom_packages(doc: dict[str, Any]) -> dict[str, str]:
    """OS packages (deb/rpm purls) of a CycloneDX SBOM: name -> version."""
    out: dict[str, str] = {}
    for c in doc.get("components") or []:
        purl = str(c.get("purl") or "")
        if purl.startswith(("pkg:deb/", "pkg:rpm/")) and c.get("name"):
            out[str(c["name"])] = str(c.get("version") or "")
    return out


def changelog(previous: dict[str, str] | None, previous_ref: str | None,
              bm: dict[str, Any]) -> dict[str, Any]:
    """What changed in the OS packages since the previous published image of the recipe."""
    now_pkgs = {str(p["name"]): str(p["version"]) for p in bm.get("packages") or []}
    if previous is None:
        return {"previous": None, "upgraded": [], "added": [], "removed": [], "note": "first published image"}
    upgraded = [{"name": n, "from": previous[n], "to": v} for n, v in sorted(now_pkgs.items())
                if n in previous and previous[n] != v]
    return {
        "previous": previous_ref,
        "upgraded": upgraded,
        "added": [{"name": n, "version": v} for n, v in sorted(now_pkgs.items()) if n not in previous],
        "removed": [{"name": n, "version": v} for n, v in sorted(previous.items()) if n not in now_pkgs],
    }


def _previous_packages(cat: Catalogue, name: str, version: str) -> tuple[dict[str, str] | None, str | None]:
    """Packages of the newest non-revoked published version of `name` older than `version`."""
    versions = [v for v in cat.index().get("images", {}).get(name, [])
                if not v.get("revoked") and str(v["version"]) < version]
    if not versions:
        return None, None
    prev = str(max(versions, key=lambda v: str(v["version"]))["version"])
    raw, _ = cat.read_manifest(name, prev)
    sbom_ref = next((f for f in raw.get("files") or [] if f.get("role") == "sbom"), None)
    if sbom_ref is None:
        return None, f"{name}:{prev}"
    try:
        data, _ = cat.store.get_bytes(blob_key(str(sbom_ref["sha256"])))
    except NotFound:  # pruned or damaged: no changelog rather than no publish
        return None, f"{name}:{prev}"
    return sbom_packages(json.loads(data)), f"{name}:{prev}"


def _disk(bm: dict[str, Any]) -> dict[str, Any] | None:
    """The disk facts a later `build --base NAME@CHANNEL` checks: seeded, same settings, its index."""
    disk: dict[str, Any] = bm["disk"] if isinstance(bm.get("disk"), dict) else {}
    reproducible = disk.get("reproducible") or {}
    if not disk.get("files_sha256") or not reproducible.get("seed"):
        return None
    settings = ((bm.get("recipe") or {}).get("merged") or {}).get("disk") or {}
    return {"seed": reproducible["seed"], "epoch": reproducible.get("epoch"),
            "files_sha256": disk["files_sha256"], "base": disk.get("base"),
            "settings": {k: settings.get(k) for k in ("size", "firmware", "partition_table")}}


def make_manifest(bm: dict[str, Any], files: list[FileRef]) -> dict[str, Any]:
    """The published manifest (unsigned) of a build manifest; see `manifest` for the fields."""
    paths = {f.path for f in files}
    stig = bm.get("stig") or {}
    report = stig.get("report") or {}
    stig_info = None
    if stig:
        stig_info = {
            "gate": report.get("gate"),
            "benchmarks": report.get("benchmarks", []),
            "report_json": "stig-report.json" if "stig-report.json" in paths else None,
            "report_html": "stig-report.html" if "stig-report.html" in paths else None,
            "checklists": sorted(f.path for f in files if f.role == "stig-checklist"),
            "openscap": (stig.get("openscap") or {}).get("ran"),
        }
    tests = bm.get("tests") or {}
    sbom_file = next(f for f in files if f.role == "sbom")
    image = {k: bm["image"].get(k) for k in ("file", "format", "compression", "size", "virtual_size",
                                             "sha256", "sha512")}
    return {
        "kind": KIND, "schema": SCHEMA,
        "name": bm["name"], "version": bm["version"], "build_id": bm.get("build_id", bm["version"]),
        "created": bm["created"], "published": now(),
        "os": {k: bm["os"][k] for k in ("family", "release", "arch")},
        "kernel": bm.get("kernel"),
        # what a consumer must boot it with (Harvester VMs: EFI, Secure Boot + SMM)
        "boot": ({"firmware": bm["disk"].get("firmware"), "secure_boot": bool(bm["disk"].get("secure_boot"))}
                 if isinstance(bm.get("disk"), dict) and bm["disk"].get("firmware") else None),
        "disk": _disk(bm),
        "rke2": {"version": bm["rke2"]["version"]} if bm.get("rke2") else None,
        "zarf": {"version": bm["zarf"]["version"]} if bm.get("zarf") else None,
        "recipe": {"name": (bm.get("recipe") or {}).get("name", bm["name"]),
                   "digest": (bm.get("recipe") or {}).get("digest")},
        "inputs": _inputs(bm),
        "packages": len(bm.get("packages") or []),
        "image": {**image, "key": blob_key(str(image["sha256"]))},
        "build": {"imagefactory_version": bm.get("imagefactory_version"), "builder": bm.get("builder"),
                  "build_seconds": bm.get("build_seconds"), "source": bm.get("source")},
        "tests": {k: tests[k] for k in ("ok", "passed", "failed", "errors", "skipped", "suites",
                                        "accelerator") if k in tests},
        "stig": stig_info,
        "sbom": {"format": "CycloneDX", "spec_version": sbom.SPEC_VERSION, "file": sbom_file.path,
                 "components": None},
        "files": [f.model_dump() for f in files],
        "channels": [DEFAULT_CHANNEL],
        "revoked": None,
    }


def publish(build_dir: Path, store: BlobStore, private_key: Ed25519PrivateKey,
            public_key: Ed25519PublicKey | None = None, *, allow_untested: bool = False,
            progress: ProgressFactory | None = None, keys: trust.Keys | None = None) -> PublishResult:
    """Publish one build directory to `store`; see the module docstring."""
    start = time.monotonic()
    bm = read_build_manifest(build_dir)
    check_publishable(bm, build_dir, allow_untested)
    cat = Catalogue(store, keys or trust.Keys.single(private_key))
    store.prepare()
    key = manifest_key(str(bm["name"]), str(bm["version"]))
    existing = _existing(store, key, str(bm["image"]["sha256"]))
    with tempfile.TemporaryDirectory(prefix="imagefactory-publish-") as tmp:
        if existing is not None:
            raw = existing  # same version, same image: nothing to upload, nothing to re-sign
            files = [(f, Path()) for f in parse_manifest(raw, key).files]
        else:
            sbom_path = Path(tmp) / sbom.FILE_NAME
            doc = sbom.sbom_json(bm)
            sbom_path.write_bytes(doc)
            files = collect_files(build_dir, bm, sbom_path)
            unsigned = make_manifest(bm, [f for f, _ in files])
            previous, previous_ref = _previous_packages(cat, str(bm["name"]), str(bm["version"]))
            unsigned["changelog"] = changelog(previous, previous_ref, bm)
            unsigned["sbom"]["components"] = len(json.loads(doc).get("components", []))
            raw = signing.sign(unsigned, private_key)
            # A key pair mismatch is found here, not by the first consumer.
            signing.verify(raw, public_key or private_key.public_key(), "the new manifest")
        m = parse_manifest(raw, key)
        result = PublishResult(m.ref, store.name, key, existing is not None, list(m.channels), len(files),
                               sum(f.size for f, _ in files))
        todo = [(f, p) for f, p in files if existing is None]
        missing: list[str] = []
        for _attempt in range(3):
            for f, p in todo:
                # the image's hash is the build's: the upload hashes it again only if it changed since
                identity = bm["image"].get("identity") if f.role == "image" else None
                t = store.put_file(f.key, p, sha256=f.sha256, size=f.size, content_type=f.media_type,
                                   progress=progress(f"upload {f.path}", f.size) if progress else None,
                                   identity=identity if isinstance(identity, dict) else None)
                result.uploaded_bytes += t.sent
                result.skipped_blobs += t.skipped
                result.uploads.append({"path": f.path, "key": f.key, "size": f.size, "sent": t.sent,
                                       "skipped": t.skipped})
            try:
                committed = cat.commit(raw)
                break
            except MissingBlobs as e:
                if existing is not None:
                    raise UserError(f"{m.ref} is published but blobs are missing: {', '.join(e.keys)}",
                                    hint="prune removed them or the store was damaged; run 'images prune' "
                                         "and publish a new build") from None
                # A prune ran between our upload and the commit: upload those again.
                missing = e.keys
                todo = [(f, p) for f, p in files if f.key in missing]
        else:
            raise MissingBlobs(missing)
    result.unchanged = committed.unchanged
    if committed.unchanged:
        try:
            data, _ = store.get_bytes(key)
            result.channels = list(parse_manifest(json.loads(data), key).channels)
        except NotFound:
            pass
    result.seconds = round(time.monotonic() - start, 2)
    return result


def _existing(store: BlobStore, key: str, sha256: str) -> dict[str, Any] | None:
    """The published manifest of this version if it holds the same image, else None."""
    try:
        data, _ = store.get_bytes(key)
    except NotFound:
        return None
    try:
        raw = json.loads(data)
    except ValueError:
        raise BuildError(f"{key}: the published manifest is not valid JSON",
                         hint="it was damaged; delete it and publish again") from None
    m = parse_manifest(raw, key)
    if m.image.sha256 != sha256:
        raise UserError(f"{m.ref} is already published with another image (sha256 {m.image.sha256})",
                        hint="versions are immutable; build again for a new version")
    return dict(raw)
