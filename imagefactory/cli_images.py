"""CLI commands of the image catalogue: `publish`, `keys generate` and `images ...`.

Thin: the work is in `imagefactory.catalogue`. Every catalogue command takes `--store NAME`
(default `$IMAGEFACTORY_STORE`, then `default_store` in imagefactory.yaml, then the embedded
`local` store in WORKDIR/catalogue). `images list --builds` lists the local *build* store
(WORKDIR/store, what `images list` showed before publishing existed).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from .catalogue.publish import ProgressFactory
    from .catalogue.stores import BlobStore
    from .cli import App


def _store(app: App) -> BlobStore:
    from .catalogue.stores import open_store

    return open_store(app.config(), app.workdir, getattr(app.args, "store", None))


def _public_key(app: App) -> Any:
    from .catalogue.signing import load_public_key

    return load_public_key(app.config().signing.public_key)


def _anchor(app: App) -> Any:
    """What a consumer trusts: the manifest key and the TUF root keys from the configuration,
    and the metadata it already trusts, kept in WORKDIR/trust."""
    from .catalogue.trust import Anchor

    return Anchor.from_config(app.config().signing, _public_key(app), app.workdir / "trust")


def _keys(app: App) -> Any:
    """What signs the catalogue's TUF metadata on this host."""
    from .catalogue.trust import Anchor, Keys

    private = _private_key(app)
    # the writer's memory of the catalogue's metadata is the consumer's (WORKDIR/trust)
    public = _public_key(app) if app.config().signing.public_key else private.public_key()
    memory = Anchor.from_config(app.config().signing, public, app.workdir / "trust")
    return Keys.from_config(app.config().signing, private, memory)


def _private_key(app: App) -> Any:
    from .catalogue.signing import load_private_key

    return load_private_key(app.config().signing.private_key)


@contextlib.contextmanager
def _transfers(app: App) -> Iterator[ProgressFactory | None]:
    """Byte progress bars on stderr (none with --json)."""
    if app.json:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=app.err, transient=True)

    def factory(label: str, total: int) -> Any:
        task = bar.add_task(label, total=total)
        return lambda n: bar.advance(task, n)

    with bar:
        yield factory


def _wide(app: App) -> Console:
    """The output console; piped or logged output is not squeezed into 80 columns."""
    return app.out if app.out.is_terminal else Console(width=200, highlight=False, soft_wrap=True)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024**2:.0f} MiB"


# --- publish, keys ------------------------------------------------------------------------------


def cmd_publish(app: App) -> int:
    from .catalogue.publish import find_build, publish

    build_dir = find_build(app.args.build, app.workdir)
    store = _store(app)
    key = _private_key(app)
    from .catalogue.signing import PUBLIC_KEY_ENV

    # With a configured public key, a key pair mismatch fails the publish, not the first consumer.
    public = _public_key(app) if app.config().signing.public_key or os.environ.get(PUBLIC_KEY_ENV) else None
    with _transfers(app) as progress:
        result = publish(build_dir, store, key, public, allow_untested=app.args.allow_untested,
                         progress=progress, keys=_keys(app))
    data = {"ref": result.ref, "store": result.store, "build": str(build_dir),
            "manifest": result.manifest_key,
            "unchanged": result.unchanged, "channels": result.channels, "files": result.files,
            "blob_bytes": result.blob_bytes, "uploaded_bytes": result.uploaded_bytes,
            "skipped_blobs": result.skipped_blobs, "seconds": result.seconds, "uploads": result.uploads}

    def human() -> None:
        verb = "already published" if result.unchanged else "published"
        app.out.print(f"[bold green]{verb}[/] {result.ref} to {store.describe()} "
                      f"(channels: {', '.join(result.channels)})")
        app.out.print(f"  {result.files} files, {_mib(result.blob_bytes)}; "
                      f"uploaded {_mib(result.uploaded_bytes)}, {result.skipped_blobs} blob(s) there, "
                      f"{result.seconds:.1f} s")

    app.emit(data, human)
    return 0


def cmd_keys_generate(app: App) -> int:
    from .catalogue.signing import generate, key_id, load_public_key

    out = Path(app.args.output) if app.args.output else app.workdir / "keys"
    private, public = generate(out, app.args.name, force=app.args.force)
    kid = key_id(load_public_key(str(public)))
    data = {"private_key": str(private), "public_key": str(public), "key_id": kid}

    def human() -> None:
        app.out.print(f"wrote {private} (0600, keep it secret) and {public} (key id {kid})")
        app.out.print("add to imagefactory.yaml:\n  signing:\n"
                      f"    public_key: {public}\n    private_key: {private}   # publishing hosts only")

    app.emit(data, human)
    return 0


