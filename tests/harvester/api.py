"""HTTP semantics of the double: routing, auth, fault injection and the Kubernetes REST verbs.

Paths follow the apiserver: ``/api/v1/[namespaces/<ns>/]<plural>[/<name>[/status]]`` and
``/apis/<group>/<version>/...``, plus discovery (``/api``, ``/apis``, ``/apis/<g>/<v>``), ``/version`` and
Harvester's upload action under ``/v1/harvester/``.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from .resources import (
    BY_PLURAL,
    JSON,
    RESOURCES,
    ApiError,
    Resource,
    field_selector_matches,
    json_patch,
    label_selector_matches,
    merge_patch,
    resource_for,
)
from .upload import BodyReader, MalformedBody, handle_upload

if TYPE_CHECKING:
    from email.message import Message

    from .double import HarvesterDouble

MAX_BODY = 3 * 1024 * 1024  # the apiserver's request size limit
UPLOAD_PREFIX = "/v1/harvester/harvesterhci.io.virtualmachineimages/"
NAMESPACES = BY_PLURAL["namespaces"]
_FAULT_MESSAGES = {
    429: "the server has received too many requests and has asked us to try again later",
    500: "Internal error occurred: etcdserver: request timed out",
    502: "the server responded with the status code 502 but did not return more information",
    503: "the server is currently unable to handle the request",
    504: "the server was unable to return a response in the time allotted, but may still be processing the "
    "request",
}


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def json_response(status: int, obj: Any, warnings: list[str] | None = None) -> Response:
    headers = [("Warning", f"299 - {json.dumps(w)}") for w in warnings or []]
    return Response(status, json.dumps(obj).encode(), headers=headers)


def status_response(err: ApiError) -> Response:
    resp = json_response(err.code, err.status())
    if err.code == 429:
        resp.headers.append(("Retry-After", "1"))
    return resp


class Api:
    def __init__(self, double: HarvesterDouble) -> None:
        self.d = double
        self.store = double.store
        self.adm = double.admission

    def serve(self, method: str, raw_path: str, headers: Message, rfile: io.BufferedIOBase) -> Response:
        split = urlsplit(raw_path)
        path, query = split.path, parse_qs(split.query, keep_blank_values=True)
        reader = BodyReader(rfile, headers)
        try:
            fault = self.d._take_fault(method, raw_path)
            if fault is not None:
                reader.drain(8 * 1024 * 1024)
                return status_response(
                    ApiError(fault, _FAULT_MESSAGES.get(fault, f"injected status {fault}"))
                )
            if headers.get("Authorization") != f"Bearer {self.d.token}":
                reader.drain(8 * 1024 * 1024)
                if path.startswith("/v1/"):  # Steve/Rancher style error body
                    body = {
                        "type": "error",
                        "status": "401",
                        "message": "Unauthorized 401: must authenticate",
                    }
                    return json_response(401, body)
                return status_response(ApiError(401, "Unauthorized"))
            if path.startswith(UPLOAD_PREFIX) and method == "POST":
                ns, _, name = path[len(UPLOAD_PREFIX) :].partition("/")
                if query.get("action") != ["upload"]:
                    reader.drain(8 * 1024 * 1024)
                    return Response(400, b"Unsupported action", "text/plain")
                result = handle_upload(self.d, rfile, headers, unquote(ns), unquote(name), query)
                return Response(
                    result.status, result.text.encode(), "text/plain", close=not result.body_consumed
                )
            body = self._read_json(reader, method)
            return self._route(method, path, query, headers, body)
        except ApiError as e:
            resp = status_response(e)
            resp.close = not reader.eof and not reader.drain(8 * 1024 * 1024)
            return resp
        except Exception as e:  # a bug in the double: surface it to the test through double.errors
            self.d.errors.append(f"{method} {raw_path}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            return status_response(ApiError(500, f"Internal error occurred: {e}"))

    @staticmethod
    def _read_json(reader: BodyReader, method: str) -> Any:
        if method not in ("POST", "PUT", "PATCH", "DELETE"):
            return None
        chunks, size = [], 0
        try:
            while data := reader.read(64 * 1024):
                size += len(data)
                if size > MAX_BODY:
                    raise ApiError(413, "Request entity too large: limit is 3145728")
                chunks.append(data)
        except MalformedBody as e:
            raise ApiError(400, str(e)) from e
        raw = b"".join(chunks)
        if not raw.strip():
            if method == "DELETE":
                return None
            raise ApiError(400, "the body of the request was empty")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"couldn't get version/kind; json parse error: {e}") from e

    # --- routing ----------------------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], headers: Message, body: Any
    ) -> Response:
        parts = [unquote(p) for p in path.split("/") if p]
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            raise ApiError(405, f"the server does not allow this method on the requested resource ({method})")
        if parts == ["version"]:
            return json_response(200, self._version_info())
        if parts == ["api"]:
            return json_response(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": self.d.url.removeprefix("https://")}
                    ],
                },
            )
        if parts == ["apis"]:
            return json_response(200, self._group_list())
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        if not rest:
            return json_response(200, self._resource_list(group, version))
        ns = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] != "status":
            ns, rest = rest[1], rest[2:]
        res = resource_for(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if (
            res is None
            or len(rest) > 3
            or (sub is not None and sub != "status")
            or (name is not None and res.namespaced != (ns is not None))
            or (ns is not None and not res.namespaced)
        ):
            raise ApiError(404, "the server could not find the requested resource")
        if sub == "status" and not res.status_subresource:
            raise ApiError(404, "the server could not find the requested resource")
        q = {k: v[-1] for k, v in query.items()}
        if name is None:
            if method == "GET":
                return self._list(res, ns, q)
            if method == "POST":
                if res.namespaced and ns is None:
                    raise ApiError(404, "the server could not find the requested resource")
                return self._create(res, ns, body, q)
            if method == "DELETE":
                return self._delete_collection(res, ns, q)
            raise ApiError(405, f"the server does not allow this method on the requested resource ({method})")
        if method == "GET":
            return json_response(200, self.store.require(res, ns, name))
        if method == "PUT":
            return self._replace(res, ns, name, body, q, status_only=sub == "status")
        if method == "PATCH":
            return self._patch(res, ns, name, body, q, headers, status_only=sub == "status")
        if method == "DELETE":
            return self._delete(res, ns, name, body)
        raise ApiError(405, f"the server does not allow this method on the requested resource ({method})")

    def _version_info(self) -> JSON:
        major, minor = self.d.kube_version.lstrip("v").split(".")[:2]
        return {
            "major": major,
            "minor": minor,
            "gitVersion": self.d.kube_version,
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.23.4",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    @staticmethod
    def _group_list() -> JSON:
        groups = []
        for g in dict.fromkeys(r.group for r in RESOURCES if r.group):
            gv = next(r for r in RESOURCES if r.group == g)
            ver = {"groupVersion": gv.api_version, "version": gv.version}
            groups.append({"name": g, "versions": [ver], "preferredVersion": ver})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    @staticmethod
    def _resource_list(group: str, version: str) -> JSON:
        served = [r for r in RESOURCES if r.group == group and r.version == version]
        if not served:
            raise ApiError(404, "the server could not find the requested resource")
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update"]
        resources: list[JSON] = []
        for r in served:
            resources.append(
                {
                    "name": r.plural,
                    "singularName": r.kind.lower(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": verbs,
                }
            )
            if r.status_subresource:
                resources.append(
                    {
                        "name": f"{r.plural}/status",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": served[0].api_version,
            "resources": resources,
        }

    # --- verbs ------------------------------------------------------------------------------------------

    def _list(self, res: Resource, ns: str | None, q: dict[str, str]) -> Response:
        if q.get("watch") in ("true", "1"):
            raise ApiError(405, "watch is not supported by this server; poll with list instead")
        items = [
            o
            for o in self.store.list(res, ns)
            if label_selector_matches(q.get("labelSelector", ""), o["metadata"].get("labels") or {})
            and field_selector_matches(q.get("fieldSelector", ""), o)
        ]
        meta: JSON = {"resourceVersion": self.store.resource_version}
        if q.get("continue"):
            try:
                start = json.loads(base64.b64decode(q["continue"]))["start"]
            except (ValueError, KeyError, TypeError) as e:
                raise ApiError(400, "continue key is not valid: illegal base64 data") from e
            items = [o for o in items if _key(o) > start]
        limit = int(q.get("limit") or 0)
        if limit and len(items) > limit:
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
            meta["continue"] = base64.b64encode(json.dumps({"start": _key(items[-1])}).encode()).decode()
        return json_response(
            200, {"apiVersion": res.api_version, "kind": f"{res.kind}List", "metadata": meta, "items": items}
        )

    def _create(self, res: Resource, ns: str | None, body: Any, q: dict[str, str]) -> Response:
        warnings: list[str] = []
        obj = self.adm.decode(res, body, q.get("fieldValidation", "Warn"), warnings)
        meta = obj["metadata"]
        with self.store.lock:
            if res.namespaced:
                if meta.get("namespace") and meta["namespace"] != ns:
                    raise ApiError(
                        400,
                        "the namespace of the provided object does not match the namespace sent "
                        "on the request",
                    )
                meta["namespace"] = ns
                if self.store.get(NAMESPACES, None, ns or "") is None:
                    raise NAMESPACES.not_found(ns or "")
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self.store.pick_name(res, ns, meta["generateName"])
            obj = self.adm.mutate_create(res, obj)
            self.adm.validate_object(res, obj)
            self.adm.validate_create(res, obj)
            if q.get("dryRun") == "All":
                return json_response(201, obj, warnings)
            created = self.store.insert(res, obj)
        self._record_warnings(warnings)
        return json_response(201, created, warnings)

    def _replace(
        self, res: Resource, ns: str | None, name: str, body: Any, q: dict[str, str], status_only: bool
    ) -> Response:
        warnings: list[str] = []
        new = self.adm.decode(res, body, q.get("fieldValidation", "Warn"), warnings)
        expected_rv = new["metadata"].get("resourceVersion")
        return self._update(res, ns, name, new, q, status_only, warnings, expected_rv)

    def _patch(
        self,
        res: Resource,
        ns: str | None,
        name: str,
        body: Any,
        q: dict[str, str],
        headers: Message,
        status_only: bool,
    ) -> Response:
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
        with self.store.lock:  # like the apiserver, patch the latest version: no conflict unless asked for
            return self._patch_locked(res, ns, name, body, q, ctype, status_only)

    def _patch_locked(
        self,
        res: Resource,
        ns: str | None,
        name: str,
        body: Any,
        q: dict[str, str],
        ctype: str,
        status_only: bool,
    ) -> Response:
        old = self.store.require(res, ns, name)
        expected_rv = None
        if ctype == "application/json-patch+json":
            merged = json_patch(old, body)
        elif ctype == "application/merge-patch+json" or (
            ctype == "application/strategic-merge-patch+json" and not res.custom
        ):
            if not isinstance(body, dict):
                raise ApiError(
                    400,
                    "couldn't get version/kind; json parse error: json: cannot unmarshal array "
                    "into Go value of type struct { APIVersion string; Kind string }",
                )
            merged = merge_patch(old, body)  # strategic merge is approximated by a merge patch
            expected_rv = (body.get("metadata") or {}).get("resourceVersion")
        else:
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json-patch+json, application/merge-patch+json"
                f"{'' if res.custom else ', application/strategic-merge-patch+json'}",
            )
        warnings: list[str] = []
        new = self.adm.decode(res, merged, q.get("fieldValidation", "Warn"), warnings)
        return self._update(res, ns, name, new, q, status_only, warnings, expected_rv)

    def _update(
        self,
        res: Resource,
        ns: str | None,
        name: str,
        new: JSON,
        q: dict[str, str],
        status_only: bool,
        warnings: list[str],
        expected_rv: str | None,
    ) -> Response:
        meta = new["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise ApiError(
                400, f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        if res.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise ApiError(
                400, "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["name"] = name
        if res.namespaced:
            meta["namespace"] = ns
        with self.store.lock:
            old = self.store.require(res, ns, name)
            if status_only:
                candidate = copy.deepcopy(old)
                candidate["status"] = new.get("status", {})
                new = candidate
            elif res.status_subresource:
                new["status"] = copy.deepcopy(old.get("status", {}))
            self.adm.validate_object(res, new, update=True)
            self.adm.validate_update(res, old, new)
            if q.get("dryRun") == "All":
                return json_response(200, new, warnings)
            updated = self.store.update(
                res,
                new,
                expected_rv=expected_rv,
                status_only=status_only,
                keep_status=res.status_subresource,
            )
        self._record_warnings(warnings)
        return json_response(200, updated, warnings)

    def _delete(self, res: Resource, ns: str | None, name: str, body: Any) -> Response:
        opts = body if isinstance(body, dict) else {}
        with self.store.lock:
            old = self.store.require(res, ns, name)
            pre = opts.get("preconditions") or {}
            for key in ("uid", "resourceVersion"):
                if pre.get(key) and pre[key] != old["metadata"].get(key):
                    raise ApiError(
                        409,
                        f"Precondition failed: {key} in precondition: {pre[key]}, {key} in object "
                        f"meta: {old['metadata'].get(key)}",
                        reason="Conflict",
                    )
            self.adm.validate_delete(res, old)
            if opts.get("dryRun") == ["All"]:
                return json_response(200, old)
            if opts.get("propagationPolicy") == "Orphan" or opts.get("orphanDependents") is True:
                self._orphan_dependents(old["metadata"]["uid"])
            removed = self.store.remove(res, ns, name)
        if res.custom:  # CRs answer with the deleted object (ReturnDeletedObject)
            return json_response(200, removed)
        if res.plural == "namespaces":
            removed["status"] = {"phase": "Terminating"}
            return json_response(200, removed)
        return json_response(
            200,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": res.group,
                    "kind": res.plural,
                    "uid": removed["metadata"]["uid"],
                },
            },
        )

    def _delete_collection(self, res: Resource, ns: str | None, q: dict[str, str]) -> Response:
        listed = json.loads(self._list(res, ns, q).body)
        for item in listed["items"]:
            self._delete(res, item["metadata"].get("namespace"), item["metadata"]["name"], None)
        return json_response(200, listed)

    def _orphan_dependents(self, uid: str) -> None:
        for res, obj in self.store.all_objects():
            refs = obj["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                m = obj["metadata"]

                def strip(o: JSON) -> None:
                    kept = [r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                    if kept:
                        o["metadata"]["ownerReferences"] = kept
                    else:
                        o["metadata"].pop("ownerReferences", None)

                self.store.mutate(res, m.get("namespace"), m["name"], m["uid"], strip)

    def _record_warnings(self, warnings: list[str]) -> None:
        if warnings:
            with self.store.lock:
                self.d.warnings.extend(warnings)


def _key(obj: JSON) -> str:
    return f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
