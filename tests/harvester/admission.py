"""Request decoding and admission: what the apiserver and the Harvester/KubeVirt webhooks do before storing.

Order follows the apiserver: decode (prune unknown fields + warnings, apply CRD defaults) -> mutating
webhooks -> object validation (metadata + CRD openAPIV3Schema, all errors in one 422) -> validating
webhooks. Harvester VirtualMachineImage/KeyPair schemas come from the real CRDs in ``crds/``; older
Harvester releases are simulated by removing the fields those releases did not have.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema  # type: ignore[import-untyped]
import yaml
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from .resources import (
    BY_PLURAL,
    HARVESTER_WEBHOOK,
    JSON,
    KUBEVIRT_VM_WEBHOOK,
    ApiError,
    Resource,
    label_key_errors,
    label_selector_matches,
    label_value_errors,
    name_errors,
    parse_quantity,
    parse_version,
    webhook_denied,
)

if TYPE_CHECKING:
    from .store import Store

CRD_DIR = Path(__file__).parent / "crds"
LABEL_DISPLAY_NAME = "harvesterhci.io/imageDisplayName"
ANN_STORAGE_CLASS = "harvesterhci.io/storageClassName"
ANN_VOLUME_CLAIM_TEMPLATES = "harvesterhci.io/volumeClaimTemplates"
ANN_RESERVED_MEMORY = "harvesterhci.io/reservedMemory"
DEFAULT_SC_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
LONGHORN_DRIVER = "driver.longhorn.io"
RUN_STRATEGIES = ("Always", "RerunOnFailure", "Manual", "Halted", "Once")
# GetImageDefaultStorageClassParameters (pkg/util/image.go)
DEFAULT_SC_PARAMS = {"numberOfReplicas": "3", "staleReplicaTimeout": "30", "migratable": "true"}

# ObjectMeta fields; anything else under metadata is dropped with a warning, as the apiserver does.
_META_FIELDS = {
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
}


@functools.cache
def _crd_schemas() -> dict[str, JSON]:
    out = {}
    for f in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        out[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return out


def schema_for(kind: str, version: str) -> JSON | None:
    """The CRD schema as served by Harvester ``version`` (fields removed for releases that lacked them)."""
    base = _crd_schemas().get(kind)
    if base is None:
        return None
    schema = copy.deepcopy(base)
    if kind != "VirtualMachineImage":
        return schema
    v = parse_version(version)
    spec, status = schema["properties"]["spec"]["properties"], schema["properties"]["status"]["properties"]
    if v < (1, 5, 0):  # backend + targetStorageClassName arrived with the CDI backend in v1.5
        spec.pop("backend", None)
        spec.pop("targetStorageClassName", None)
        status.pop("targetStorageClassName", None)
    if v < (1, 4, 0):  # image encryption (clone), restore, virtualSize and backupTarget arrived in v1.4
        spec.pop("securityParameters", None)
        spec["sourceType"]["enum"] = [e for e in spec["sourceType"]["enum"] if e not in ("restore", "clone")]
        status.pop("virtualSize", None)
        status.pop("backupTarget", None)
    return schema


def prune(schema: JSON, obj: Any, path: str, unknown: list[str]) -> None:
    """Structural-schema pruning: drop fields the schema does not declare, remembering their paths."""
    if isinstance(obj, dict) and schema.get("type", "object") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        if props is None and not isinstance(addl, dict):
            return  # e.g. `metadata: {type: object}`: handled as ObjectMeta elsewhere
        for key in list(obj):
            sub = f"{path}.{key}" if path else key
            if props is not None and key in props:
                prune(props[key], obj[key], sub, unknown)
            elif isinstance(addl, dict):
                prune(addl, obj[key], sub, unknown)
            elif props is not None and not (path == "" and key in ("apiVersion", "kind", "metadata")):
                unknown.append(sub)
                del obj[key]
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            prune(schema["items"], item, f"{path}[{i}]", unknown)


def apply_defaults(schema: JSON, obj: Any) -> None:
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                apply_defaults(sub, obj[key])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(schema["items"], item)


def _go_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    return {float: "number", str: "string", dict: "object", list: "array"}.get(type(v), "null")


def _field(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def schema_causes(schema: JSON, obj: JSON) -> list[JSON]:
    """jsonschema errors rendered the way kube-openapi's validator words them."""
    causes = []
    for e in sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = _field(e.absolute_path)
        if e.validator == "required":
            missing = [r for r in e.validator_value if r not in e.instance]
            for m in missing:
                field = f"{path}.{m}" if path else m
                causes.append({"reason": "FieldValueRequired", "field": field, "message": "Required value"})
            continue
        if e.validator == "enum":
            allowed = ", ".join(json.dumps(v) for v in e.validator_value)
            msg = f"Unsupported value: {json.dumps(e.instance)}: supported values: {allowed}"
            causes.append({"reason": "FieldValueNotSupported", "field": path, "message": msg})
        elif e.validator == "type":
            got = _go_type(e.instance)
            msg = f'Invalid value: "{got}": {path} in body must be of type {e.validator_value}: "{got}"'
            causes.append({"reason": "FieldValueTypeInvalid", "field": path, "message": msg})
        elif e.validator in ("maximum", "minimum"):
            word = "less" if e.validator == "maximum" else "greater"
            msg = (
                f"Invalid value: {json.dumps(e.instance)}: {path} in body should be {word} than or equal "
                f"to {e.validator_value}"
            )
            causes.append({"reason": "FieldValueInvalid", "field": path, "message": msg})
        else:
            msg = f"Invalid value: {json.dumps(e.instance)}: {e.message}"
            causes.append({"reason": "FieldValueInvalid", "field": path, "message": msg})
    return causes