# --- images -------------------------------------------------------------------------------------


def cmd_images_list(app: App) -> int:
    if app.args.builds:
        return _list_builds(app)
    from .catalogue.catalogue import Catalogue

    rows = Catalogue(_store(app)).entries()
    a = app.args
    if a.channel:
        rows = [r for r in rows if a.channel in r["channels"]]
    if a.os:
        want = a.os.replace(" ", "-").lower()
        rows = [r for r in rows if want in (r["os"]["family"], f"{r['os']['family']}-{r['os']['release']}")]
    if a.rke2 is not None:
        rows = [r for r in rows if r["rke2"] and str(r["rke2"]).startswith(a.rke2)]

    def human() -> None:
        t = Table()
        for col in ("name", "version", "channels", "os", "kernel", "rke2", "size", "tests", "STIG"):
            t.add_column(col, overflow="fold")  # wrap, never cut: a REVOKED must stay readable
        for r in rows:
            chans = " ".join(f"[bold]{c}[/]" if c in r["heads"] else c for c in r["channels"])
            if r["revoked"]:
                chans = f"[red]REVOKED[/] ({r['revoked']['reason']})"
            tests, stig = r["tests"], r["stig"]
            gate = stig and stig["gate"]
            t.add_row(r["name"], r["version"], chans, f"{r['os']['family']} {r['os']['release']}",
                      r["kernel"] or "", r["rke2"] or "", _mib(r["size"]),
                      "untested" if tests.get("ok") is None else f"{tests.get('passed')} ok" if tests["ok"]
                      else "[red]failed[/]",
                      "-" if stig is None else "gate ok" if gate else "no gate" if gate is None
                      else "[red]gate failed[/]")
        _wide(app).print(t)

    app.emit(rows, human)
    return 0


def _list_builds(app: App) -> int:
    rows = app.store().list()

    def human() -> None:
        t = Table("name", "version", "os", "size (MiB)", "tests", "sha256")
        for r in rows:
            t.add_row(r["name"], r["version"], f"{r['os']['family']} {r['os']['release']}",
                      f"{r['size'] / 1024**2:.0f}", "ok" if r["tests_ok"] else str(r["tests_ok"]),
                      r["sha256"][:16])
        app.out.print(t)

    app.emit(rows, human)
    return 0


def cmd_images_show(app: App) -> int:
    from .catalogue import signing
    from .catalogue.catalogue import Catalogue
    from .catalogue.manifest import manifest_key, parse_manifest

    store = _store(app)
    cat = Catalogue(store)
    name, version, _ = cat.resolve(app.args.image)
    raw, _ = cat.read_manifest(name, version)
    key = manifest_key(name, version)
    m = parse_manifest(raw, key)
    status = "not checked (no public key configured)"
    if app.config().signing.public_key or signing.PUBLIC_KEY_ENV in os.environ:
        try:
            signing.verify(raw, _public_key(app), key)
            status = "valid"
        except signing.SignatureError as e:
            status = f"INVALID: {e.message}"
    data = {"ref": m.ref, "store": store.name, "manifest_key": key, "signature": status, "manifest": raw}

    def human() -> None:
        app.out.print(f"[bold]{m.ref}[/] in {store.describe()}", markup=True)
        rows = [
            ("status", f"REVOKED: {m.revoked.reason} ({m.revoked.at})" if m.revoked else "usable"),
            ("signature", status), ("channels", ", ".join(m.channels)),
            ("os", f"{m.os.family} {m.os.release} {m.os.arch}, kernel {m.kernel or '-'}"),
            ("rke2 / zarf", f"{(m.rke2 or {}).get('version', '-')} / {(m.zarf or {}).get('version', '-')}"),
            ("built / published", f"{m.created} / {m.published}"),
            ("recipe", f"{m.recipe.get('name')} {m.recipe.get('digest')}"),
            ("image", f"{m.image.file} {m.image.format}, {_mib(m.image.size)}, "
                      f"virtual {(m.image.virtual_size or 0) / 1024**3:.1f} GiB"),
            ("sha256", m.image.sha256), ("sha512", m.image.sha512),
            ("tests", json.dumps(m.tests)),
            ("stig gate", json.dumps((m.stig or {}).get("gate"))),
            ("packages", f"{m.packages} (SBOM {(m.sbom or {}).get('file')})"),
        ]
        for k, v in rows:
            app.out.print(f"  {k:18} {v}", markup=False)
        t = Table("file", "role", "size", "blob")
        for f in m.files:
            t.add_row(f.path, f.role, str(f.size), f.key)
        _wide(app).print(t)

    app.emit(data, human)
    return 0


