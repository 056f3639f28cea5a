"""The double's object store: etcd + the generic registry rules of the apiserver.

Server-owned metadata (uid, resourceVersion from one global counter, creationTimestamp, generation) is
assigned here. Deletions are queued as events so the simulated controllers can run garbage collection and
their own clean-up asynchronously, like the real kube-controller-manager and Harvester controllers do.
All methods take the store lock; callers may hold it too (it is re-entrant) to make read-modify-write
sequences atomic.
"""

from __future__ import annotations

import builtins
import copy
import random
import threading
import uuid
from typing import Any

from .resources import BY_PLURAL, JSON, ApiError, Resource, now_rfc3339

# Same alphabet as k8s.io/apiserver generateName (no vowels, no ambiguous characters).
_ALNUM = "bcdfghjklmnpqrstvwxz2456789"


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], JSON]] = {plural: {} for plural in BY_PLURAL}
        self._rv = 0
        # (resource, object as it was) for every deletion, drained by the controllers.
        self.deleted: list[tuple[Resource, JSON]] = []

    # --- reads ------------------------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        with self.lock:
            return str(self._rv)

    def get(self, res: Resource, namespace: str | None, name: str) -> JSON | None:
        with self.lock:
            obj = self._objects[res.plural].get((namespace or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def require(self, res: Resource, namespace: str | None, name: str) -> JSON:
        obj = self.get(res, namespace, name)
        if obj is None:
            raise res.not_found(name)
        return obj

    def list(self, res: Resource, namespace: str | None = None) -> list[JSON]:
        with self.lock:
            items = [
                copy.deepcopy(o)
                for (ns, _), o in sorted(self._objects[res.plural].items())
                if namespace is None or ns == namespace
            ]
        return items

    def exists_uid(self, uid: str) -> bool:
        with self.lock:
            return any(
                o["metadata"].get("uid") == uid for objs in self._objects.values() for o in objs.values()
            )

    def all_objects(self) -> builtins.list[tuple[Resource, JSON]]:
        with self.lock:
            return [
                (BY_PLURAL[plural], copy.deepcopy(o))
                for plural, objs in self._objects.items()
                for o in objs.values()
            ]

    # --- writes -----------------------------------------------------------------------------------------

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def pick_name(self, res: Resource, namespace: str | None, generate_name: str) -> str:
        """generateName + 5 random characters, avoiding names in use (the registry retries on collision)."""
        with self.lock:
            for _ in range(10):
                candidate = generate_name + "".join(random.choices(_ALNUM, k=5))
                if ((namespace or "") if res.namespaced else "", candidate) not in self._objects[res.plural]:
                    return candidate
        return candidate

    def insert(self, res: Resource, obj: JSON) -> JSON:
        """Create: assign name from generateName, uid, resourceVersion, timestamps; 409 if it exists."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        with self.lock:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self.pick_name(res, meta.get("namespace"), meta["generateName"])
            key = (meta.get("namespace", "") if res.namespaced else "", meta["name"])
            if key in self._objects[res.plural]:
                raise ApiError(
                    409,
                    f'{res.group_resource} "{meta["name"]}" already exists',
                    reason="AlreadyExists",
                    details={"name": meta["name"], "group": res.group, "kind": res.plural},
                )
            if not res.namespaced:
                meta.pop("namespace", None)
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = self._bump()
            meta["creationTimestamp"] = now_rfc3339()
            if res.custom:
                meta["generation"] = 1
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
                meta.pop(k, None)
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            self._objects[res.plural][key] = obj
            return copy.deepcopy(obj)

    def update(
        self,
        res: Resource,
        obj: JSON,
        *,
        expected_rv: str | None = None,
        status_only: bool = False,
        keep_status: bool = False,
    ) -> JSON:
        """Replace an object. ``expected_rv`` (from the client's body) must equal the stored one (409).

        ``keep_status``: the write came through the main resource of a kind with a status subresource, so
        .status is not changed. ``status_only``: the write came through /status, so only .status changes.
        """
        meta = obj.get("metadata", {})
        name, ns = meta.get("name", ""), meta.get("namespace", "") if res.namespaced else ""
        with self.lock:
            old = self._objects[res.plural].get((ns, name))
            if old is None:
                raise res.not_found(name)
            if expected_rv and expected_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    f'Operation cannot be fulfilled on {res.group_resource} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    reason="Conflict",
                    details={"name": name, "group": res.group, "kind": res.plural},
                )
            new = copy.deepcopy(old if status_only else obj)
            if status_only:
                new["status"] = copy.deepcopy(obj.get("status", {}))
            elif keep_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            new_meta = new.setdefault("metadata", {})
            for k in ("uid", "creationTimestamp", "generation", "namespace"):
                if k in old["metadata"]:
                    new_meta[k] = old["metadata"][k]
                else:
                    new_meta.pop(k, None)
            if res.custom and _spec_of(new, res) != _spec_of(old, res):
                new_meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            new["apiVersion"], new["kind"] = res.api_version, res.kind
            if new == old:
                return copy.deepcopy(old)  # no-op writes do not bump resourceVersion (like etcd3 store)
            new_meta["resourceVersion"] = self._bump()
            self._objects[res.plural][(ns, name)] = new
            return copy.deepcopy(new)

    def mutate(
        self, res: Resource, namespace: str | None, name: str, uid: str | None, fn: Any
    ) -> JSON | None:
        """Controller write: apply ``fn(obj)`` under the lock; None if the object is gone or replaced."""
        with self.lock:
            obj = self._objects[res.plural].get((namespace or "", name))
            if obj is None or (uid is not None and obj["metadata"].get("uid") != uid):
                return None
            new = copy.deepcopy(obj)
            fn(new)
            return self.update(res, new, keep_status=False)

    def remove(self, res: Resource, namespace: str | None, name: str) -> JSON:
        with self.lock:
            key = (namespace or "" if res.namespaced else "", name)
            obj = self._objects[res.plural].pop(key, None)
            if obj is None:
                raise res.not_found(name)
            self._bump()
            self.deleted.append((res, copy.deepcopy(obj)))
            return copy.deepcopy(obj)

    def drain_deleted(self) -> builtins.list[tuple[Resource, JSON]]:
        with self.lock:
            events, self.deleted = self.deleted, []
            return events


def _spec_of(obj: JSON, res: Resource) -> Any:
    """What counts for metadata.generation: everything but metadata (and status, if it is a subresource)."""
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if res.status_subresource else set())
    return {k: v for k, v in obj.items() if k not in skip}
