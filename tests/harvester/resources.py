"""Kubernetes API building blocks for the Harvester double: resource table, Status errors, selectors, patches.

Everything here is pure (no I/O, no locking) so it can be unit-tested and reused by the store, the admission
chain and the HTTP layer.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]


# --- errors ---------------------------------------------------------------------------------------------

# Status reasons the apiserver uses per HTTP code (k8s.io/apimachinery/pkg/apis/meta/v1 StatusReason*).
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """An error the apiserver answers with a ``kind: Status`` body."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: JSON | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason if reason is not None else _REASONS.get(code, "")
        self.details = details

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def webhook_denied(webhook: str, message: str, code: int = 422, field: str = "") -> ApiError:
    """How the apiserver relays a validating webhook's denial (harvester werror.NewInvalidError is 422)."""
    details: JSON | None = None
    if code == 422:
        details = {"causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}]}
    return ApiError(code, f'admission webhook "{webhook}" denied the request: {message}', details=details)


HARVESTER_WEBHOOK = "validator.harvesterhci.io"
KUBEVIRT_VM_WEBHOOK = "virtualmachine-validator.kubevirt.io"


# --- resources ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    group: str  # "" = core
    version: str
    plural: str
    kind: str
    namespaced: bool
    custom: bool  # served from a CRD (different delete/update/patch rules than built-in types)
    status_subresource: bool  # if True, writes to the main resource do not change .status

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_kind(self) -> str:
        """As in "VirtualMachineImage.harvesterhci.io \"x\" is invalid"."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def group_resource(self) -> str:
        """As in "virtualmachineimages.harvesterhci.io \"x\" not found"."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def not_found(self, name: str) -> ApiError:
        return ApiError(
            404,
            f'{self.group_resource} "{name}" not found',
            details={"name": name, "group": self.group, "kind": self.plural},
        )


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", False, False, True),
    Resource("", "v1", "secrets", "Secret", True, False, False),
    Resource("", "v1", "configmaps", "ConfigMap", True, False, False),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, False, True),
    Resource("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, False, False),
    # Harvester CRDs declare `subresources: {}`: status is written through the main resource.
    Resource("harvesterhci.io", "v1beta1", "virtualmachineimages", "VirtualMachineImage", True, True, False),
    Resource("harvesterhci.io", "v1beta1", "keypairs", "KeyPair", True, True, False),
    Resource("harvesterhci.io", "v1beta1", "settings", "Setting", False, True, False),
    Resource("kubevirt.io", "v1", "virtualmachines", "VirtualMachine", True, True, True),
    Resource("kubevirt.io", "v1", "virtualmachineinstances", "VirtualMachineInstance", True, True, True),
    Resource(
        "k8s.cni.cncf.io",
        "v1",
        "network-attachment-definitions",
        "NetworkAttachmentDefinition",
        True,
        True,
        False,
    ),
)
BY_PLURAL = {r.plural: r for r in RESOURCES}


def resource_for(group: str, version: str, plural: str) -> Resource | None:
    r = BY_PLURAL.get(plural)
    return r if r is not None and r.group == group and r.version == version else None


