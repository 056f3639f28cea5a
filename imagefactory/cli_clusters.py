"""CLI commands `harvester upload|delete-image` and `cluster create|status|delete`.

Thin: the work is in `imagefactory.harvester` and `imagefactory.clusters`. Harvester access comes
from a kubeconfig (`--kubeconfig/--context/--namespace`, else `harvester:` in imagefactory.yaml,
else $KUBECONFIG); images come from the catalogue (`--store`), verified before use.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_images import _anchor, _store, _transfers, _wide

if TYPE_CHECKING:
    from .cli import App
    from .clusters.common import ClusterStatus
    from .clusters.spec import ClusterSpec
    from .harvester.api import HarvesterApi
    from .harvester.images import ImageUploader


def _api(app: App, namespace: str | None = None) -> HarvesterApi:
    from .harvester.api import HarvesterApi

    h = app.config().harvester
    a = app.args
    return HarvesterApi(a.kubeconfig or h.kubeconfig, a.context or h.context,
                        namespace or a.namespace or h.namespace, retries=h.retries)


def _uploader(app: App, api: HarvesterApi, progress: Any) -> ImageUploader:
    from .harvester.images import ImageUploader

    h = app.config().harvester
    return ImageUploader(api, poll=h.poll, timeout=h.timeout, progress=progress,
                         cache=app.workdir / "cache" / "images", storage_class=h.image_storage_class)


def _expiry(app: App) -> dt.timedelta:
    from .catalogue.manifest import parse_duration

    return parse_duration(app.config().harvester.url_expiry)


# --- harvester ----------------------------------------------------------------------------------


def cmd_harvester_upload(app: App) -> int:
    api = _api(app, app.args.namespace or app.config().harvester.image_namespace)
    store = _store(app)
    mode = app.args.source or app.config().harvester.source
    with _transfers(app) as progress:
        result = _uploader(app, api, progress).upload(store, app.args.image, _anchor(app), mode=mode,
                                                      replace=app.args.replace, url_expiry=_expiry(app))

    def human() -> None:
        verb = "already in" if result.reused else "imported into"
        app.out.print(f"[bold green]{result.ref}[/] {verb} Harvester as {result.namespace}/{result.name} "
                      f"({result.source}, {result.seconds:.1f} s)")
        app.out.print(f"  storage class {result.storage_class}, virtual size "
                      f"{(result.virtual_size or 0) / 1024**3:.1f} GiB")

    app.emit(result.as_dict(), human)
    return 0


def cmd_harvester_delete_image(app: App) -> int:
    from .catalogue.catalogue import verify_for_consumer
    from .harvester.images import object_name

    api = _api(app)
    img = verify_for_consumer(_store(app), app.args.image, _anchor(app))
    name = object_name(img.manifest)
    _uploader(app, api, None).delete(name)
    app.emit({"deleted": f"{api.namespace}/{name}"},
             lambda: app.out.print(f"deleted image {api.namespace}/{name}"))
    return 0


# --- cluster ------------------------------------------------------------------------------------


def _spec(app: App) -> ClusterSpec:
    from .clusters.spec import load_spec

    return load_spec(Path(app.args.file))


def _target(app: App, spec: ClusterSpec) -> Any:
    if spec.target == "harvester":
        from .clusters.harvester import HarvesterCluster

        h = app.config().harvester
        return HarvesterCluster(_api(app, spec.namespace), spec, poll=h.poll, ip_timeout=h.vm_ip_timeout)
    from .clusters.libvirt import LibvirtCluster

    return LibvirtCluster(spec, app.workdir)


def _local_image(app: App, spec: ClusterSpec) -> Any:
    """Verified image file for the libvirt target: pulled once into WORKDIR/cache/images/<sha256>."""
    from .catalogue.catalogue import pull_cached
    from .clusters.libvirt import LocalImage
    from .distros import get as distro

    cache = app.workdir / "cache" / "images"
    with _transfers(app) as progress:
        img, dest = pull_cached(_open(app, spec), spec.image, _anchor(app), cache, progress)
    m = img.manifest
    cache.chmod(0o755)  # the overlays' backing file: libvirt's qemu user reads it
    dest.chmod(0o644)
    return LocalImage(img.ref, dest, int(m.image.virtual_size or m.image.size),
                      distro(m.os.family).default_user)


def _open(app: App, spec: ClusterSpec) -> Any:
    from .catalogue.stores import open_store

    return open_store(app.config(), app.workdir, getattr(app.args, "store", None) or spec.store)


def cmd_cluster_create(app: App) -> int:
    spec = _spec(app)
    target = _target(app, spec)
    if spec.target == "harvester":
        store = _open(app, spec)
        with _transfers(app) as progress:
            images = app.config().harvester.image_namespace
            image = _uploader(app, _api(app, images) if images else target.api, progress).upload(
                store, spec.image, _anchor(app), mode=app.config().harvester.source,
                url_expiry=_expiry(app))
    else:
        image = _local_image(app, spec)
    try:
        status = target.create(image)
    except BaseException:
        if app.args.rollback:
            app.err.print(f"[yellow]create failed: removing what exists of cluster {spec.name}[/]")
            target.delete()
        else:
            app.err.print(f"cluster {spec.name} is partly created: 'imagefactory cluster create -f "
                          f"{app.args.file}' continues, 'imagefactory cluster delete -f "
                          f"{app.args.file}' removes it")
        raise
    _emit_status(app, status)
    return 0


def cmd_cluster_status(app: App) -> int:
    spec = _spec(app)
    status = _target(app, spec).status()
    _emit_status(app, status)
    return 0 if status.exists else 1


def cmd_cluster_delete(app: App) -> int:
    spec = _spec(app)
    removed = _target(app, spec).delete()
    app.emit({"name": spec.name, "removed": removed},
             lambda: app.out.print(f"cluster {spec.name}: removed {len(removed)} object(s)"
                                   + "".join(f"\n  {r}" for r in removed)))
    return 0


def _emit_status(app: App, status: ClusterStatus) -> None:
    from rich.table import Table

    def human() -> None:
        if not status.exists:
            app.out.print(f"cluster {status.name} ({status.target}) does not exist")
            return
        t = Table(title=f"cluster {status.name} ({status.target})")
        for col in ("node", "role", "phase", "ip", "ready"):
            t.add_column(col)
        for n in status.nodes:
            t.add_row(n.name, n.role, n.phase, n.ip or "-", "-" if n.ready is None else str(n.ready))
        _wide(app).print(t)
        if status.detail:
            app.out.print(status.detail)

    app.emit(status.as_dict(), human)


# --- parsers ------------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    def kube_opts(p: Any) -> None:
        p.add_argument("--kubeconfig", metavar="FILE", help="Harvester kubeconfig (default: "
                       "harvester.kubeconfig, $KUBECONFIG, ~/.kube/config)")
        p.add_argument("--context", help="kubeconfig context")
        p.add_argument("--namespace", "-n", help="namespace (default: the context's)")
        p.add_argument("--store", metavar="NAME", help="catalogue store the image comes from")

    h = sub.add_parser("harvester", help="Harvester: put catalogue images into a Harvester cluster")
    hs = h.add_subparsers(dest="harvester_command", required=True, metavar="COMMAND")
    s = hs.add_parser("upload", help="create a VirtualMachineImage from a verified catalogue image")
    s.add_argument("image", help="NAME, NAME:VERSION or NAME@CHANNEL")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--download", dest="source", action="store_const", const="download",
                     help="Harvester downloads a presigned URL of the blob (default for S3 stores)")
    src.add_argument("--upload", dest="source", action="store_const", const="upload",
                     help="stream the file to Harvester's upload action (default for local stores)")
    s.add_argument("--replace", action="store_true",
                   help="delete an existing image of the same name with another digest first")
    kube_opts(s)
    s.set_defaults(func=cmd_harvester_upload, source=None)
    s = hs.add_parser("delete-image", help="delete the VirtualMachineImage of a catalogue image")
    s.add_argument("image")
    kube_opts(s)
    s.set_defaults(func=cmd_harvester_delete_image)

    c = sub.add_parser("cluster", help="RKE2 clusters from a catalogue image (Harvester or local libvirt)")
    cs = c.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    for name, func, text in (
        ("create", cmd_cluster_create, "create (or continue creating) the cluster of a spec"),
        ("status", cmd_cluster_status, "phase, IP, role (and Ready where known) per node"),
        ("delete", cmd_cluster_delete, "remove the cluster's VMs, disks, secrets and keys"),
    ):
        s = cs.add_parser(name, help=text)
        s.add_argument("-f", "--file", required=True, help="cluster spec (YAML)")
        kube_opts(s)
        if name == "create":
            s.add_argument("--rollback", action="store_true",
                           help="on failure, delete what was created instead of keeping it to continue")
        s.set_defaults(func=func)