def invalid(res: Resource, name: str, causes: list[JSON]) -> ApiError:
    texts = [f"{c['field']}: {c['message']}" for c in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(
        422,
        f'{res.group_kind} "{name}" is invalid: {joined}',
        details={"name": name, "group": res.group, "kind": res.kind, "causes": causes},
    )


def _cause(field: str, message: str) -> JSON:
    return {"reason": "FieldValueInvalid", "field": field, "message": message}


class Admission:
    def __init__(self, store: Store, version: Any) -> None:
        self.store = store
        self._version = version  # callable returning the current simulated Harvester version

    @property
    def version(self) -> tuple[int, int, int]:
        return parse_version(self._version())

    # --- decoding ---------------------------------------------------------------------------------------

    def decode(self, res: Resource, body: Any, field_validation: str, warnings: list[str]) -> JSON:
        if not isinstance(body, dict):
            raise ApiError(400, f"json: cannot unmarshal {_go_type(body)} into Go value of type {res.kind}")
        obj = copy.deepcopy(body)
        if res.custom and not obj.get("kind"):
            raise ApiError(400, f"Object 'Kind' is missing in '{json.dumps(body)}'")
        if obj.get("apiVersion", res.api_version) != res.api_version:
            raise ApiError(
                400,
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({res.api_version})",
            )
        if obj.get("kind", res.kind) != res.kind:
            raise ApiError(
                400, f"the kind in the data ({obj.get('kind')}) does not match the expected kind ({res.kind})"
            )
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "json: cannot unmarshal into Go struct field .metadata of type v1.ObjectMeta")
        for key in ("labels", "annotations"):
            value = meta.get(key)
            if value is not None and (
                not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())
            ):
                raise ApiError(
                    400,
                    f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{key} of "
                    "type map[string]string",
                )
        unknown = [f"metadata.{k}" for k in list(meta) if k not in _META_FIELDS]
        for k in unknown:
            del meta[k.split(".", 1)[1]]
        schema = schema_for(res.kind, self._version())
        if schema is not None:
            prune(schema, obj, "", unknown)
            apply_defaults(schema, obj)
        if res.plural == "secrets":
            self._decode_secret(obj)
        if unknown:
            if field_validation == "Strict":
                raise ApiError(
                    400,
                    f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                    f'strict decoding error: unknown field "{unknown[0]}"',
                )
            if field_validation != "Ignore":
                warnings.extend(f'unknown field "{u}"' for u in unknown)
        return obj

    @staticmethod
    def _decode_secret(obj: JSON) -> None:
        # The apiserver merges write-only stringData into data (base64) and rejects bad base64.
        data = obj.get("data") or {}
        for k, v in data.items():
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, TypeError) as e:
                raise ApiError(400, f"illegal base64 data in Secret data key {k!r}") from e
        for k, v in (obj.pop("stringData", None) or {}).items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        if data:
            obj["data"] = data
        obj.setdefault("type", "Opaque")

    # --- validation of the object itself ----------------------------------------------------------------

    def validate_object(self, res: Resource, obj: JSON, *, update: bool = False) -> None:
        meta, causes = obj["metadata"], []
        name = meta.get("name", "")
        if not name:
            causes.append(
                {
                    "reason": "FieldValueRequired",
                    "field": "metadata.name",
                    "message": "Required value: name or generateName is required",
                }
            )
        for err in name_errors(name, dns_label=res.plural == "namespaces") if name else []:
            causes.append(_cause("metadata.name", f"Invalid value: {json.dumps(name)}: {err}"))
        for k, v in (meta.get("labels") or {}).items():
            for err in label_key_errors(k):
                causes.append(_cause("metadata.labels", f"Invalid value: {json.dumps(k)}: {err}"))
            for err in label_value_errors(v):
                causes.append(_cause("metadata.labels", f"Invalid value: {json.dumps(v)}: {err}"))
        if update and res.custom and not meta.get("resourceVersion"):
            causes.append(
                _cause("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")
            )
        schema = schema_for(res.kind, self._version())
        if schema is not None:
            causes.extend(schema_causes(schema, obj))
        if causes:
            raise invalid(res, name, causes)

    # --- mutating webhooks ------------------------------------------------------------------------------

    def mutate_create(self, res: Resource, obj: JSON) -> JSON:
        if res.plural == "virtualmachineimages":
            self._mutate_image(obj)
        elif res.plural == "virtualmachines":
            self._mutate_vm(obj)
        elif res.plural == "namespaces":
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"].get(
                "name", ""
            )
            obj["spec"], obj["status"] = {"finalizers": ["kubernetes"]}, {"phase": "Active"}
        elif res.plural == "persistentvolumeclaims":
            spec = obj.setdefault("spec", {})
            default = self.default_storage_class()
            if spec.get("storageClassName") is None and default is not None:  # DefaultStorageClass plugin
                spec["storageClassName"] = default["metadata"]["name"]
            obj["status"] = {"phase": "Pending"}
        return obj

    def _mutate_vm(self, obj: JSON) -> None:
        # patchResourceOvercommit (pkg/webhook/resources/virtualmachine/mutator.go): the guest gets
        # limits.memory minus the reserved memory; the annotation harvesterhci.io/reservedMemory
        # overrides Harvester's default reserve (not modelled: the guest size is left unset then).
        raw = (obj["metadata"].get("annotations") or {}).get(ANN_RESERVED_MEMORY)
        domain = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("domain") or {}
        limit = ((domain.get("resources") or {}).get("limits") or {}).get("memory")
        if raw is None or limit is None:
            return
        try:
            guest = parse_quantity(limit) - parse_quantity(raw)
        except ValueError:
            return  # refused by the validating webhook
        if guest > 0:
            domain.setdefault("memory", {})["guest"] = f"{guest // 1024**2}Mi"

    def _injects_display_name_label(self) -> bool:
        # The webhook injects the label at create from v1.7.3, v1.8.2 and v1.9 on (contract §4);
        # earlier releases only sync it in the controller once the image is imported.
        v = self.version
        return (1, 7, 3) <= v < (1, 8, 0) or v >= (1, 8, 2)

    def _mutate_image(self, obj: JSON) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return
        display = spec.get("displayName")
        # v1.7.3/v1.8.2 inject unconditionally, so an invalid value fails metadata validation (#11464);
        # from v1.9 the validator rejects it with its own message first (PR #10490).
        if (
            self._injects_display_name_label()
            and isinstance(display, str)
            and (self.version < (1, 9, 0) or not label_value_errors(display))
        ):
            obj["metadata"].setdefault("labels", {})[LABEL_DISPLAY_NAME] = display
        # PatchImageSCParams: defaults + allow-listed keys of the template SC (annotation) or the default
        # Longhorn SC; only when neither exists do the user's own parameters survive.
        annotations = obj["metadata"].get("annotations") or {}
        template = None
        if annotations.get(ANN_STORAGE_CLASS):
            template = self.store.get(BY_PLURAL["storageclasses"], None, annotations[ANN_STORAGE_CLASS])
        if template is None:
            default = self.default_storage_class()
            if default is not None and default.get("provisioner") == LONGHORN_DRIVER:
                template = default
        params = dict(DEFAULT_SC_PARAMS)
        if template is not None:
            allowed = self._sc_param_allow_list()
            params.update({k: v for k, v in (template.get("parameters") or {}).items() if k in allowed})
        elif isinstance(spec.get("storageClassParameters"), dict):
            params.update(spec["storageClassParameters"])
        spec["storageClassParameters"] = params
        if self.version >= (1, 5, 0) and not spec.get("targetStorageClassName"):
            target = annotations.get(ANN_STORAGE_CLASS) or (self.default_storage_class() or {}).get(
                "metadata", {}
            ).get("name")
            if target:
                spec["targetStorageClassName"] = target

    def _sc_param_allow_list(self) -> set[str]:
        allowed = {"nodeSelector", "diskSelector", "numberOfReplicas", "staleReplicaTimeout"}
        if self.version >= (1, 3, 0):
            allowed.add("dataLocality")
        if self.version >= (1, 4, 0):
            allowed |= {"encrypted"} | {
                f"csi.storage.k8s.io/{kind}-secret-{part}"
                for kind in ("provisioner", "node-stage", "node-publish")
                for part in ("name", "namespace")
            }
        return allowed

    def default_storage_class(self) -> JSON | None:
        for sc in self.store.list(BY_PLURAL["storageclasses"]):
            if (sc["metadata"].get("annotations") or {}).get(DEFAULT_SC_ANNOTATION) == "true":
                return sc
        return None

    # --- validating webhooks ----------------------------------------------------------------------------

    def validate_create(self, res: Resource, obj: JSON) -> None:
        if res.plural == "virtualmachineimages":
            self._validate_image(obj, None)
        elif res.plural == "keypairs":
            self._validate_keypair(obj)
        elif res.plural == "virtualmachines":
            self._validate_vm(obj)

    def validate_update(self, res: Resource, old: JSON, new: JSON) -> None:
        if res.plural == "virtualmachineimages":
            self._validate_image(new, old)
        elif res.plural == "keypairs":
            self._validate_keypair(new)
        elif res.plural == "virtualmachines":
            self._validate_vm(new)

    def validate_delete(self, res: Resource, obj: JSON) -> None:
        if res.plural != "virtualmachineimages":
            return
        sc_name = (obj.get("status") or {}).get("storageClassName")
        if not sc_name:
            return
        for pvc in self.store.list(BY_PLURAL["persistentvolumeclaims"]):
            if (pvc.get("spec") or {}).get("storageClassName") == sc_name:
                m = obj["metadata"]
                raise webhook_denied(
                    HARVESTER_WEBHOOK,
                    f"Cannot delete image {m['namespace']}/{obj['spec'].get('displayName')}: being used by "
                    f"volume {pvc['metadata']['namespace']}/{pvc['metadata']['name']}",
                )

    def _validate_image(self, obj: JSON, old: JSON | None) -> None:
        spec, meta = obj["spec"], obj["metadata"]

        def deny(msg: str, field: str = "", code: int = 422) -> ApiError:
            return webhook_denied(HARVESTER_WEBHOOK, msg, code, field)

        display = spec.get("displayName", "")
        if old is None:
            if self.version >= (1, 9, 0) and (errs := label_value_errors(display)):
                raise deny(
                    f"displayName is not a valid Kubernetes label value: {'; '.join(errs)}",
                    "spec.displayName",
                )
        elif display != old["spec"].get("displayName"):
            raise deny("displayName cannot be modified", "spec.displayName")
        if not display:
            raise deny("displayName is required", "spec.displayName")
        # commonCheckDisplayName lists images by the display-name label: images that do not carry the
        # label yet (older releases, before import) are not seen, exactly like the real webhook.
        for other in self.store.list(BY_PLURAL["virtualmachineimages"], meta.get("namespace")):
            if other["metadata"]["uid"] != meta.get("uid") and label_selector_matches(
                f"{LABEL_DISPLAY_NAME}={display}", other["metadata"].get("labels") or {}
            ):
                raise deny("A resource with the same name exists", code=409)
        source, url = spec.get("sourceType"), spec.get("url", "")
        if source in ("download", "restore"):
            if not url:
                raise deny("url is required", "spec.url")
        elif url:
            raise deny(f'url should be empty when image source type is "{source}"', "spec.url")
        if source == "export-from-volume":
            for key in ("pvcNamespace", "pvcName"):
                if not spec.get(key):
                    raise deny(
                        f'{key} is required when image source type is "export-from-volume"', f"spec.{key}"
                    )
        if source == "clone" and not spec.get("securityParameters"):
            raise deny(
                'sourceParameters is required when image source type is "clone"', "spec.sourceParameters"
            )
        if old is not None:
            ospec = old["spec"]
            for key, label in (
                ("sourceType", "sourceType"),
                ("url", "url"),
                ("pvcName", "pvcName"),
                ("pvcNamespace", "pvcNamespace"),
                ("securityParameters", "securityParameters"),
                ("storageClassParameters", "storageClassParameters of the VM Image"),
            ):
                if spec.get(key) != ospec.get(key):
                    raise deny(f"{label} cannot be modified", f"spec.{key}")

    def _validate_keypair(self, obj: JSON) -> None:
        key = obj["spec"].get("publicKey", "")
        if not key:
            raise webhook_denied(HARVESTER_WEBHOOK, "public key is required", field="spec.publicKey")
        try:
            load_ssh_public_key(authorized_key_part(key).encode())
        except (ValueError, TypeError, binascii.Error) as e:
            raise webhook_denied(
                HARVESTER_WEBHOOK, "key is not in valid OpenSSH public key format", field="spec.publicKey"
            ) from e

    def _validate_vm(self, obj: JSON) -> None:
        ns = obj["metadata"].get("namespace")
        raw = (obj["metadata"].get("annotations") or {}).get(ANN_RESERVED_MEMORY)
        if raw is not None:
            tspec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
            limits = ((tspec.get("domain") or {}).get("resources") or {}).get("limits") or {}
            field = f"metadata.annotations[{ANN_RESERVED_MEMORY}]"
            try:
                reserved = parse_quantity(raw)
            except ValueError:
                raise webhook_denied(HARVESTER_WEBHOOK, f"invalid reservedMemory {raw!r}",
                                     field=field) from None
            if "memory" in limits and reserved >= parse_quantity(limits["memory"]):
                raise webhook_denied(HARVESTER_WEBHOOK, f"reservedMemory {raw} must be less than the memory "
                                     f"limit {limits['memory']}", field=field)
        spec = obj.get("spec")
        if not isinstance(spec, dict) or not isinstance((spec.get("template") or {}).get("spec"), dict):
            raise webhook_denied(
                KUBEVIRT_VM_WEBHOOK, "spec.template.spec: Required value", field="spec.template"
            )
        tspec = spec["template"]["spec"]
        if "running" in spec and "runStrategy" in spec:
            raise webhook_denied(KUBEVIRT_VM_WEBHOOK, "Running and RunStrategy are mutually exclusive")
        if "runStrategy" in spec and spec["runStrategy"] not in RUN_STRATEGIES:
            raise webhook_denied(
                KUBEVIRT_VM_WEBHOOK, f"Invalid RunStrategy ({spec['runStrategy']})", field="spec.runStrategy"
            )
        # kubevirt pkg/virt-api/webhooks/validating-webhook/admitters (validateDomainSpec): an EFI
        # bootloader's secureBoot defaults to true when unset, and Secure Boot needs SMM.
        domain = tspec.get("domain") or {}
        efi = ((domain.get("firmware") or {}).get("bootloader") or {}).get("efi")
        smm = (domain.get("features") or {}).get("smm")
        if isinstance(efi, dict) and efi.get("secureBoot", True) is not False and \
                (not isinstance(smm, dict) or smm.get("enabled", True) is False):
            raise webhook_denied(
                KUBEVIRT_VM_WEBHOOK, "spec.template.spec.domain has EFI SecureBoot enabled. SecureBoot "
                "requires SMM, which is currently disabled.", field="spec.template.spec.domain")
        volumes = {v.get("name"): v for v in tspec.get("volumes") or []}
        devices = domain.get("devices") or {}
        for i, disk in enumerate(devices.get("disks") or []):
            if disk.get("name") not in volumes:
                raise webhook_denied(
                    KUBEVIRT_VM_WEBHOOK,
                    f"spec.template.spec.domain.devices.disks[{i}].Name '{disk.get('name')}' not found.",
                    field=f"spec.template.spec.domain.devices.disks[{i}].name",
                )
        networks = {n.get("name") for n in tspec.get("networks") or []}
        for i, iface in enumerate(devices.get("interfaces") or []):
            if iface.get("name") not in networks:
                raise webhook_denied(
                    KUBEVIRT_VM_WEBHOOK,
                    f"spec.template.spec.domain.devices.interfaces[{i}].name "
                    f"'{iface.get('name')}' not found.",
                )
        claims = self._validate_volume_claim_templates(obj)
        pvcs = BY_PLURAL["persistentvolumeclaims"]
        for vol in volumes.values():
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in claims and self.store.get(pvcs, ns, claim) is None:
                raise webhook_denied(
                    HARVESTER_WEBHOOK,
                    f"PVC {ns}/{claim} not found: it is neither in the "
                    f"{ANN_VOLUME_CLAIM_TEMPLATES} annotation nor an existing PVC",
                )

    def _validate_volume_claim_templates(self, obj: JSON) -> set[str]:
        raw = (obj["metadata"].get("annotations") or {}).get(ANN_VOLUME_CLAIM_TEMPLATES)
        if raw is None:
            return set()

        def deny(msg: str) -> ApiError:
            return webhook_denied(
                HARVESTER_WEBHOOK, msg, field=f"metadata.annotations[{ANN_VOLUME_CLAIM_TEMPLATES}]"
            )

        try:
            templates = json.loads(raw)
        except json.JSONDecodeError as e:
            raise deny(f"failed to unmarshal {ANN_VOLUME_CLAIM_TEMPLATES}: {e}") from e
        if not isinstance(templates, list) or not all(isinstance(t, dict) for t in templates):
            raise deny(f"{ANN_VOLUME_CLAIM_TEMPLATES} must be a JSON list of PersistentVolumeClaim objects")
        names = set()
        for pvc in templates:
            name = (pvc.get("metadata") or {}).get("name")
            if not name:
                raise deny("PVC name is required")
            names.add(name)
            pspec = pvc.get("spec") or {}
            sc_name = pspec.get("storageClassName")
            if not sc_name:
                continue  # the default StorageClass applies
            sc = self.store.get(BY_PLURAL["storageclasses"], None, sc_name)
            if sc is None:
                raise deny(f"storageclass {sc_name} not found (PVC {name})")
            image = self.image_for_storage_class(sc)
            if image is None:
                continue
            ref = f"{image['metadata']['namespace']}/{image['metadata']['name']}"
            if not condition_true(image, "Imported"):
                raise deny(
                    f"PVC {name}: image {ref} ({image['spec'].get('displayName')}) is not ready: "
                    "condition Imported is not True"
                )
            wanted = ((pspec.get("resources") or {}).get("requests") or {}).get("storage")
            vsize = (image.get("status") or {}).get("virtualSize") or (image.get("status") or {}).get("size")
            try:
                requested = parse_quantity(wanted) if wanted is not None else 0
            except ValueError as e:
                raise deny(f"PVC {name}: {e}") from e
            if vsize and requested < int(vsize):
                raise deny(
                    f"PVC {name}: requested storage {wanted} ({requested} bytes) is smaller than the "
                    f"virtual size {vsize} of image {ref}"
                )
        return names

    def image_for_storage_class(self, sc: JSON) -> JSON | None:
        """StorageClass.parameters.backingImage -> the image (vmi-<uid>), the link maintainers support."""
        bi = (sc.get("parameters") or {}).get("backingImage", "")
        if not bi.startswith("vmi-"):
            return None
        for image in self.store.list(BY_PLURAL["virtualmachineimages"]):
            if image["metadata"]["uid"] == bi[4:]:
                return image
        return None


def condition_true(obj: JSON, ctype: str) -> bool:
    return any(
        c.get("type") == ctype and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def authorized_key_part(line: str) -> str:
    """ "[options] type base64 [comment]" -> "type base64" (ssh.ParseAuthorizedKey accepts options)."""
    fields = line.strip().split()
    for i, f in enumerate(fields):
        if re.fullmatch(r"(ssh-|ecdsa-|sk-)[\w@.-]+", f) and i + 1 < len(fields):
            return f"{f} {fields[i + 1]}"
    return line.strip()


def ssh_md5_fingerprint(line: str) -> str:
    """ssh.FingerprintLegacyMD5: MD5 of the wire-format key blob as colon-separated hex."""
    import hashlib

    blob = base64.b64decode(authorized_key_part(line).split()[1])
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
