"""CLI commands of delta delivery: `site add|list|show|remove|plan|export|ack` at the factory,
`site init|import` at the site. Thin: the work is in `imagefactory.delivery`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ByteSize, TypeAdapter, ValidationError
from rich.table import Table

from .delivery.sites import check_site_name
from .errors import ExitStatus, UserError

if TYPE_CHECKING:
    from .cli import App
    from .delivery.chunks import ChunkedImage
    from .delivery.sites import Plan

_SIZE: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)  # the recipes' size syntax: 150MB, 64MiB, 1000


def parse_bytes(text: str, what: str) -> int:
    try:
        return int(_SIZE.validate_python(text.strip()))
    except ValidationError:
        raise UserError(f"{what}: '{text}' is not a size", hint="e.g. 150MB, 64MiB, 1000000") from None


BITS = {"bit": 1, "kbit": 1000, "mbit": 1000**2, "gbit": 1000**3}


def parse_rate(text: str) -> float:
    """A link rate in bytes/s: 14.4kbit, 1Mbit, 2MB, 512KiB (an optional /s)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)(?:/s)?\s*", text)
    unit = m.group(2).lower() if m else ""
    if m and unit in BITS:
        return float(m.group(1)) * BITS[unit] / 8
    return float(parse_bytes(text.removesuffix("/s"), "--rate"))


def _site_store(app: App) -> Any:
    """The site's own store (site side): a directory (--dir), or a configured store (--site-store)
    with the directory the disks go to (--images)."""
    from .catalogue.stores import open_store
    from .delivery.sitestore import SiteStore

    a = app.args
    if getattr(a, "site_store", None):
        if not a.images_dir:
            raise UserError("--site-store needs --images DIR (where the site's disks are written)")
        return SiteStore(open_store(app.config(), app.workdir, a.site_store), Path(a.images_dir))
    if not a.dir:
        raise UserError("name the site's store: --dir DIR, or --site-store NAME --images DIR")
    return SiteStore.directory(Path(a.dir))


def _store_of(app: App, location: str) -> Any:
    """The store a site record names (factory side): a store configured in imagefactory.yaml, or
    a directory (a mounted disk)."""
    from .catalogue.stores import LocalDirStore, open_store, store_configs

    if location in store_configs(app.config(), app.workdir):
        return open_store(app.config(), app.workdir, location)
    path = Path(location)
    if path.is_absolute() and path.is_dir():
        return LocalDirStore(f"site {app.args.site}", path)
    raise UserError(f"site {app.args.site}: its store '{location}' is neither a configured store nor a "
                    "mounted directory", hint="configure the site's S3 server under 'stores' in "
                    "imagefactory.yaml and 'site add' it with that name (or use 'site export')")


def _read_key(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"--site-key {path}: cannot read it: {e.strerror}",
                        hint="the site.pub 'site init' wrote (SITE_DIR/site-key/site.pub)") from None


