"""`imagefactory trust ...`: the catalogue's TUF metadata (see catalogue/trust.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cli_images import _keys, _private_key, _store
from .errors import UserError

if TYPE_CHECKING:
    from .cli import App


def cmd_trust_status(app: App) -> int:
    from .catalogue.trust import status

    data = status(_store(app))

    def human() -> None:
        if not data["initialized"]:
            app.out.print(f"store {data['store']}: no TUF metadata yet (the first publish, or "
                          "'imagefactory trust init', makes it)")
            return
        app.out.print(f"store {data['store']}: root v{data['root']['version']} (threshold "
                      f"{data['root_threshold']}), {data['targets']['count']} targets")
        for role in ("root", "targets", "snapshot", "timestamp"):
            r = data[role]
            app.out.print(f"  {role:9} v{r['version']:<5} expires {r['expires']}  {r['bytes']} bytes",
                          markup=False)

    app.emit(data, human)
    return 0


def cmd_trust_init(app: App) -> int:
    from .catalogue.trust import initialize, initialized

    store = _store(app)
    if initialized(store):
        raise UserError(f"{store.describe()} already has TUF metadata",
                        hint="'imagefactory trust status'; 'trust rotate' replaces the root keys")
    keys = _keys(app)
    with store.lock("making the TUF metadata"):
        cur = initialize(store, keys)
    n = sum(1 for md in cur.roles.values() for p in md.signed.targets if p.endswith("/manifest.json"))
    app.emit({"store": store.name, "root_version": 1, "manifests": n},
             lambda: app.out.print(f"store {store.name}: TUF root v1 made; {n} published manifest(s) "
                                   "(signatures verified) are its first targets"))
    return 0


def cmd_trust_refresh(app: App) -> int:
    from .catalogue.trust import refresh_timestamp

    store = _store(app)
    v = refresh_timestamp(store, _keys(app))
    app.emit({"store": store.name, "timestamp_version": v},
             lambda: app.out.print(f"store {store.name}: timestamp v{v} signed"))
    return 0


def cmd_trust_rotate(app: App) -> int:
    from .catalogue import signing
    from .catalogue.trust import Keys, rotate_root

    a = app.args
    store = _store(app)
    old = _keys(app)
    if not old.root:
        raise UserError("rotating the root needs the current root keys (signing.root_private_keys)")
    new_root = tuple(signing.load_private_key(k) for k in a.new_root_key)
    if a.threshold > len(new_root):
        raise UserError(f"--threshold {a.threshold}: only {len(new_root)} new root key(s) given")
    online = signing.load_private_key(a.online_key) if a.online_key else _private_key(app)
    v = rotate_root(store, old, Keys(online, new_root, a.threshold))
    app.emit({"store": store.name, "root_version": v},
             lambda: app.out.print(f"store {store.name}: TUF root v{v} signed by the old and the new root "
                                   "keys; put the new public keys in signing.root_keys where trust starts"))
    return 0


def add_parsers(sub: Any) -> None:
    """Register `trust` on the top-level subparsers."""
    t = sub.add_parser("trust", help="the catalogue's TUF metadata: what is current, signed and versioned")
    ts = t.add_subparsers(dest="trust_command", required=True, metavar="ACTION")
    for name, func, text in (
            ("status", cmd_trust_status, "versions, expiry and sizes of the TUF roles"),
            ("init", cmd_trust_init, "make root v1 (root keys) and adopt the manifests already published"),
            ("refresh", cmd_trust_refresh, "sign a new snapshot and timestamp (nightly: nothing expires)")):
        p = ts.add_parser(name, help=text)
        p.add_argument("--store", metavar="NAME", help="catalogue store (default: $IMAGEFACTORY_STORE, "
                       "default_store, or 'local' = WORKDIR/catalogue)")
        p.set_defaults(func=func)
    p = ts.add_parser("rotate", help="a new root version with new root keys (signed by old and new)")
    p.add_argument("--store", metavar="NAME", help="catalogue store")
    p.add_argument("--new-root-key", action="append", required=True, metavar="PRIVATE_KEY",
                   help="a new root private key file (repeat for several)")
    p.add_argument("--threshold", type=int, default=1, help="new root keys that must sign (default 1)")
    p.add_argument("--online-key", metavar="PRIVATE_KEY",
                   help="a new online key for targets/snapshot/timestamp (default: the signing key)")
    p.set_defaults(func=cmd_trust_rotate)
