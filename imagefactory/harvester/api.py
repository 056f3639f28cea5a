"""Talking to a Harvester cluster: the official `kubernetes` client with a kubeconfig.

One `HarvesterApi` per command. It loads the kubeconfig (path, context, namespace), keeps TLS
verification on (the kubeconfig's CA; there is deliberately no switch to turn it off), retries
5xx/429 answers and dropped connections with exponential back-off, and turns API errors into
imagefactory errors carrying the server's message. Credentials stay inside the client
configuration: nothing here logs headers, tokens or the kubeconfig's contents.

Harvester's one non-Kubernetes call, the image upload (`POST /v1/harvester/...?action=upload`),
goes through the same connection pool, so it uses the same CA, client certificate or token.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError, UserError

log = logging.getLogger(__name__)

HARVESTER = ("harvesterhci.io", "v1beta1")
KUBEVIRT = ("kubevirt.io", "v1")
IMAGES = (*HARVESTER, "virtualmachineimages")
KEYPAIRS = (*HARVESTER, "keypairs")
VMS = (*KUBEVIRT, "virtualmachines")
VMIS = (*KUBEVIRT, "virtualmachineinstances")
NADS = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


class ApiError(BuildError):
    """An API call failed after retries; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int, reason: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status
        self.reason = reason


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


def parse_version(text: str) -> tuple[int, int, int]:
    m = _VERSION.match(text.strip())
    if not m:
        raise BuildError(f"Harvester reports version '{text}', which is not vMAJOR.MINOR.PATCH")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@dataclass(frozen=True)
class Target:
    """Where the kubeconfig points us (for messages; never includes credentials)."""

    kubeconfig: Path
    context: str
    namespace: str
    server: str


def kubeconfig_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0])
    return Path.home() / ".kube" / "config"


