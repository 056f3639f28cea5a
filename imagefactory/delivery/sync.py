"""Sync: a plan's delta over the network, straight into the site's store, resumable.

Factory side (`push`): one listing of the site store's chunks, then every chunk of the plan the
site store does not hold yet - each one PUT, with the store's retries (a link that drops mid-chunk
costs that chunk once more; a link down for longer ends the run, and the next run lists again and
sends only what is still missing) - then the tables and signed indexes, then a signed delivery
(`deliveries/<time>-<id>.json`: the site, the images, the disks' sha256). `rate` caps the average
upload rate (bytes/s) by sleeping between chunks: the link is the site's, shared with its
operations. Before anything, the site's `acknowledgement.json` is read from its store and
recorded (the factory's view is what the site acknowledged).

Site side (`apply`): each delivery the site has not applied, newest last: signature and site name
checked, then the images made visible (`sitestore.make_visible`: every index, table, chunk and
disk verified), the delivery recorded in `site.json`, and the acknowledgement written to the store
for the factory's next sync to read.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..catalogue import signing, trust
from ..catalogue.stores import BlobStore, NotFound
from ..errors import UserError
from . import chunks as ch
from . import sitestore as sc
from .sites import Plan, Site, Sites

log = logging.getLogger(__name__)

DELIVERY_KIND = "imagefactory-site-delivery"
DELIVERIES = "deliveries/"


@dataclass
class PushResult:
    site: str
    images: list[str]
    planned_bytes: int
    sent_bytes: int = 0  # chunk, table and index bytes PUT this run
    chunks_sent: int = 0
    chunks_present: int = 0  # already in the site store (an earlier, interrupted run)
    delivery: str = ""
    seconds: float = 0.0


class Throttle:
    """Rate cap: after `n` bytes, wait `n / rate` seconds beyond the later of now and the end of
    the previous wait - an idle link earns no burst."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.ready = clock()
        self.sent = 0

    def __call__(self, n: int) -> None:
        self.sent += n
        if self.rate:
            now = self.clock()
            self.ready = max(self.ready, now) + n / self.rate
            if self.ready > now:
                self.sleep(self.ready - now)


def read_acknowledgement(sites: Sites, site: Site, store: BlobStore) -> Site:
    """Record the acknowledgement the site left in its store, if there is one."""
    try:
        data, _ = store.get_bytes(sc.ACK)
    except NotFound:
        return site
    try:
        ack = json.loads(data)
    except ValueError:
        log.warning("site %s: %s in its store is not JSON; ignored", site.name, sc.ACK)
        return site
    return sites.acknowledge(site.name, ack if isinstance(ack, dict) else {})


def push(p: Plan, factory: BlobStore, site_store: BlobStore, private_key: Ed25519PrivateKey,
         rate: float | None = None, progress: Callable[[int], None] | None = None) -> PushResult:
    start = time.monotonic()
    result = PushResult(p.site, [i.ref for i in p.indexes], p.bytes)
    present = {o.key.rsplit("/", 1)[-1] for o in site_store.list("chunks/zstd/")}
    throttle = Throttle(rate)

    def send(key: str, data: bytes) -> None:
        site_store.put_bytes(key, data, content_type="application/octet-stream")
        result.sent_bytes += len(data)
        throttle(len(data))
        if progress:
            progress(len(data))

    for sha, c in p.missing.items():
        if sha in present:
            result.chunks_present += 1
            if progress:
                progress(c.csize)
            continue
        send(ch.chunk_key(sha), ch.read_stored(factory, c))
        result.chunks_sent += 1
    for img in p.indexes:
        tkey = ch.table_key(img.table_sha256)
        if site_store.stat(tkey) is None:
            send(tkey, factory.get_bytes(tkey)[0])
        send(img.index_key, json.dumps(img.raw, indent=1).encode())
    # the catalogue's TUF metadata for these images (the site checks them current and unrevoked);
    # what the site store already holds with the same bytes is not sent again
    for key, data in sorted(trust.site_metadata(factory, [(i.name, i.version) for i in p.indexes]).items()):
        info = site_store.stat(key)
        if info is None or info.size != len(data) or key.endswith("/timestamp.json"):
            send(key, data)
    stamp = sc.now()
    delivery = signing.sign({
        "kind": DELIVERY_KIND, "schema": 1, "site": p.site, "created": stamp, "base": p.base,
        "images": [{"ref": i.ref, "index": i.index_key, "disk_sha256": i.sha256} for i in p.indexes],
    }, private_key)
    result.delivery = f"{DELIVERIES}{stamp.replace(':', '')}-{secrets.token_hex(4)}.json"
    send(result.delivery, json.dumps(delivery, indent=1).encode())
    result.seconds = round(time.monotonic() - start, 2)
    return result


@dataclass
class ApplyResult:
    site: str
    applied: list[str] = field(default_factory=list)  # delivery keys
    images: list[str] = field(default_factory=list)


def apply(site: sc.SiteStore) -> ApplyResult:
    """Make visible what the deliveries in the site's store carry (see the module docstring)."""
    rec = site.record()
    public = site.public_key()
    result = ApplyResult(str(rec["name"]))
    done = set(rec["deliveries"])
    for info in sorted(site.store.list(DELIVERIES), key=lambda o: o.key):
        if info.key in done:
            continue
        raw = sc.json_object(site.read(info.key), info.key)
        if raw.get("kind") != DELIVERY_KIND:
            raise UserError(f"{site.describe()}: {info.key} is not a delivery")
        signing.verify(raw, public, f"{site.describe()}: {info.key}")
        if raw.get("site") != rec["name"]:
            raise UserError(f"{info.key}: the delivery is for site '{raw.get('site')}', this is site "
                            f"'{rec['name']}'",
                            hint="nothing was applied; the factory synced the wrong store")
        items = [sc.Listed(str(i["index"]), str(i["disk_sha256"])) for i in raw["images"]]
        verified = sc.verify_indexes(site, items, {}, {}, public, f"{site.describe()}: {info.key}")
        result.images += sc.make_visible(site, verified)
        rec = site.record()
        rec["deliveries"] = [*rec["deliveries"], info.key]
        site.write_record(rec)
        site.put(sc.ACK, json.dumps(site.acknowledgement(), indent=2).encode() + b"\n")
        result.applied.append(info.key)
    return result