def _human(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _indexes(app: App, refs: list[str]) -> tuple[list[ChunkedImage], list[ChunkedImage]]:
    """(the requested images' chunk indexes, made now where missing; the indexes of what the
    site acknowledged)."""
    from .cli_images import _anchor, _private_key, _public_key, _store
    from .delivery.chunks import chunk_published, read_index
    from .delivery.sites import Sites

    site = Sites(app.workdir).get(app.args.site)
    store = _store(app)
    public = _public_key(app)
    cache, scratch = app.workdir / "cache" / "images", app.workdir / "tmp" / "chunks"
    anchor = _anchor(app)
    wanted = [chunk_published(store, ref, lambda: _private_key(app), anchor, cache, scratch) for ref in refs]
    held = []
    for ref in site.acknowledged:
        name, _, version = ref.partition(":")
        idx = read_index(store, name, version, public)
        if idx is None:
            app.err.print(f"warning: {ref}, which site {site.name} holds, has no chunk index in "
                          f"{store.describe()}: the plan does not count its chunks as held")
        else:
            held.append(idx)
    return wanted, held


def _plan(app: App) -> Plan:
    from .delivery.sites import Sites, plan

    wanted, held = _indexes(app, app.args.images)
    return plan(Sites(app.workdir).get(app.args.site), wanted, held, _trust_bytes(app, wanted))


def _trust_bytes(app: App, wanted: list[ChunkedImage]) -> int:
    from .catalogue.trust import site_metadata
    from .cli_images import _store

    return sum(len(v) for v in site_metadata(_store(app), [(i.name, i.version) for i in wanted]).values())


def cmd_site_add(app: App) -> int:
    from .delivery.sites import Sites

    key = _read_key(app.args.site_key) if app.args.site_key else None
    site = Sites(app.workdir).add(app.args.site, app.args.store_location, key)
    app.emit(site.as_dict(), lambda: app.out.print(f"site {site.name} added (store {site.store})"))
    return 0


def cmd_site_list(app: App) -> int:
    from .delivery.sites import Sites

    sites = Sites(app.workdir).list()

    def human() -> None:
        t = Table("site", "store", "images held (acknowledged)", "acknowledged at")
        for s in sites:
            t.add_row(s.name, s.store, " ".join(s.acknowledged) or "-", s.acknowledged_at or "never")
        (app.out if app.out.is_terminal else _wide(app)).print(t)

    app.emit([s.as_dict() for s in sites], human)
    return 0


def _wide(app: App) -> Any:
    from .cli_images import _wide as wide

    return wide(app)


def cmd_site_show(app: App) -> int:
    from .delivery.sites import Sites

    s = Sites(app.workdir).get(app.args.site)

    def human() -> None:
        app.out.print(f"site {s.name}: store {s.store}, added {s.created}")
        app.out.print(f"  holds (acknowledged {s.acknowledged_at or 'never'}): "
                      f"{', '.join(s.acknowledged) or 'nothing'}")
        app.out.print("  acknowledgements: " + ("signed by the site's key" if s.site_public_key else
                                                "unverified (no site key: 'site ack ... --site-key')"))

    app.emit(s.as_dict(), human)
    return 0


def cmd_site_remove(app: App) -> int:
    from .delivery.sites import Sites

    Sites(app.workdir).remove(app.args.site)
    app.emit({"removed": app.args.site}, lambda: app.out.print(f"site {app.args.site} removed"))
    return 0


def cmd_site_plan(app: App) -> int:
    p = _plan(app)
    budget = parse_bytes(app.args.max_bytes, "--max-bytes") if app.args.max_bytes else None
    data = p.as_dict() | {"max_bytes": budget, "within_budget": budget is None or p.bytes <= budget}

    def human() -> None:
        t = Table("image", "to send", "new chunks", "whole image", "disk")
        for i in p.images:
            t.add_row(i.ref, _human(i.bytes), str(i.new_chunks), _human(i.stored_bytes), _human(i.disk_bytes))
        _wide(app).print(t)
        app.out.print(f"site {p.site} (holds {', '.join(p.base) or 'nothing'}): {_human(p.bytes)} "
                      f"({p.bytes} bytes) in {len(p.missing)} chunks plus indexes and "
                      f"{_human(p.trust_bytes)} of the catalogue's TUF metadata")

    app.emit(data, human)
    if budget is not None and p.bytes > budget:
        app.err.print(f"error: the plan needs {p.bytes} bytes, over the budget of {budget} (--max-bytes)")
        return 1
    return 0


def cmd_site_export(app: App) -> int:
    from .cli_images import _private_key, _store, _transfers
    from .delivery.bundles import export_bundle

    p = _plan(app)
    out = Path(app.args.output)
    with _transfers(app) as progress:
        advance = progress(f"export to {out.name}", sum(c.csize for c in p.missing.values())) \
            if progress else None
        size = export_bundle(p, _store(app), _private_key(app), out, advance)
    data = p.as_dict() | {"bundle": str(out), "bundle_bytes": size}
    app.emit(data, lambda: app.out.print(f"wrote {out}: {_human(size)} for site {p.site} "
                                         f"({', '.join(i.ref for i in p.images)}; {len(p.missing)} chunks)"))
    return 0


def cmd_site_sync(app: App) -> int:
    from .cli_images import _private_key, _store, _transfers
    from .delivery.sites import Sites, plan
    from .delivery.sync import push, read_acknowledgement

    sites = Sites(app.workdir)
    site = sites.get(app.args.site)
    target = _store_of(app, site.store)
    read_acknowledgement(sites, site, target)  # the factory's view: what the site acknowledged
    wanted, held = _indexes(app, app.args.images)
    p = plan(sites.get(site.name), wanted, held, _trust_bytes(app, wanted))
    rate = parse_rate(app.args.rate) if app.args.rate else None
    try:
        with _transfers(app) as progress:
            advance = progress(f"sync to {site.name}", sum(c.csize for c in p.missing.values())) \
                if progress else None
            r = push(p, _store(app), target, _private_key(app), rate, advance)
    except KeyboardInterrupt:
        # Each chunk is one PUT (whole or absent) and the delivery that makes anything visible
        # is written last: what was sent stays, for the next run to skip.
        app.err.print(f"[red]interrupted[/]: no delivery was written, so site {site.name} makes nothing "
                      "visible; the chunks already sent stay in its store and the same 'site sync' "
                      "resumes from them")
        return int(ExitStatus.INTERRUPTED)
    data = p.as_dict() | {"sent_bytes": r.sent_bytes, "chunks_sent": r.chunks_sent,
                          "chunks_present": r.chunks_present, "delivery": r.delivery, "seconds": r.seconds}
    app.emit(data, lambda: app.out.print(
        f"synced {', '.join(r.images)} to site {site.name}: {_human(r.sent_bytes)} sent "
        f"({r.chunks_sent} chunks; {r.chunks_present} were there), {r.seconds:.0f} s; the site makes "
        f"them visible with 'imagefactory site apply'"))
    return 0


def cmd_site_apply(app: App) -> int:
    from .delivery.sync import apply

    r = apply(_site_store(app))
    app.emit({"site": r.site, "applied": r.applied, "images": r.images},
             lambda: app.out.print(f"site {r.site}: {len(r.applied)} deliveries applied; visible: "
                                   f"{', '.join(r.images) or 'nothing new'}"))
    return 0


def cmd_site_ack(app: App) -> int:
    import json

    from .delivery.sites import Sites

    path = Path(app.args.acknowledgement)
    try:
        ack = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the acknowledgement: {e}") from None
    key = _read_key(app.args.site_key) if app.args.site_key else None
    site = Sites(app.workdir).acknowledge(app.args.site, ack if isinstance(ack, dict) else {}, key)
    held = ", ".join(site.acknowledged) or "nothing"
    app.emit(site.as_dict(), lambda: app.out.print(
        f"site {site.name} holds {held} (acknowledged {site.acknowledged_at})"))
    return 0


def cmd_site_init(app: App) -> int:

    from datetime import timedelta

    from .catalogue.manifest import parse_duration

    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise UserError(f"{path}: cannot read {what}: {e.strerror}") from None

    pem = read(app.args.public_key, "the factory's public key")
    roots = [read(k, "a root public key") for k in app.args.root_key or []]
    grace = parse_duration(app.args.max_expired, maximum=None) if app.args.max_expired else timedelta(0)
    site = _site_store(app)
    rec = site.init(check_site_name(app.args.site), pem, roots, app.args.root_threshold, grace)
    where = app.args.dir or app.args.site_store
    public = site.key_file.with_suffix(".pub")

    def human() -> None:
        app.out.print(f"{where} is now the store of site {rec['name']}")
        app.out.print(f"carry {public} to the factory with the first acknowledgement: its "
                      "acknowledgements are signed with the site's key")

    app.emit({"site": rec["name"], "store": where, "site_public_key": str(public)}, human)
    return 0


def cmd_site_upload(app: App) -> int:
    """A disk the site made visible, into the site's own Harvester (site side)."""
    from .cli_clusters import _api, _uploader
    from .cli_images import _transfers
    from .delivery.sitestore import uploadable

    m, disk = uploadable(_site_store(app), app.args.image)
    api = _api(app, app.args.namespace or app.config().harvester.image_namespace)
    with _transfers(app) as progress:
        result = _uploader(app, api, progress).upload_file(m, disk, replace=app.args.replace)
    verb = "already in" if result.reused else "uploaded to"
    app.emit(result.as_dict(), lambda: app.out.print(
        f"[bold green]{result.ref}[/] {verb} Harvester as {result.namespace}/{result.name} "
        f"(the site's verified disk, {result.seconds:.1f} s)"))
    return 0


def cmd_site_import(app: App) -> int:
    from .delivery.bundles import import_bundle

    r = import_bundle(Path(app.args.bundle), _site_store(app))
    data = {"site": r.site, "images": r.images, "chunks_added": r.chunks_added,
            "chunks_present": r.chunks_present, "acknowledgement": str(r.ack)}

    def human() -> None:
        app.out.print(f"site {r.site}: {', '.join(r.images)} verified and visible "
                      f"({r.chunks_added} chunks added, {r.chunks_present} already here)")
        app.out.print(f"carry {r.ack} back to the factory: imagefactory site ack {r.site} FILE")

    app.emit(data, human)
    return 0


def add_parsers(sub: Any) -> None:
    """Register `site` on the top-level subparsers."""
    def store_opt(p: Any) -> None:
        p.add_argument("--store", metavar="NAME", help="catalogue store (default: $IMAGEFACTORY_STORE, "
                       "default_store, or 'local' = WORKDIR/catalogue)")

    s = sub.add_parser("site", help="disconnected sites: what they hold, deltas, bundles")
    ss = s.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    p = ss.add_parser("add", help="register a site (factory side)")
    p.add_argument("site", metavar="NAME")
    p.add_argument("--store", dest="store_location", required=True, metavar="LOCATION",
                   help="where the site keeps its store (e.g. /media/usb/site-a or its MinIO URL)")
    p.add_argument("--site-key", metavar="FILE", help="the site's public key (site-key/site.pub of "
                   "'site init'): its acknowledgements must be signed by it")
    p.set_defaults(func=cmd_site_add)
    p = ss.add_parser("list", help="registered sites and what they acknowledged holding")
    p.set_defaults(func=cmd_site_list)
    for action, func, text in (("show", cmd_site_show, "one site"),
                               ("remove", cmd_site_remove, "forget a site (its store is not touched)")):
        p = ss.add_parser(action, help=text)
        p.add_argument("site", metavar="NAME")
        p.set_defaults(func=func)
    for action, func, text in (("plan", cmd_site_plan, "bytes a site needs for images, given what it holds"),
                               ("export", cmd_site_export, "write exactly that delta to a bundle file")):
        p = ss.add_parser(action, help=text)
        p.add_argument("site", metavar="SITE")
        p.add_argument("images", metavar="IMAGE", nargs="+", help="NAME, NAME:VERSION or NAME@CHANNEL")
        store_opt(p)
        p.set_defaults(func=func)
        if action == "plan":
            p.add_argument("--max-bytes", metavar="SIZE", help="fail (exit 1) when the plan needs more")
        else:
            p.add_argument("-o", "--output", required=True, metavar="FILE", help="the bundle to write")
    p = ss.add_parser("ack", help="record what a site acknowledged holding (its acknowledgement.json)")
    p.add_argument("site", metavar="SITE")
    p.add_argument("acknowledgement", metavar="FILE")
    p.add_argument("--site-key", metavar="FILE", help="the site's public key (site-key/site.pub of "
                   "'site init'), carried back with its first acknowledgement; recorded, then every "
                   "acknowledgement must be signed by it")
    p.set_defaults(func=cmd_site_ack)
    p = ss.add_parser("sync", help="send a delta straight into the site's store (resumable)")
    p.add_argument("site", metavar="SITE")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="NAME, NAME:VERSION or NAME@CHANNEL")
    p.add_argument("--rate", metavar="RATE", help="average upload cap, e.g. 14.4kbit, 1Mbit, 200KB")
    store_opt(p)
    p.set_defaults(func=cmd_site_sync)

    def site_side(p: Any) -> None:
        p.add_argument("--dir", help="the site's store directory (disks go to DIR/images)")
        p.add_argument("--site-store", metavar="NAME",
                       help="or: the site's store as configured in imagefactory.yaml")
        p.add_argument("--images", dest="images_dir", metavar="DIR", help="with --site-store: where disks go")

    p = ss.add_parser("init", help="make a store the store of a site (site side)")
    p.add_argument("site", metavar="NAME")
    site_side(p)
    p.add_argument("--public-key", required=True, metavar="FILE", help="the factory's signing public key")
    p.add_argument("--root-key", action="append", metavar="FILE",
                   help="a public key of the catalogue's first TUF root (repeat; default: --public-key)")
    p.add_argument("--root-threshold", type=int, default=1, metavar="N", help="root keys that must sign")
    p.add_argument("--max-expired", metavar="DURATION",
                   help="accept the catalogue's TUF metadata up to this long past its expiry (e.g. 30d: "
                        "a site that is offline for weeks; each use is logged). Default: not at all")
    p.set_defaults(func=cmd_site_init)
    p = ss.add_parser("import", help="verify and apply a bundle at its site (site side)")
    p.add_argument("bundle", metavar="FILE")
    site_side(p)
    p.set_defaults(func=cmd_site_import)
    p = ss.add_parser("apply", help="verify and apply what syncs delivered to the site's store (site side)")
    site_side(p)
    p.set_defaults(func=cmd_site_apply)
    p = ss.add_parser("upload", help="upload a disk the site made visible to its Harvester (site side)")
    p.add_argument("image", metavar="NAME:VERSION")
    site_side(p)
    p.add_argument("--kubeconfig", metavar="FILE", help="the site's Harvester kubeconfig (default: "
                   "harvester.kubeconfig, $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--namespace", "-n", help="namespace (default: harvester.image_namespace, else the "
                   "context's)")
    p.add_argument("--replace", action="store_true",
                   help="delete an existing image of the same name with another digest first")
    p.set_defaults(func=cmd_site_upload)