def resource_of(obj: JSON) -> Resource:
    """The resource an object belongs to, from its apiVersion/kind (used to seed objects)."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    for r in RESOURCES:
        if r.api_version == api_version and r.kind == kind:
            return r
    raise ValueError(f"the double does not serve apiVersion={api_version!r} kind={kind!r}")


# --- small helpers --------------------------------------------------------------------------------------


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_version(v: str) -> tuple[int, int, int]:
    """ "v1.8.0" / "v1.9.0-rc6" -> (1, 8, 0); pre-release suffixes are ignored."""
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", v)
    if not m:
        raise ValueError(f"not a version: {v!r}")
    return int(m[1]), int(m[2]), int(m[3] or 0)


_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DEC = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": 1e-3}


def parse_quantity(q: str | int) -> int:
    """A resource.Quantity ("10Gi", "512Mi", "1G", "1073741824") as whole bytes, rounded up."""
    if isinstance(q, bool):
        raise ValueError(f"invalid quantity {q!r}")
    if isinstance(q, int):
        return q
    m = re.fullmatch(r"\s*([+-]?[0-9.]+(?:[eE][+-]?\d+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m|)\s*", str(q))
    if not m:
        raise ValueError(f"quantities must match the regular expression: invalid quantity {q!r}")
    mult = _BIN.get(m[2]) or _DEC[m[2]]
    return math.ceil(float(m[1]) * mult)


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def label_value_errors(value: str) -> list[str]:
    """k8s.io/apimachinery validation.IsValidLabelValue messages."""
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _LABEL_VALUE.match(value):
        errs.append(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
            "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        )
    return errs


def label_key_errors(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    errs = []
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        errs.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name or len(name) > 63 or not re.match(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$", name):
        errs.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character"
        )
    return errs


def name_errors(name: str, *, dns_label: bool = False) -> list[str]:
    if dns_label:
        if len(name) > 63 or not _DNS_LABEL.match(name):
            return [
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                "must start and end with an alphanumeric character"
            ]
        return []
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return [
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character"
        ]
    return []


# --- selectors ------------------------------------------------------------------------------------------


def _split_selector(sel: str) -> list[str]:
    """Split on commas that are not inside "in (a,b)" parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality (=, ==, !=), set (in, notin) and existence (k, !k) requirements, all ANDed."""
    for req in _split_selector(selector):
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", req)
        if m:
            values = {v.strip() for v in m[3].split(",")}
            present = m[1] in labels and labels[m[1]] in values
            if (m[2] == "in") != present:
                return False
            continue
        m = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*(\S*)", req)
        if m:
            if m[2] == "!=":
                if labels.get(m[1]) == m[3]:
                    return False
            elif labels.get(m[1]) != m[3]:
                return False
            continue
        if req.startswith("!"):
            if req[1:].strip() in labels:
                return False
            continue
        if not re.fullmatch(r"[^\s=!(),]+", req):
            raise ApiError(400, f"unable to parse requirement: {req!r}")
        if req not in labels:
            return False
    return True


def field_selector_matches(selector: str, obj: JSON) -> bool:
    """Only metadata.name / metadata.namespace: the fields every resource supports."""
    meta = obj.get("metadata", {})
    for req in _split_selector(selector):
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", req)
        if not m:
            raise ApiError(400, f"invalid selector: '{selector}'; can't understand '{req}'")
        field, op, value = m[1].strip(), m[2], m[3].strip()
        if field not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, f"field label not supported: {field}")
        actual = meta.get(field.split(".", 1)[1], "")
        if (actual == value) == (op == "!="):
            return False
    return True


# --- patches --------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes, objects merge, everything else replaces)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], op: str, path: str) -> Any:
    node = doc
    for p in parts[:-1]:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        else:
            raise ApiError(422, f"jsonpatch {op} operation does not apply: doc is missing path: {path}")
    return node


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    if not isinstance(ops, list):
        raise ApiError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(422, f"invalid JSON patch operation: {json.dumps(op)}")
        kind, path = op["op"], op["path"]
        if kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = copy.deepcopy(_get(doc, src, kind, op.get("from", "")))
            if kind == "move":
                doc = _remove(doc, src, op.get("from", ""))
            doc = _add(doc, _pointer(path), value, path)
        elif kind == "add":
            doc = _add(doc, _pointer(path), copy.deepcopy(op.get("value")), path)
        elif kind == "remove":
            doc = _remove(doc, _pointer(path), path)
        elif kind == "replace":
            parts = _pointer(path)
            _get(doc, parts, "replace", path)  # must exist
            if not parts:
                doc = copy.deepcopy(op.get("value"))
            else:
                doc = _remove(doc, parts, path)
                doc = _add(doc, parts, copy.deepcopy(op.get("value")), path)
        elif kind == "test":
            if _get(doc, _pointer(path), "test", path) != op.get("value"):
                raise ApiError(422, f"testing value {path} failed: test failed")
        else:
            raise ApiError(422, f"Unexpected kind: {kind}")
    return doc


def _get(doc: Any, parts: list[str], op: str, path: str) -> Any:
    if not parts:
        return doc
    parent = _parent(doc, parts, op, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise ApiError(422, f"jsonpatch {op} operation does not apply: doc is missing key: {path}")


def _add(doc: Any, parts: list[str], value: Any, path: str) -> Any:
    if not parts:
        return value
    parent = _parent(doc, parts, "add", path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise ApiError(422, f"jsonpatch add operation does not apply: index out of range: {path}")
    else:
        raise ApiError(422, f"jsonpatch add operation does not apply: doc is missing path: {path}")
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    _get(doc, parts, "remove", path)
    if not parts:
        return None
    parent = _parent(doc, parts, "remove", path)
    if isinstance(parent, dict):
        del parent[parts[-1]]
    else:
        del parent[int(parts[-1])]
    return doc