def cmd_images_pull(app: App) -> int:
    from .catalogue.catalogue import pull

    store = _store(app)
    with _transfers(app) as progress:
        img, path = pull(store, app.args.image, Path(app.args.output) if app.args.output else None,
                         _anchor(app), progress)
    m = img.manifest
    data = {"ref": m.ref, "store": store.name, "path": str(path), "size": m.image.size,
            "sha256": m.image.sha256, "sha512": m.image.sha512, "signature": "valid"}
    app.emit(data, lambda: app.out.print(f"[bold green]pulled[/] {m.ref} -> {path} "
                                         f"(signature and sha256/sha512 verified)"))
    return 0


def cmd_images_verify(app: App) -> int:
    from .catalogue.catalogue import verify_image

    store = _store(app)
    with _transfers(app) as progress:
        data = verify_image(store, app.args.image, _anchor(app), full=not app.args.quick,
                            progress=progress)
    app.emit(data, lambda: app.out.print(
        f"[bold green]verified[/] {data['ref']}: signature valid, not revoked, {len(data['files'])} files "
        + ("present with their sha256" if data["content_checked"] else "present with their size (--quick)")))
    return 0


def cmd_images_url(app: App) -> int:
    from .catalogue.catalogue import presigned_url
    from .catalogue.manifest import parse_duration

    expires = parse_duration(app.args.expires)
    img, url = presigned_url(_store(app), app.args.image, _anchor(app), expires)
    data = {"ref": img.ref, "url": url, "expires_seconds": int(expires.total_seconds()),
            "sha256": img.manifest.image.sha256, "sha512": img.manifest.image.sha512}
    app.emit(data, lambda: app.out.print(url, markup=False, soft_wrap=True))
    return 0


def cmd_images_terraform(app: App) -> int:
    from .catalogue.catalogue import verify_for_consumer
    from .catalogue.s3 import S3Store
    from .harvester.terraform import terraform_image

    store = _store(app)
    img = verify_for_consumer(store, app.args.image, _anchor(app))
    ca = app.args.ca_file or (store.cfg.ca_bundle if isinstance(store, S3Store) else None)
    tf = terraform_image(img.manifest, app.args.url_base, namespace=app.args.namespace,
                         storage_class=app.args.storage_class, resource=app.args.resource, cafile=ca)
    hcl = tf.hcl(img.ref)
    data = {"ref": img.ref, **tf.as_dict(), "hcl": hcl}
    app.emit(data, lambda: app.out.print(hcl, markup=False, soft_wrap=True, end=""))
    return 0


def cmd_images_promote(app: App) -> int:
    from .catalogue.catalogue import Catalogue

    m = Catalogue(_store(app), _keys(app)).promote(app.args.image, app.args.channel, _private_key(app),
                                                   _public_key(app))
    app.emit({"ref": m.ref, "channels": list(m.channels)},
             lambda: app.out.print(f"{m.ref}: channels {', '.join(m.channels)}"))
    return 0


def cmd_images_revoke(app: App) -> int:
    from .catalogue.catalogue import Catalogue

    m = Catalogue(_store(app), _keys(app)).revoke(app.args.image, app.args.reason, _private_key(app),
                                                  _public_key(app))
    assert m.revoked is not None
    app.emit({"ref": m.ref, "revoked": m.revoked.model_dump()},
             lambda: app.out.print(f"[bold red]revoked[/] {m.ref}: {m.revoked.reason if m.revoked else ''}"))
    return 0


def cmd_images_prune(app: App) -> int:
    from .catalogue.catalogue import Catalogue

    keys = None if app.args.dry_run else _keys(app)  # a dry run signs nothing
    r = Catalogue(_store(app), keys).prune(app.args.keep, app.args.name, dry_run=app.args.dry_run)
    data = {"deleted": r.deleted, "kept": r.kept, "protected": r.protected, "blobs_deleted": r.blobs_deleted,
            "bytes_freed": r.bytes_freed, "dry_run": app.args.dry_run}

    def human() -> None:
        verb = "would delete" if app.args.dry_run else "deleted"
        app.out.print(f"{verb} {len(r.deleted)} version(s): {', '.join(r.deleted) or '-'}")
        for ref, chans in r.protected.items():
            app.out.print(f"  kept {ref}: head of {', '.join(chans)}")
        if not app.args.dry_run:
            app.out.print(f"  {r.blobs_deleted} blob(s) removed, {_mib(r.bytes_freed)} freed")

    app.emit(data, human)
    return 0


def cmd_images_reindex(app: App) -> int:
    from .catalogue.catalogue import Catalogue

    idx = Catalogue(_store(app)).rebuild_index()
    n = sum(len(v) for v in idx["images"].values())
    app.emit({"images": len(idx["images"]), "versions": n},
             lambda: app.out.print(f"index rebuilt from {n} manifest(s)"))
    return 0


