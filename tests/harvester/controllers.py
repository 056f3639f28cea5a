"""Simulated controllers: Harvester image + keypair controllers, Longhorn import, KubeVirt VM/VMI, PVC
binding, garbage collection. Driven by ``Controllers.tick`` every ``double.tick`` seconds; downloads run
in worker threads so a slow source never stalls the rest of the cluster.

Image state machine (after pkg/image/common/operator.go and pkg/controller/master/image):
  initialize: [download: HEAD url] -> [Longhorn BackingImage webhook: checksum must be SHA-512 hex]
              -> StorageClass created, Initialized=True, Imported=Unknown/Importing, progress 0
  import:     download: GET, SHA-512, progress (<=99) ; upload: wait ``upload_window`` for the POST
  finish:     Imported=True progress 100 size virtualSize | failure
  failure:    failed += 1, lastFailedTime,
              RetryLimitExceeded False "[retry attempted n/N ]failed due to error: ..."
              -> after ``retry_backoff`` initialize again; once failed > spec.retry: RetryLimitExceeded True
              and the failing condition False, and the controller ignores the image from then on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from imagefactory.harvester.goproxy import ProxyConfig

from . import guest
from .admission import (
    ANN_VOLUME_CLAIM_TEMPLATES,
    LABEL_DISPLAY_NAME,
    LONGHORN_DRIVER,
    condition_true,
    ssh_md5_fingerprint,
)
from .resources import BY_PLURAL, JSON, ApiError, label_value_errors, now_rfc3339, parse_version

if TYPE_CHECKING:
    from .double import HarvesterDouble

IMAGES, KEYPAIRS = BY_PLURAL["virtualmachineimages"], BY_PLURAL["keypairs"]
VMS, VMIS = BY_PLURAL["virtualmachines"], BY_PLURAL["virtualmachineinstances"]
PVCS, SCS, SECRETS = BY_PLURAL["persistentvolumeclaims"], BY_PLURAL["storageclasses"], BY_PLURAL["secrets"]
SETTINGS = BY_PLURAL["settings"]
ANN_REMOVED_PVCS = "harvesterhci.io/removedPersistentVolumeClaims"
SHA512_HEX = re.compile(r"^[a-f0-9]{128}$")
QCOW2_MAGIC = b"QFI\xfb"
UPLOAD_TIMEOUT_MSG = "timeout waiting for the datasource file processing begin"


def set_condition(
    obj: JSON, ctype: str, status: str, reason: str | None = None, message: str | None = None
) -> None:
    """norman condition semantics: reason/message only change when given; transition time on status change."""
    conds = obj.setdefault("status", {}).setdefault("conditions", [])
    cond = next((c for c in conds if c.get("type") == ctype), None)
    now = now_rfc3339()
    if cond is None:
        cond = {"type": ctype, "status": status, "lastTransitionTime": now}
        conds.append(cond)
    elif cond.get("status") != status:
        cond["lastTransitionTime"] = now
    cond["status"], cond["lastUpdateTime"] = status, now
    if reason is not None:
        cond["reason"] = reason
    if message is not None:
        cond["message"] = message


def qcow2_virtual_size(head: bytes, size: int) -> int:
    """qcow2 header: magic "QFI\\xfb", big-endian u64 virtual size at offset 24; raw images: file size."""
    if head[:4] == QCOW2_MAGIC and len(head) >= 32:
        return int.from_bytes(head[24:32], "big")
    return size


@dataclass
class ImageRun:
    uid: str
    namespace: str
    name: str
    state: str = "new"  # new|initializing|waiting-upload|uploading|importing|backoff|done|stopped
    retry_at: float = 0.0
    ds_started: float = 0.0  # when the Longhorn data source started waiting for an upload


@dataclass
class VmiRun:
    ticks: int = 0
    ips: list[str] = field(default_factory=list)
    macs: list[str] = field(default_factory=list)


class Controllers:
    def __init__(self, double: HarvesterDouble) -> None:
        self.d = double
        self.store = double.store
        self.images: dict[str, ImageRun] = {}
        self._vmis: dict[str, VmiRun] = {}
        self._addr = 10
        self.stop = threading.Event()
        self._workers: list[threading.Thread] = []

    # --- loop -------------------------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stop.wait(self.d.tick):
            try:
                self.tick()
            except Exception as e:  # keep simulating; tests assert double.errors is empty
                self.d.errors.append(f"controller: {type(e).__name__}: {e}")

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))

    def tick(self) -> None:
        self._process_deletions()
        self._reconcile_images()
        self._reconcile_keypairs()
        self._reconcile_pvcs()
        self._reconcile_vms()
        self._reconcile_vmis()

    # --- deletions and garbage collection ---------------------------------------------------------------

    def _process_deletions(self) -> None:
        while events := self.store.drain_deleted():
            deleted_uids = set()
            for res, obj in events:
                meta = obj["metadata"]
                deleted_uids.add(meta.get("uid"))
                if res.plural == "namespaces":
                    for other_res, other in self.store.all_objects():
                        if other_res.namespaced and other["metadata"].get("namespace") == meta["name"]:
                            self._delete_quietly(other_res.plural, meta["name"], other["metadata"]["name"])
                elif res.plural == "virtualmachines":
                    # Harvester's VM controller removes only the PVCs listed in this annotation.
                    removed = (meta.get("annotations") or {}).get(ANN_REMOVED_PVCS, "")
                    for pvc in filter(None, (p.strip() for p in removed.split(","))):
                        self._delete_quietly("persistentvolumeclaims", meta["namespace"], pvc)
                elif res.plural == "virtualmachineimages":
                    self.images.pop(meta["uid"], None)
                    sc = self.store.get(SCS, None, (obj.get("status") or {}).get("storageClassName", ""))
                    if (
                        sc is not None
                        and (sc.get("parameters") or {}).get("backingImage") == f"vmi-{meta['uid']}"
                    ):
                        self._delete_quietly("storageclasses", None, sc["metadata"]["name"])
                elif res.plural == "virtualmachineinstances":
                    self._vmis.pop(meta["uid"], None)
            # Background propagation: dependents whose owners are all gone follow them.
            for other_res, other in self.store.all_objects():
                owners = other["metadata"].get("ownerReferences") or []
                uids = {o.get("uid") for o in owners}
                if owners and uids & deleted_uids and not any(self.store.exists_uid(u) for u in uids):
                    m = other["metadata"]
                    self._delete_quietly(other_res.plural, m.get("namespace"), m["name"])

    def _delete_quietly(self, plural: str, namespace: str | None, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.store.remove(BY_PLURAL[plural], namespace, name)

    # --- images -----------------------------------------------------------------------------------------

    def _reconcile_images(self) -> None:
        now = time.monotonic()
        for img in self.store.list(IMAGES):
            meta = img["metadata"]
            with self.store.lock:
                run = self.images.setdefault(
                    meta["uid"], ImageRun(meta["uid"], meta["namespace"], meta["name"])
                )
            if condition_true(img, "RetryLimitExceeded"):
                run.state = "stopped"
                continue
            if condition_true(img, "Imported"):
                run.state = "done"
                self._sync_display_name_label(img)
                continue
            if run.state == "new" or (run.state == "backoff" and now >= run.retry_at):
                self._initialize(img, run)
            elif run.state == "waiting-upload" and now - run.ds_started > self.d.upload_window:
                self.fail(run, "Imported", UPLOAD_TIMEOUT_MSG, 0)

    def _sync_display_name_label(self, img: JSON) -> None:
        # Before the webhook injected it (v1.7.3/v1.8.2), the controller set the label after import; an
        # invalid label value made that update fail, so such images never got the label (issue #11464).
        display = img["spec"].get("displayName", "")
        if (img["metadata"].get("labels") or {}).get(LABEL_DISPLAY_NAME) == display or label_value_errors(
            display
        ):
            return

        def label(o: JSON) -> None:
            o["metadata"].setdefault("labels", {})[LABEL_DISPLAY_NAME] = display

        self.store.mutate(
            IMAGES, img["metadata"]["namespace"], img["metadata"]["name"], img["metadata"]["uid"], label
        )

    def _initialize(self, img: JSON, run: ImageRun) -> None:
        source = img["spec"].get("sourceType")
        if source == "download":
            run.state = "initializing"
            t = threading.Thread(
                target=self._download_guarded,
                args=(run, img),
                daemon=True,
                name=f"harvester-double-download-{run.name}",
            )
            self._workers = [w for w in self._workers if w.is_alive()] + [t]
            t.start()
        elif source == "upload" and self._check_backing_image(run, img):
            with self.store.lock:
                self._initialized(run, img, size=None)
                run.state, run.ds_started = "waiting-upload", time.monotonic()
        # export-from-volume / restore / clone are not simulated: such images stay uninitialized.

    def _check_backing_image(self, run: ImageRun, img: JSON) -> bool:
        checksum = img["spec"].get("checksum", "")
        if checksum and not SHA512_HEX.match(checksum):
            # Longhorn's BackingImage webhook (ValidateChecksumSHA512) refuses the BackingImage.
            self.fail(
                run,
                "Initialized",
                f"failed to create backing image vmi-{run.uid}: admission webhook "
                f'"validator.longhorn.io" denied the request: invalid checksum {checksum}',
                0,
            )
            return False
        return True

    def storage_class_name(self, img: JSON) -> str:
        if parse_version(self.d.version) >= (1, 8, 0):
            return f"lh-{img['metadata']['uid']}"
        return f"longhorn-{img['metadata']['name']}"

    def _initialized(self, run: ImageRun, img: JSON, size: int | None) -> None:
        sc_name = self.storage_class_name(img)
        self._delete_quietly("storageclasses", None, sc_name)
        params = {"backingImage": f"vmi-{run.uid}", **(img["spec"].get("storageClassParameters") or {})}
        self.store.insert(
            SCS,
            {
                "metadata": {"name": sc_name},
                "provisioner": LONGHORN_DRIVER,
                "reclaimPolicy": "Delete",
                "allowVolumeExpansion": True,
                "volumeBindingMode": "Immediate",
                "parameters": params,
            },
        )

        def transit(o: JSON) -> None:
            st = o.setdefault("status", {})
            st["appliedUrl"] = o["spec"].get("url", "")
            st["storageClassName"] = sc_name
            st["progress"] = 0
            if size:
                st["size"] = size
            set_condition(o, "Imported", "Unknown", reason="Importing")
            set_condition(o, "Initialized", "True", reason="Initialized", message="")

        self.store.mutate(IMAGES, run.namespace, run.name, run.uid, transit)

    def fail(self, run: ImageRun, cond: str, msg: str, progress: int) -> None:
        """failStateTransit: count the failure; give up once failed > spec.retry."""
        exceeded = False

        def transit(o: JSON) -> None:
            nonlocal exceeded
            st = o.setdefault("status", {})
            st["failed"] = int(st.get("failed") or 0) + 1
            st["lastFailedTime"] = now_rfc3339()
            st["progress"] = progress
            retry = int(o["spec"].get("retry", 3))
            text = f"failed due to error: {msg}"
            if st["failed"] > 1:
                text = f"retry attempted {st['failed'] - 1}/{retry} {text}"
            exceeded = st["failed"] > retry
            set_condition(o, "RetryLimitExceeded", "True" if exceeded else "False", message=text)
            if exceeded:
                set_condition(o, cond, "False", message=text)

        with self.store.lock:
            if self.store.mutate(IMAGES, run.namespace, run.name, run.uid, transit) is None:
                return
            run.state = "stopped" if exceeded else "backoff"
            run.retry_at = time.monotonic() + self.d.retry_backoff

    def fail_upload(self, run: ImageRun, msg: str) -> None:
        """FailUpload: what the upload handler records on the image for any Longhorn-side error."""
        self.store.mutate(
            IMAGES,
            run.namespace,
            run.name,
            run.uid,
            lambda o: set_condition(o, "Imported", "False", reason="UploadFailed", message=msg),
        )

    def importing(self, run: ImageRun, done: int, total: int | None) -> None:
        progress = min(99, done * 100 // total) if total else 0

        def transit(o: JSON) -> None:
            o.setdefault("status", {})["progress"] = progress
            set_condition(
                o,
                "Imported",
                "Unknown",
                reason="Importing",
                message=f"importing: {done} of {total or '?'} bytes",
            )

        self.store.mutate(IMAGES, run.namespace, run.name, run.uid, transit)

    def imported(self, run: ImageRun, size: int, virtual_size: int) -> None:
        def transit(o: JSON) -> None:
            st = o.setdefault("status", {})
            st["progress"], st["size"] = 100, size
            if parse_version(self.d.version) >= (1, 4, 0):  # status.virtualSize exists from v1.4
                st["virtualSize"] = virtual_size
            set_condition(o, "Imported", "True", reason="Imported", message="")
            set_condition(o, "RetryLimitExceeded", "False", reason="", message="")

        with self.store.lock:
            self.store.mutate(IMAGES, run.namespace, run.name, run.uid, transit)
            run.state = "done"

    def _alive(self, run: ImageRun) -> bool:
        img = self.store.get(IMAGES, run.namespace, run.name)
        return not self.stop.is_set() and img is not None and img["metadata"]["uid"] == run.uid

    def _proxy_for(self, url: str) -> str | None:
        """The proxy of Harvester's `http-proxy` setting for `url`, by Go's httpproxy rules
        (`imagefactory.harvester.goproxy`, tested against Go's documented cases): loopback never."""
        setting = self.store.get(SETTINGS, None, "http-proxy")
        try:
            value = json.loads((setting or {}).get("value") or "{}")
        except ValueError:
            value = {}
        return ProxyConfig.from_setting(value if isinstance(value, dict) else None).proxy_for(url)

    def _download_guarded(self, run: ImageRun, img: JSON) -> None:
        try:
            self._download(run, img)
        except Exception as e:  # a bug in the double, not a simulated failure
            self.d.errors.append(f"download worker {run.namespace}/{run.name}: {type(e).__name__}: {e}")

    def _download(self, run: ImageRun, img: JSON) -> None:
        url, checksum = img["spec"].get("url", ""), img["spec"].get("checksum", "")
        proxy = self._proxy_for(url)
        opener = _opener(self.d.additional_ca, proxy)
        try:
            with opener.open(urllib.request.Request(url, method="HEAD"), timeout=10) as resp:
                length = int(resp.headers.get("Content-Length") or 0)
        except urllib.error.HTTPError as e:
            return self.fail(run, "Initialized", f"got {e.code} status code from {url}", 0)
        except (OSError, ValueError) as e:
            return self.fail(run, "Initialized", _go_error("Head", url, e, proxy), 0)
        if not self._alive(run) or not self._check_backing_image(run, img):
            return None
        with self.store.lock:
            self._initialized(run, img, size=length)
            run.state = "importing"
        digest, done, head = hashlib.sha512(), 0, b""
        started, last_update = time.monotonic(), 0.0
        rate = self.d.download_rate
        block = max(1024, min(65536, rate // 10)) if rate else 65536
        try:
            with opener.open(urllib.request.Request(url), timeout=10) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or length
                while chunk := resp.read(block):
                    digest.update(chunk)
                    done += len(chunk)
                    if len(head) < 32:
                        head += chunk[: 32 - len(head)]
                    if rate:  # sleep until done/elapsed <= rate
                        ahead = done / rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                    if time.monotonic() - last_update >= max(self.d.tick, 0.05):
                        if not self._alive(run):
                            return None
                        self.importing(run, done, total)
                        last_update = time.monotonic()
        except (OSError, ValueError) as e:
            return self.fail(run, "Imported", _go_error("Get", url, e, proxy),
                             min(99, done * 100 // max(length, 1)))
        if not self._alive(run):
            return None
        if done % 512:
            # Longhorn writes backing images with direct I/O: "The image size must be a multiple
            # of 512 bytes" (Longhorn's backing-image docs). The wording here is the double's.
            return self.fail(run, "Imported", f"the downloaded file size {done} should be a multiple of "
                             "512 bytes since Longhorn uses directIO", 99)
        actual = digest.hexdigest()
        if checksum and checksum != actual:
            msg = f"the expected checksum {checksum} doesn't match the file actual checksum {actual}"
            return self.fail(run, "Imported", msg, 99)
        self.imported(run, done, qcow2_virtual_size(head, done))
        return None

    # --- uploads (called from the HTTP layer) -----------------------------------------------------------

    def claim_upload(self, namespace: str, name: str, wait: float) -> ImageRun | ApiError:
        """Wait (like waitForBackingImageDataSourceReady) for the data source to accept an upload."""
        deadline = time.monotonic() + wait
        while True:
            with self.store.lock:
                img = self.store.get(IMAGES, namespace, name)
                run = self.images.get(img["metadata"]["uid"]) if img else None
                if run is not None and run.state == "waiting-upload":
                    run.state = "uploading"
                    return run
                if run is not None and run.state == "uploading":
                    return ApiError(
                        400,
                        "upload failed: the backing image data source file already exists: "
                        "another upload is in progress",
                        reason="BadRequest",
                    )
                if run is not None and run.state in ("stopped", "done"):
                    return ApiError(
                        500,
                        f"backing image data source of {namespace}/{name} is {run.state}: "
                        "it does not accept uploads",
                        reason="InternalError",
                    )
            if time.monotonic() >= deadline or self.stop.is_set():
                return ApiError(500, "timeout waiting for backing image data source to be ready")
            time.sleep(min(0.02, self.d.tick))

    def release_upload(self, run: ImageRun) -> None:
        """The request was refused before data flowed: the data source keeps waiting, its window running."""
        with self.store.lock:
            if run.state == "uploading":
                run.state = "waiting-upload"

    # --- keypairs, PVCs ---------------------------------------------------------------------------------

    def _reconcile_keypairs(self) -> None:
        for kp in self.store.list(KEYPAIRS):
            try:
                fp = ssh_md5_fingerprint(kp["spec"]["publicKey"])
            except (ValueError, IndexError, KeyError):
                continue
            if (kp.get("status") or {}).get("fingerPrint") == fp and condition_true(kp, "validated"):
                continue

            def transit(o: JSON, fp: str = fp) -> None:
                o.setdefault("status", {})["fingerPrint"] = fp
                set_condition(o, "validated", "True")

            m = kp["metadata"]
            self.store.mutate(KEYPAIRS, m["namespace"], m["name"], m["uid"], transit)

    def _pvc_bindable(self, pvc: JSON) -> bool:
        sc = self.store.get(SCS, None, (pvc.get("spec") or {}).get("storageClassName") or "")
        if sc is None:
            return False
        image = self.d.admission.image_for_storage_class(sc)
        # Longhorn cannot provision from a backing image that is not ready yet (issue #1663).
        return image is None or condition_true(image, "Imported")

    def _reconcile_pvcs(self) -> None:
        for pvc in self.store.list(PVCS):
            bound = self._pvc_bindable(pvc) or (pvc.get("status") or {}).get("phase") == "Bound"
            spec = pvc.get("spec") or {}
            status: JSON = {"phase": "Bound" if bound else "Pending"}
            if bound:
                status["accessModes"] = spec.get("accessModes", [])
                status["capacity"] = {
                    "storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage")
                }
            if pvc.get("status") == status and (not bound or spec.get("volumeName")):
                continue
            m = pvc["metadata"]

            def transit(o: JSON, status: JSON = status, bound: bool = bound, uid: str = m["uid"]) -> None:
                o["status"] = status
                if bound:
                    o.setdefault("spec", {}).setdefault("volumeName", f"pvc-{uid}")

            self.store.mutate(PVCS, m["namespace"], m["name"], m["uid"], transit)

    # --- virtual machines -------------------------------------------------------------------------------

    def _reconcile_vms(self) -> None:
        for vm in self.store.list(VMS):
            meta, spec = vm["metadata"], vm.get("spec") or {}
            ns, name = meta["namespace"], meta["name"]
            self._create_pvcs_from_annotation(vm)
            strategy = spec.get("runStrategy") or ("Always" if spec.get("running") else "Halted")
            vmi = self.store.get(VMIS, ns, name)
            owned = vmi is not None and any(
                o.get("uid") == meta["uid"] for o in vmi["metadata"].get("ownerReferences") or []
            )
            if strategy in ("Always", "RerunOnFailure", "Once") and vmi is None:
                vmi = self._create_vmi(vm)
            elif strategy in ("Halted", "Manual") and owned:
                self._delete_quietly("virtualmachineinstances", ns, name)
                vmi = None
            status = self._vm_status(vm, vmi)
            if {k: vm.get("status", {}).get(k) for k in status} != status:
                self.store.mutate(
                    VMS, ns, name, meta["uid"], lambda o, s=status: o.setdefault("status", {}).update(s)
                )

    def _create_pvcs_from_annotation(self, vm: JSON) -> None:
        ns = vm["metadata"]["namespace"]
        try:
            templates = json.loads(
                (vm["metadata"].get("annotations") or {}).get(ANN_VOLUME_CLAIM_TEMPLATES, "[]")
            )
        except json.JSONDecodeError:
            return
        for tpl in templates if isinstance(templates, list) else []:
            tmeta = tpl.get("metadata") or {}
            if not tmeta.get("name") or self.store.get(PVCS, ns, tmeta["name"]) is not None:
                continue
            pvc_meta = {k: v for k, v in tmeta.items() if k in ("name", "labels", "annotations")}
            pvc_meta["namespace"] = ns
            spec = dict(tpl.get("spec") or {})
            if not spec.get("storageClassName"):
                default = self.d.admission.default_storage_class()
                if default is not None:
                    spec["storageClassName"] = default["metadata"]["name"]
            self.store.insert(PVCS, {"metadata": pvc_meta, "spec": spec, "status": {"phase": "Pending"}})

    def _create_vmi(self, vm: JSON) -> JSON:
        meta, template = vm["metadata"], (vm.get("spec") or {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        labels = {**(tmeta.get("labels") or {}), "kubevirt.io/created-by": meta["uid"]}
        return self.store.insert(
            VMIS,
            {
                "metadata": {
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "labels": labels,
                    "annotations": dict(tmeta.get("annotations") or {}),
                    "ownerReferences": [
                        {
                            "apiVersion": "kubevirt.io/v1",
                            "kind": "VirtualMachine",
                            "name": meta["name"],
                            "uid": meta["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": json.loads(json.dumps(template.get("spec") or {})),
                "status": {"phase": "Pending"},
            },
        )

    def _vmi_blocker(self, vmi: JSON) -> tuple[str, str] | None:
        """Why the launcher pod cannot start: (VM printableStatus, message) or None."""
        ns = vmi["metadata"]["namespace"]
        for vol in (vmi.get("spec") or {}).get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                pvc = self.store.get(PVCS, ns, claim)
                if pvc is None:
                    return "ErrorPvcNotFound", f"PVC {ns}/{claim} does not exist, waiting for it to appear"
                if (pvc.get("status") or {}).get("phase") != "Bound":
                    return "WaitingForVolumeBinding", f"PVC {ns}/{claim} is not Bound"
            cloud_init = vol.get("cloudInitNoCloud") or vol.get("cloudInitConfigDrive") or {}
            for ref in ("secretRef", "networkDataSecretRef"):
                secret = (cloud_init.get(ref) or {}).get("name")
                if secret and self.store.get(SECRETS, ns, secret) is None:
                    return "Error", f'secret "{secret}" not found'
        return None

    def _vm_status(self, vm: JSON, vmi: JSON | None) -> JSON:
        if vmi is None:
            printable, ready, message = "Stopped", False, "VMI does not exist"
        else:
            phase = (vmi.get("status") or {}).get("phase")
            blocker = self._vmi_blocker(vmi)
            ready = phase == "Running"
            if ready:
                printable, message = "Running", ""
            elif blocker is not None:
                printable, message = blocker
            else:
                printable, message = "Starting", f"VMI is {phase}"
        return {
            "printableStatus": printable,
            "ready": ready,
            "created": vmi is not None,
            "conditions": [{"type": "Ready", "status": str(ready), "message": message}],
        }

    def _reconcile_vmis(self) -> None:
        for vmi in self.store.list(VMIS):
            meta = vmi["metadata"]
            run = self._vmis.setdefault(meta["uid"], VmiRun())
            run.ticks += 1
            blocker = self._vmi_blocker(vmi)
            phase = ["Pending", "Pending", "Scheduling", "Scheduled", "Running"][min(run.ticks, 4)]
            if blocker is not None and phase in ("Scheduled", "Running"):
                phase = "Scheduling"  # the launcher pod never starts
            status = self._vmi_status(vmi, run, phase, blocker)
            if vmi.get("status") != status:
                self.store.mutate(
                    VMIS,
                    meta["namespace"],
                    meta["name"],
                    meta["uid"],
                    lambda o, s=status: o.__setitem__("status", s),
                )

    def _vmi_status(self, vmi: JSON, run: VmiRun, phase: str, blocker: tuple[str, str] | None) -> JSON:
        status: JSON = {"phase": phase}
        if phase in ("Scheduled", "Running"):
            status["nodeName"] = "harvester-node-0"
        if phase != "Running":
            reason = "PodNotExists" if blocker is None else "FailedCreate"
            status["conditions"] = [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": reason,
                    "message": blocker[1] if blocker else f"VMI is {phase}",
                }
            ]
            return status
        spec = vmi.get("spec") or {}
        interfaces = {
            i.get("name"): i
            for i in ((spec.get("domain") or {}).get("devices") or {}).get("interfaces") or []
        }
        networks = spec.get("networks") or []
        has_ip = vmi["metadata"]["name"] not in self.d.no_ip
        while len(run.ips) < len(networks):  # stable addresses for the VMI's lifetime
            self._addr += 1
            run.ips.append(f"10.52.{self._addr // 250}.{self._addr % 250 + 2}")
            octets = (self._addr >> 16) & 255, (self._addr >> 8) & 255, self._addr & 255
            run.macs.append("52:54:00:" + ":".join(f"{o:02x}" for o in octets))
        # A bridge NIC with a fixed address in the cloud-init network config: the guest agent reports
        # that address (tests/harvester/guest.py); a masquerade NIC reports the pod's, DHCP a lease.
        ref = next((((v.get("cloudInitNoCloud") or {}).get("networkDataSecretRef") or {}).get("name")
                    for v in spec.get("volumes") or [] if v.get("cloudInitNoCloud")), None)
        fixed = guest.static_addresses(guest.network_data(
            self.store.get(SECRETS, vmi["metadata"]["namespace"], ref) if ref else None))
        status["interfaces"] = []
        for i, net in enumerate(networks):
            iface: JSON = {
                "name": net.get("name"),
                "interfaceName": f"eth{i}",
                "mac": interfaces.get(net.get("name"), {}).get("macAddress") or run.macs[i],
                "infoSource": "domain, guest-agent" if has_ip else "domain",
                "queueCount": 1,
            }
            if has_ip:
                ip = run.ips[i]
                if "bridge" in interfaces.get(net.get("name"), {}):
                    ip = fixed.get(str(iface["mac"]).lower(), ip)
                iface["ipAddress"], iface["ipAddresses"] = ip, [ip]
            status["interfaces"].append(iface)
        status["conditions"] = [
            {"type": "Ready", "status": "True"},
            {"type": "AgentConnected", "status": "True" if has_ip else "False"},
        ]
        return status


def _opener(additional_ca: str | None, proxy: str | None = None) -> urllib.request.OpenerDirector:
    # Harvester fetches with Go's default client: TLS verified against the system roots plus the
    # CA bundle of its `additional-ca` setting, through the proxy its `http-proxy` setting names
    # for this URL (Go's rules, `_proxy_for`); never the test process's own proxy environment.
    ctx = ssl.create_default_context()
    if additional_ca:
        ctx.load_verify_locations(cadata=additional_ca)
    proxies = {"http": proxy, "https": proxy} if proxy else {}
    return urllib.request.build_opener(
        urllib.request.ProxyHandler(proxies), urllib.request.HTTPSHandler(context=ctx)
    )


def _go_error(verb: str, url: str, e: Exception, proxy: str | None = None) -> str:
    """Worded like Go's net/http errors: Head "url": dial tcp host:port: connect: connection refused
    (through a proxy: proxyconnect tcp: dial tcp proxyhost:port: ...)."""
    reason: Any = e.reason if isinstance(e, urllib.error.URLError) else e
    parts = urlsplit(proxy or url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if isinstance(reason, ConnectionRefusedError):
        via = "proxyconnect tcp: " if proxy else ""
        return f'{verb} "{url}": {via}dial tcp {parts.hostname}:{port}: connect: connection refused'
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (f'{verb} "{url}": tls: failed to verify certificate: x509: certificate signed by '
                "unknown authority")
    return f'{verb} "{url}": {reason}'
