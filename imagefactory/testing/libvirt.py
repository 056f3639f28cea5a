"""Booting images under libvirt for tests: overlay disks, loopback-only SSH, sure cleanup.

Every guest gets a qcow2 overlay (the image under test is never written), a NoCloud seed ISO,
user-mode networking with `restrict=on` (no egress at all) and SSH forwarded to 127.0.0.1 only,
and a serial console captured to a file. Domains are transient (`createXML`), named
`imagefactory-<run>-<n>`, and destroyed on exit, on errors and on Ctrl-C; overlays and seeds live
in a run directory that is removed with them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

import libvirt
import paramiko

# Re-exported: these lived here before the builders needed them too (callers keep working).
from ..accel import resolve_accelerator as resolve_accelerator
from ..cloudinit import SeedData, render, write_seed_iso
from ..errors import BuildError, UserError
from ..interrupts import uninterrupted
from ..run import run
from ..sshkeys import ephemeral_key as ephemeral_key

log = logging.getLogger(__name__)

URI = "qemu:///system"
DOMAIN_PREFIX = "imagefactory-"
LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")


def _silence_libvirt(_ctx: object, _err: object) -> None:
    # libvirt prints every error to stderr by default; we raise them as exceptions instead.
    return None


libvirt.registerErrorHandler(_silence_libvirt, None)
# paramiko logs every refused connection while a guest boots: expected, not news.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def check_kvm_device() -> None:
    """Refuse a root-only /dev/kvm: libvirt 9.0 then re-probes QEMU in a loop and every domain
    start hangs (TCG included). udev normally makes it root:kvm 0660."""
    with contextlib.suppress(FileNotFoundError):
        if os.stat("/dev/kvm").st_mode & 0o060 == 0:
            raise UserError("/dev/kvm is accessible to root only: libvirt would hang starting guests",
                            hint="chgrp kvm /dev/kvm && chmod 0660 /dev/kvm (ci/bootstrap.sh does)")


def ensure_libvirtd(timeout: float = 30.0) -> None:
    """Start virtlogd and libvirtd when they are not running (no service manager here)."""
    check_kvm_device()
    with contextlib.suppress(libvirt.libvirtError):
        libvirt.open(URI).close()
        return
    run(["virtlogd", "-d"], check=False)
    run(["libvirtd", "-d"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            libvirt.open(URI).close()
            return
        except libvirt.libvirtError:
            time.sleep(0.5)
    raise BuildError("libvirtd did not come up", hint="see /var/log/libvirt/libvirtd.log")


def image_info(image: Path) -> tuple[int, str]:
    """(virtual size, format) of an image, from qemu-img."""
    import json

    info = json.loads(run(["qemu-img", "info", "--output=json", str(image)], quiet=True).stdout)
    return int(info["virtual-size"]), str(info["format"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


GuestFirmware = Literal["bios", "uefi", "uefi-secure"]
# OVMF from Debian's `ovmf` package: 4 MiB flash, a Secure Boot build (needs SMM, so q35) and a
# variable store with Microsoft's keys enrolled (what a shim signed by Microsoft boots under).
OVMF_DIR = Path("/usr/share/OVMF")
OVMF = {"uefi": ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
        "uefi-secure": ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")}


def ovmf_files(firmware: GuestFirmware) -> tuple[Path, Path]:
    """(code, variable store template) for a UEFI guest; UserError when the host lacks them."""
    code, template = (OVMF_DIR / name for name in OVMF[firmware])
    missing = [str(p) for p in (code, template) if not p.is_file()]
    if missing:
        raise UserError(f"{firmware} boot needs OVMF: {', '.join(missing)} not found",
                        hint="install the Debian package 'ovmf' (ci/bootstrap.sh does)")
    return code, template


@dataclass
class Guest:
    name: str
    index: int
    port: int
    mac: str
    overlay: Path
    seed: Path
    console: Path
    instance_id: str
    hostname: str
    boot_epoch: float = 0.0
    firmware: GuestFirmware = "bios"

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])


def guest_cpus(requested: int, accel: str, together: int, policy: str = "shared") -> int:
    """vCPUs for each of `together` guests that run at once. Under KVM, what was asked. Under TCG
    each vCPU is a host thread emulating a CPU flat out, and more of them than the host has cores
    means a vCPU holding a guest spinlock is descheduled while its siblings spin for it (and an
    SMP TCG guest can soft-lock while its kernel patches its own text across CPUs; see
    builders/packer.build_vm_cpus). Measured here (2 cores): two Ubuntu 22.04 clones with 2 vCPUs
    each were up after 342-356 s, with one vCPU each after 248-251 s. So under TCG the guests get
    at most one vCPU per host core between them, and at least one each. A recipe's
    `tests.tcg_cpus: asked` (policy "asked") gives each guest what it asked for instead: Ubuntu
    24.04's CPU-bound first boot gained nothing measurable from sharing (README, Boot tests)."""
    if accel == "kvm" or policy == "asked":
        return requested
    cores = len(os.sched_getaffinity(0))
    return max(1, min(requested, cores // max(1, together)))


def domain_xml(g: Guest, accel: str, memory_mib: int, cpus: int, nvram: Path | None = None) -> str:
    """A transient domain for `g`. BIOS guests are i440fx (`pc`); UEFI guests q35, which Secure
    Boot needs (SMM); `nvram` is the guest's own copy of the variable store. The NoCloud seed is
    a read-only virtio disk, as KubeVirt attaches `cloudInitNoCloud` volumes: a SATA CD-ROM on
    q35 needs `ahci`/`sr_mod`, which Debian's cloud kernel does not have (its UEFI clone booted
    without a datasource, so without host keys or a user)."""
    domtype = "kvm" if accel == "kvm" else "qemu"
    netdev = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{g.port}-:22"
    if g.firmware == "bios":
        machine, features, loader = "pc", "<acpi/><apic/>", ""
        # a fixed slot libvirt never assigns on pc (its own devices start at 0x2)
        nic = "bus=pci.0,addr=0x1f"
    else:
        code, template = ovmf_files(g.firmware)
        secure = g.firmware == "uefi-secure"
        if nvram is None:
            raise BuildError("internal: a UEFI guest without an NVRAM file")
        machine = "q35"
        features = "<acpi/><apic/>" + ("<smm state='on'/>" if secure else "")
        loader = (f"<loader readonly='yes' secure='{'yes' if secure else 'no'}' type='pflash'>"
                  f"{escape(str(code))}</loader>"
                  f"<nvram template='{escape(str(template))}'>{escape(str(nvram))}</nvram>")
        # libvirt fills slots 0x1-0x3 with root ports and 0x1f with the LPC/SATA functions,
        # so 0x10 on the root complex is free
        nic = "bus=pcie.0,addr=0x10"
    return f"""<domain type='{domtype}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(g.name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{cpus}</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type>{loader}<boot dev='hd'/></os>
  <features>{features}</features>
  {"<cpu mode='host-passthrough'/>" if accel == "kvm" else ""}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{escape(str(g.overlay))}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{escape(str(g.seed))}'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <serial type='file'>
      <source path='{escape(str(g.console))}'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{escape(str(g.console))}'/>
      <target type='serial' port='0'/>
    </console>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='{netdev}'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=n0,mac={g.mac},{nic}'/>
  </qemu:commandline>
</domain>
"""


@dataclass
class BootRun:
    """A set of running clones of one image, plus what the tests need to reach them."""

    guests: list[Guest]
    key: Path
    public_key: str
    user: str
    directory: Path
    image_virtual_size: int


def destroy_domain(conn: libvirt.virConnect, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        dom = conn.lookupByName(name)
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


def stale_domains(conn: libvirt.virConnect) -> list[str]:
    return [d.name() for d in conn.listAllDomains() if d.name().startswith(DOMAIN_PREFIX)]


def check_reachable(path: Path) -> None:
    """libvirt runs qemu as its own user: every directory above the image must be traversable."""
    for parent in path.resolve().parents:
        if not os.stat(parent).st_mode & 0o001:
            raise UserError(f"{path}: libvirt's qemu user cannot reach it ({parent} is not "
                            "world-traversable)", hint=f"chmod o+x {parent}, or use another --workdir")


@contextlib.contextmanager
def boot(
    image: Path,
    *,
    clones: int,
    user: str,
    accelerator: str = "auto",
    memory_mib: int = 1024,
    cpus: int = 2,
    boot_timeout: float = 900,
    scratch: Path | None = None,
    console_dir: Path | None = None,
    grow: int = 1024**3,
    user_data: Callable[[Guest, str], str] | None = None,
    firmwares: Sequence[GuestFirmware] = ("bios",),
    tcg_cpus: str = "shared",
) -> Iterator[BootRun]:
    """Boot `clones` copies of `image` and wait for SSH on each; always clean up.

    Clone i boots on `firmwares[i % len(firmwares)]` (a hybrid disk: one clone per firmware).
    `user_data(guest, public_key)` replaces the default test user-data (e.g. an RKE2 node seed);
    it must authorise `public_key` for `user`. `tcg_cpus`: the vCPU policy under TCG (`guest_cpus`).
    """
    if not image.is_file():
        raise UserError(f"{image}: no such image")
    for fw in set(firmwares) - {"bios"}:
        ovmf_files(fw)  # before anything starts: a host without OVMF is a clear error
    ensure_libvirtd()
    check_reachable(image)
    accel = resolve_accelerator(accelerator)
    if (capped := guest_cpus(cpus, accel, clones, tcg_cpus)) != cpus:
        log.info("%d vCPU per clone instead of %d: %d clones under TCG on %d host cores", capped, cpus,
                 clones, len(os.sched_getaffinity(0)))
        cpus = capped
    run_id = secrets.token_hex(4)
    size, image_format = image_info(image)
    # libvirt's qemu user must reach the files: a world-traversable directory.
    directory = Path(tempfile.mkdtemp(prefix=f"boot-{run_id}-", dir=scratch))
    directory.chmod(0o755)
    check_reachable(directory)
    conn = libvirt.open(URI)
    guests: list[Guest] = []
    try:
        key, pub = ephemeral_key(directory)
        for i in range(clones):
            g = Guest(
                name=f"{DOMAIN_PREFIX}{run_id}-{i}",
                index=i,
                port=free_port(),
                mac="52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3)),
                overlay=directory / f"clone{i}.qcow2",
                seed=directory / f"seed{i}.iso",
                console=(console_dir or directory) / f"console-{i}.log",
                instance_id=f"i-{run_id}-{i}",
                hostname=f"ift-{run_id}-{i}",
                firmware=firmwares[i % len(firmwares)],
            )
            # A larger overlay than the image: first boot must grow the root into it.
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", image_format, "-b",
                 str(image.resolve()), str(g.overlay), str(size + grow)])
            g.overlay.chmod(0o644)
            files = render(SeedData(g.instance_id, g.hostname, g.mac, (pub,)))
            if user_data is not None:
                files["user-data"] = user_data(g, pub)
            write_seed_iso(files, g.seed)
            g.console.touch()
            guests.append(g)
        for g in guests:
            log.info("booting %s (%s, %s, %d MiB, %d vCPU) ssh on 127.0.0.1:%d",
                     g.name, g.firmware, accel, memory_mib, cpus, g.port)
            g.boot_epoch = time.time()
            nvram = directory / f"clone{g.index}_VARS.fd"  # libvirt copies the template here
            try:
                conn.createXML(domain_xml(g, accel, memory_mib, cpus, nvram), 0)
            except libvirt.libvirtError as e:
                raise BuildError(f"libvirt could not start {g.name}: {e}") from None
        for g in guests:
            wait_for_ssh(conn, g, user, key, boot_timeout)
        yield BootRun(guests, key, pub, user, directory, size)
    finally:
        with uninterrupted():  # a second Ctrl-C must not leave a domain running
            for g in guests:
                destroy_domain(conn, g.name)
            conn.close()
            shutil.rmtree(directory, ignore_errors=True)


def connect(g: Guest, user: str, key: Path, timeout: float = 180) -> paramiko.SSHClient:
    """An SSH session to a running guest, retried: sshd may restart while cloud-init runs."""
    deadline = time.monotonic() + timeout
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect("127.0.0.1", port=g.port, username=user, key_filename=str(key),
                           timeout=10, banner_timeout=30, auth_timeout=30, allow_agent=False,
                           look_for_keys=False)
            return client
        except (OSError, paramiko.SSHException, EOFError) as e:
            client.close()
            if time.monotonic() > deadline:
                raise BuildError(f"{g.name}: SSH failed: {e}\n{g.console_tail()}") from None
            time.sleep(3)


# cloud-init writes result.json when its last stage ends (`cloud-init status` reports "done" from
# it); an image whose cloud-init was disabled never writes it.
READY_WAIT = ("while [ ! -e /run/cloud-init/result.json ] && [ ! -e /etc/cloud/cloud-init.disabled ]; "
              "do sleep 1; done; echo ready")


def wait_for_ssh(conn: libvirt.virConnect, g: Guest, user: str, key: Path, timeout: float) -> None:
    """Poll until `user` can log in with `key`; fail early if the domain dies."""
    deadline = g.boot_epoch + timeout
    pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
    last = "no answer"
    while time.time() < deadline:
        try:
            if not conn.lookupByName(g.name).isActive():
                raise BuildError(f"{g.name} stopped while booting\n{g.console_tail()}")
        except libvirt.libvirtError:
            raise BuildError(f"{g.name} disappeared while booting\n{g.console_tail()}") from None
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect("127.0.0.1", port=g.port, username=user, pkey=pkey, timeout=10,
                           banner_timeout=10, auth_timeout=10, allow_agent=False,
                           look_for_keys=False)
            # Logged in is not ready: cloud-init's config stage restarts sshd (set_passwords), which
            # resets connections made meanwhile. Ready = cloud-init has finished, whatever its
            # verdict (the suites judge that): the marker `cloud-init status` itself reads. Not
            # `cloud-init status --wait`: its Python start-up costs a TCG guest 9-20 s of CPU taken
            # from the boot it waits for, again on every reconnect.
            _, out, _ = client.exec_command(READY_WAIT, timeout=max(30.0, deadline - time.time()))
            if "ready" in out.read().decode() and out.channel.recv_exit_status() == 0:
                log.info("%s: SSH login and cloud-init done after %.0f s", g.name,
                         time.time() - g.boot_epoch)
                return
        except (OSError, paramiko.SSHException, EOFError) as e:
            last = f"{type(e).__name__}: {e}"
        finally:
            client.close()
        time.sleep(3)
    raise BuildError(
        f"{g.name}: no SSH login within {timeout:.0f} s ({last})\n{g.console_tail()}",
        hint="raise tests.boot_timeout or read the console log in build.log",
    )