# --- parsers ------------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """Register `publish`, `keys` and `images` on the top-level subparsers."""
    def store_opt(p: Any) -> None:
        p.add_argument("--store", metavar="NAME", help="catalogue store (default: $IMAGEFACTORY_STORE, "
                       "default_store, or 'local' = WORKDIR/catalogue)")

    p = sub.add_parser("publish", help="publish a build to the image catalogue (signed, candidate channel)")
    p.add_argument("build", metavar="BUILD|RECIPE",
                   help="build directory, NAME:VERSION of a build, or a recipe (its newest build)")
    store_opt(p)
    p.add_argument("--allow-untested", action="store_true", help="publish a build made with --skip-tests")
    p.set_defaults(func=cmd_publish)

    k = sub.add_parser("keys", help="manifest signing keys")
    ks = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    s = ks.add_parser("generate", help="make an ed25519 key pair (NAME.key 0600, NAME.pub)")
    s.add_argument("-o", "--output", metavar="DIR", help="directory (default WORKDIR/keys)")
    s.add_argument("--name", default="imagefactory", help="file name stem (default imagefactory)")
    s.add_argument("--force", action="store_true", help="replace an existing key pair")
    s.set_defaults(func=cmd_keys_generate)

    i = sub.add_parser("images", help="the published image catalogue (and, with list --builds, local builds)")
    isub = i.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    s = isub.add_parser("list", help="published images (filters combine)")
    store_opt(s)
    s.add_argument("--channel", help="only versions in this channel")
    s.add_argument("--os", help="only this OS family or family-release (debian, ubuntu-22.04)")
    s.add_argument("--rke2", nargs="?", const="", metavar="VERSION",
                   help="only images with RKE2 (of a version starting with VERSION)")
    s.add_argument("--builds", action="store_true", help="list the local build store (WORKDIR/store) instead")
    s.set_defaults(func=cmd_images_list)
    for action, func, text in (("show", cmd_images_show, "an image's manifest, signature status and files"),
                               ("pull", cmd_images_pull, "download a verified image (resumable)"),
                               ("verify", cmd_images_verify, "check signature, revocation and every blob"),
                               ("url", cmd_images_url, "a presigned, time-limited download URL")):
        s = isub.add_parser(action, help=text)
        s.add_argument("image", metavar="IMAGE", help="NAME, NAME:VERSION or NAME@CHANNEL")
        store_opt(s)
        s.set_defaults(func=func)
        if action == "pull":
            s.add_argument("-o", "--output", metavar="PATH",
                           help="file or directory (default ./NAME-VERSION.FORMAT)")
        if action == "verify":
            s.add_argument("--quick", action="store_true",
                           help="sizes only, do not download and hash the blobs")
        if action == "url":
            s.add_argument("--expires", default="24h", help="validity: 30m, 24h, 7d (max 7d; default 24h)")
    s = isub.add_parser("terraform", help="a verified image as Terraform's harvester_image resource (HCL)")
    s.add_argument("image", metavar="IMAGE", help="NAME, NAME:VERSION or NAME@CHANNEL")
    s.add_argument("--url-base", required=True, metavar="URL",
                   help="where the store's blobs/ prefix is readable by Harvester without a signature "
                        "(HEAD and GET), e.g. https://minio.site.example/catalogue")
    s.add_argument("--namespace", default="default", help="Harvester namespace (default: default)")
    s.add_argument("--storage-class", help="storage_class_name for the image (default: Harvester's)")
    s.add_argument("--resource", help="Terraform resource name (default: from the image name)")
    s.add_argument("--ca-file", help="CA bundle to verify the URL with (default: the store's)")
    store_opt(s)
    s.set_defaults(func=cmd_images_terraform)
    s = isub.add_parser("promote", help="add a version to a channel (re-signs the manifest)")
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("--channel", required=True, help="e.g. stable")
    store_opt(s)
    s.set_defaults(func=cmd_images_promote)
    s = isub.add_parser("revoke", help="revoke a version: pull, url and uploads refuse it")
    s.add_argument("image", metavar="NAME:VERSION")
    s.add_argument("--reason", required=True)
    store_opt(s)
    s.set_defaults(func=cmd_images_revoke)
    s = isub.add_parser("prune", help="delete old versions (never a channel head) and unreferenced blobs")
    s.add_argument("--keep", type=int, required=True, metavar="N", help="newest versions to keep per image")
    s.add_argument("--name", help="only this image")
    s.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    store_opt(s)
    s.set_defaults(func=cmd_images_prune)
    s = isub.add_parser("reindex", help="rebuild index.json and index.html from the manifests")
    store_opt(s)
    s.set_defaults(func=cmd_images_reindex)