class HarvesterApi:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None,
                 namespace: str | None = None, *, retries: int = 6, backoff: float = 0.5,
                 timeout: float = 60.0) -> None:
        from kubernetes import client, config  # imported here: slow, and only these commands need it
        from kubernetes.config.config_exception import ConfigException

        path = kubeconfig_path(kubeconfig)
        if not path.is_file():
            raise UserError(f"{path}: no such kubeconfig",
                            hint="pass --kubeconfig, set harvester.kubeconfig in imagefactory.yaml "
                                 "or $KUBECONFIG")
        try:
            contexts, active = config.list_kube_config_contexts(config_file=str(path))  # type: ignore[no-untyped-call]
            chosen = next((c for c in contexts if c["name"] == context), None) if context else active
            if chosen is None:
                names = ", ".join(c["name"] for c in contexts)
                raise UserError(f"{path}: no context '{context}'", hint=f"contexts: {names}")
            self.client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(path), context=chosen["name"])
        except ConfigException as e:
            raise UserError(f"{path}: not a usable kubeconfig: {e}",
                            hint="download a kubeconfig from Harvester's UI (Support page)") from None
        cfg = self.client.configuration
        if not cfg.verify_ssl:
            # insecure-skip-tls-verify in the kubeconfig: refuse rather than silently trust anything
            raise UserError(f"{path}: context '{chosen['name']}' turns TLS verification off",
                            hint="put the cluster's CA into certificate-authority-data instead")
        ns = namespace or chosen.get("context", {}).get("namespace") or "default"
        self.target = Target(path, chosen["name"], ns, cfg.host)
        self.custom = client.CustomObjectsApi(self.client)
        self.core = client.CoreV1Api(self.client)
        self.storage = client.StorageV1Api(self.client)
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._version: tuple[int, int, int] | None = None

    @property
    def namespace(self) -> str:
        return self.target.namespace

    # --- calls with retries -------------------------------------------------------------------

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args)` with retries on 5xx/429 and connection failures; errors name `what`."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", (10, self.timeout))
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except ApiException as e:
                status, reason, message = int(e.status or 0), str(e.reason or ""), _message(e.body)
                transient = status >= 500 or status == 429
                if not transient or attempt == self.retries:
                    raise self._error(what, status, reason, message) from None
                log.warning("%s: HTTP %d %s, retrying in %.1f s (%d/%d)", what, status, message or reason,
                            delay, attempt, self.retries)
            except HTTPError as e:
                if attempt == self.retries:
                    raise ApiError(f"{what}: no answer from {self.target.server}: {type(e).__name__}", 0,
                                   hint="check the network path to Harvester and the kubeconfig's server"
                                   ) from None
                log.warning("%s: %s, retrying in %.1f s (%d/%d)", what, type(e).__name__, delay, attempt,
                            self.retries)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
        raise AssertionError("unreachable")

    def _error(self, what: str, status: int, reason: str, message: str) -> ApiError:
        text = f"{what}: HTTP {status} {message or reason}".rstrip()
        if status in (401, 403):
            raise UserError(text, hint=f"the credentials of context '{self.target.context}' in "
                            f"{self.target.kubeconfig} are not accepted for this")
        if status == 404:
            return NotFound(text, status, reason)
        if status == 409:
            return Conflict(text, status, reason)
        return ApiError(text, status, reason)

    # --- typed helpers ------------------------------------------------------------------------

    def version(self) -> tuple[int, int, int]:
        """Harvester's version from its `server-version` setting (cached)."""
        if self._version is None:
            obj = self.call("read setting server-version", self.custom.get_cluster_custom_object,
                            *HARVESTER, "settings", "server-version")
            self._version = parse_version(str(obj.get("value") or obj.get("default") or ""))
        return self._version

    def _where(self, kind: tuple[str, str, str], namespace: str | None) -> tuple[str, str, str, str]:
        """(group, version, namespace, plural): the client's argument order for namespaced objects."""
        return kind[0], kind[1], namespace or self.namespace, kind[2]

    def get(self, kind: tuple[str, str, str], name: str,
            namespace: str | None = None) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.call(f"get {kind[2]}/{name}", self.custom.get_namespaced_custom_object,
                                            *self._where(kind, namespace), name)
        except NotFound:
            return None
        return obj

    def list_objects(self, kind: tuple[str, str, str], selector: str | None = None,
             namespace: str | None = None) -> list[dict[str, Any]]:
        res = self.call(f"list {kind[2]}", self.custom.list_namespaced_custom_object,
                        *self._where(kind, namespace), label_selector=selector or "")
        return list(res.get("items", []))

    def create(self, kind: tuple[str, str, str], body: dict[str, Any],
               namespace: str | None = None) -> dict[str, Any]:
        name = body["metadata"].get("name") or body["metadata"].get("generateName", "") + "*"
        obj: dict[str, Any] = self.call(f"create {kind[2]}/{name}",
                                        self.custom.create_namespaced_custom_object,
                                        *self._where(kind, namespace), body)
        return obj

    def patch(self, kind: tuple[str, str, str], name: str, patch: dict[str, Any],
              namespace: str | None = None) -> dict[str, Any]:
        """A JSON merge patch: only the keys given change (never PUT a stale object: Harvester's
        image CRD has no status subresource, so a full update could overwrite the controller's status)."""
        obj: dict[str, Any] = self.call(f"patch {kind[2]}/{name}", self.custom.patch_namespaced_custom_object,
                                        *self._where(kind, namespace), name, patch)
        return obj

    def delete(self, kind: tuple[str, str, str], name: str, namespace: str | None = None) -> bool:
        try:
            self.call(f"delete {kind[2]}/{name}", self.custom.delete_namespaced_custom_object,
                      *self._where(kind, namespace), name)
        except NotFound:
            return False
        return True

    def get_secret(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self.call(f"get secret/{name}", self.core.read_namespaced_secret, name, self.namespace)
        except NotFound:
            return None
        result: dict[str, Any] = self.client.sanitize_for_serialization(obj)
        return result

    def create_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        obj = self.call(f"create secret/{body['metadata']['name']}", self.core.create_namespaced_secret,
                        self.namespace, body)
        result: dict[str, Any] = self.client.sanitize_for_serialization(obj)
        return result

    def patch_secret(self, name: str, patch: dict[str, Any]) -> None:
        self.call(f"patch secret/{name}", self.core.patch_namespaced_secret, name, self.namespace, patch)

    def delete_secret(self, name: str) -> bool:
        try:
            self.call(f"delete secret/{name}", self.core.delete_namespaced_secret, name, self.namespace)
        except NotFound:
            return False
        return True

    def setting(self, name: str) -> str | None:
        """A Harvester setting's value (`settings.harvesterhci.io`, cluster-scoped; its `value`,
        else its `default`), or None when it is unset or this account may not read settings."""
        try:
            obj = self.call(f"get setting/{name}", self.custom.get_cluster_custom_object,
                            *HARVESTER, "settings", name)
        except ApiError as e:
            if not isinstance(e, NotFound) and e.status not in (401, 403):
                raise
            return None
        value = obj.get("value") or obj.get("default")
        return str(value) if value else None

    def storage_class(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self.call(f"get storageclass/{name}", self.storage.read_storage_class, name)
        except NotFound:
            return None
        result: dict[str, Any] = self.client.sanitize_for_serialization(obj)
        return result

    def list_secrets(self, selector: str) -> list[dict[str, Any]]:
        res = self.call("list secrets", self.core.list_namespaced_secret, self.namespace,
                        label_selector=selector)
        items: list[dict[str, Any]] = self.client.sanitize_for_serialization(res).get("items", [])
        return items

    # --- the upload action (not a Kubernetes API) ---------------------------------------------

    def upload(self, name: str, size: int, body: Iterable[bytes], length: int, content_type: str) -> None:
        """POST a streamed multipart body to the image's upload action. One attempt: the caller
        decides about retries (a half-sent body cannot be replayed from a generator)."""
        from urllib3.exceptions import HTTPError

        cfg = self.client.configuration
        url = (f"{cfg.host.rstrip('/')}/v1/harvester/harvesterhci.io.virtualmachineimages/"
               f"{self.namespace}/{name}?action=upload&size={size}")
        headers = {"Content-Type": content_type, "Content-Length": str(length)}
        # The same header the client would send: a token (with its refresh hook for exec/OIDC
        # kubeconfigs) or none when the kubeconfig authenticates with a client certificate.
        bearer = cfg.auth_settings().get("BearerToken")
        if bearer and bearer.get("value"):
            headers["Authorization"] = str(bearer["value"])
        pool = self.client.rest_client.pool_manager
        try:
            resp = pool.request("POST", url, body=_chunks(body), headers=headers, preload_content=False,
                                chunked=False, timeout=None, retries=False)
        except HTTPError as e:
            raise ApiError(f"upload {name}: connection to {self.target.server} failed: "
                           f"{type(e).__name__}: {e}", 0) from None
        try:
            text = resp.read(64 * 1024).decode(errors="replace").strip()
        finally:
            resp.release_conn()
        if resp.status in (401, 403):
            self._error(f"upload {name}", resp.status, "", text)
        if resp.status >= 300:
            raise ApiError(f"upload {name}: HTTP {resp.status} {_message(text) or text}", resp.status)


def _chunks(body: Iterable[bytes]) -> Iterator[bytes]:
    yield from body


def _message(body: object) -> str:
    """The `message` of a Kubernetes Status body, else the body text (shortened)."""
    if not body:
        return ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return text[:500]
