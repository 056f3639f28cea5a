"""The Packer builder: boot the verified upstream (or local) cloud image under Packer's qemu
builder, run the step scripts that need the running OS (packages and security updates), then run
the file-level steps offline on the stopped disk through the same code as the rootfs builder.

Phases, as named build steps:
1. `fetch-source`: the cloud image from the cache/mirrors/upstream, checksum-verified (or a local
   store image), then used by packer as a local file.
2. `packer-template`: HCL2 template + var file + NoCloud seed (pycdlib) + ephemeral SSH key;
   `packer validate`.
3. `packer-build`: qemu with `restrict=on` user networking: SSH forwarded to 127.0.0.1 only, no
   egress except the allow-list package proxy on the host (guestfwd 10.0.2.100:3142); the
   provisioners run `steps.scripts` (the same scripts the rootfs builder runs in its chroot);
   shutdown through sudo.
4. `open-disk` .. `close-disk`: the output disk as a raw file, its root partition on a loop
   device mounted at the build root, and the rootfs builder's own steps on it (write-files,
   services, RKE2/Zarf, STIG bake, seal, checks). Sealing a running guest is unsound (the
   journal, machine-id and SSH host keys come back before it stops), so it happens offline, the
   way virt-sysprep does. Then one compressed qcow2 conversion.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from .. import packer as pk
from ..accel import resolve_accelerator
from ..artifacts import cloud_image_artifact
from ..cloudinit import SeedData, render, write_seed_iso
from ..context import BuildContext, Step
from ..distros import get as distro
from ..errors import BuildError, UserError
from ..fsutil import atomic_write
from ..recipes.model import CloudImageSource, LocalImageSource, Recipe
from ..sshkeys import ephemeral_key
from ..steps import rke2, scripts, stig
from . import disk
from .rootfs import offline_steps

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent.parent / "templates" / "packer"
PROXY_GUEST = "http://10.0.2.100:3142"
# recipe key behind each template variable: packer's errors are mapped back to these
VAR_KEYS = {
    "source_image": "source", "source_checksum": "source.checksum", "disk_size": "disk.size",
    "memory": "tests.memory", "cpus": "tests.cpus", "accelerator": "accelerator",
    "ssh_username": "os.family (cloud-init default user)", "boot_timeout": "tests.boot_timeout",
}


@dataclass(frozen=True)
class Rendered:
    directory: Path
    template: Path
    var_file: Path
    variables: dict[str, Any]


def _hcl_value(v: Any) -> str:
    return json.dumps(v)  # HCL2 string/number literals are JSON-compatible


def build_vm_cpus(recipe: Recipe, accelerator: str) -> int:
    """vCPUs of the build VM: the recipe's under KVM, one under TCG. An SMP guest under TCG can
    livelock while its kernel patches its own code across CPUs (jump labels, while a module
    loads): an Ubuntu 22.04 build VM sat 15 min in a soft lockup, kauditd on one vCPU and
    modprobe on the other, until packer gave up. The build VM runs apt, which gains nothing from
    a second emulated CPU; the boot test's clones keep `tests.cpus`."""
    return recipe.tests.cpus if accelerator == "kvm" else 1


def render_template(recipe: Recipe, directory: Path, *, source_image: str, source_checksum: str,
                    output_directory: Path, key: Path, seed_iso: Path, mac: str, proxy_port: int,
                    console_log: Path, accelerator: str, user: str) -> Rendered:
    """Write `image.pkr.hcl`, `imagefactory.pkrvars.hcl` and the step scripts into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    script_dir = directory / "scripts"
    script_dir.mkdir(exist_ok=True)
    entries = []
    for i, s in enumerate(scripts.packer_scripts(recipe)):
        path = script_dir / f"{i:02d}-{s.name}.sh"
        atomic_write(path, s.text, mode=0o755)
        entries.append({"path": str(path), "env": {**s.env, "IMAGEFACTORY_PROXY": PROXY_GUEST},
                        "reboot": s.reboot})
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    text = env.get_template("image.pkr.hcl.j2").render(recipe_name=recipe.name, scripts=entries)
    template = directory / "image.pkr.hcl"
    atomic_write(template, text)
    variables: dict[str, Any] = {
        "source_image": source_image, "source_checksum": source_checksum,
        "output_directory": str(output_directory), "disk_size": f"{recipe.disk.size // 1024**2}M",
        "memory": recipe.tests.memory // 1024**2, "cpus": build_vm_cpus(recipe, accelerator),
        "accelerator": accelerator,
        "ssh_username": user, "ssh_private_key_file": str(key), "seed_iso": str(seed_iso), "mac": mac,
        "proxy_port": proxy_port, "console_log": str(console_log),
        "boot_timeout": f"{recipe.tests.boot_timeout}s",
    }
    var_file = directory / "imagefactory.pkrvars.hcl"
    atomic_write(var_file, "".join(f"{k} = {_hcl_value(v)}\n" for k, v in variables.items()))
    return Rendered(directory, template, var_file, variables)


def explain(problems: list[str]) -> str:
    """packer's messages with the recipe key behind each variable they mention."""
    out = []
    for p in problems:
        keys = sorted({key for var, key in VAR_KEYS.items() if re.search(rf"\b{var}\b", p)})
        out.append(p + (f"\n  (from recipe key: {', '.join(keys)})" if keys else ""))
    return "\n".join(out)


# --- steps -------------------------------------------------------------------------------------


def fetch_source(ctx: BuildContext) -> None:
    src = ctx.recipe.source
    if isinstance(src, LocalImageSource):
        # The build store, else the signed catalogue (a base built on another CI runner): the
        # services `build` put on the context know both; this builder knows neither.
        base = ctx.services.base_image(src.image)
        path, sha256 = base.path, base.sha256
        ctx.manifest["source"] = {"type": "local-image", "image": src.image, "version": base.version,
                                  "sha256": sha256}
        if base.origin != "store":
            ctx.manifest["source"]["from"] = base.origin
    else:
        assert isinstance(src, CloudImageSource)
        stage = (f"pre-stage it: pin 'source.checksum: sha256:<hex>' (a recipe extending "
                 f"{ctx.recipe.name} can), then either put the file into the artifact cache "
                 f"('imagefactory artifacts fetch {ctx.recipe.name}' on a connected build host, copy "
                 "<workdir>/cache/sha256/<hex>) or into a mirror at <mirror>/sha256/<hex> (imagefactory.yaml "
                 "mirrors)")
        if ctx.fetcher.config.offline and src.checksum is None:
            raise UserError(f"offline: cannot read {src.checksum_url} to learn the sha256 of {src.url}",
                            hint=stage)
        try:
            art = cloud_image_artifact(src.url, src.checksum, src.checksum_url)
            path = ctx.fetcher.get(art, ctx.recipe.name)
        except BuildError as e:
            raise BuildError(f"cannot get the cloud image {src.url}: {e.message}", hint=stage) from None
        sha256 = art.sha256
        ctx.manifest["source"] = {"type": "cloud-image", "url": src.url, "sha256": sha256}
    ctx.packer_source = (path, sha256)


def packer_template(ctx: BuildContext) -> None:
    packer = pk.find_packer()
    ctx.manifest["packer"] = {"version": str(packer.version)}
    work = ctx.scratch / "packer"
    work.mkdir()
    key, pub = ephemeral_key(work)
    mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
    seed = work / "seed.iso"
    files = render(SeedData(f"i-{ctx.build_id}", "imagefactory-build", mac, (pub,),
                            purpose=f"the Packer build of {ctx.recipe.name}"))
    write_seed_iso(files, seed)
    proxy = ctx.stack.enter_context(ctx.services.package_proxy(ctx.distro.package_mirrors(ctx.recipe)))
    source, sha256 = ctx.packer_source
    rendered = render_template(
        ctx.recipe, work / "template", source_image=str(source), source_checksum=sha256,
        output_directory=work / "output", key=key, seed_iso=seed, mac=mac, proxy_port=proxy.port,
        console_log=ctx.scratch / "console-packer.log",
        accelerator=resolve_accelerator(ctx.recipe.effective_accelerator()).replace("qemu", "tcg"),
        user=ctx.distro.default_user)
    problems = pk.validate(packer, rendered.directory, var_file=rendered.var_file)
    if problems:
        raise UserError(f"{ctx.recipe.name}: the rendered Packer template is invalid:\n" + explain(problems),
                        hint=f"template in {rendered.directory} (kept only for this build)")
    ctx.packer = (packer, rendered, proxy)


def packer_build(ctx: BuildContext) -> None:
    packer, rendered, proxy = ctx.packer
    outcome = pk.build(packer, rendered.directory, var_file=rendered.var_file,
                       timeout=ctx.recipe.tests.boot_timeout + ctx.recipe.tests.timeout + 1800)
    # what the build VM's apt got from the package cache, as the rootfs builder reports it
    ctx.manifest.setdefault("source", {})["package_cache"] = proxy.stats()
    console = ctx.scratch / "console-packer.log"
    if console.is_file():
        log.debug("serial console of the Packer build VM:\n%s", console.read_text(errors="replace"))
    images = [Path(a) for a in outcome.artifacts if a.endswith(".qcow2")]
    if not images:
        raise BuildError(f"packer reported no qcow2 artifact (artifacts: {outcome.artifacts})")
    ctx.packer_output = images[0]


def open_disk(ctx: BuildContext) -> None:
    ctx.disk_handle = ctx.stack.enter_context(disk.OpenedImage(ctx.packer_output, ctx.raw, ctx.root))
    # the packer output is no longer needed once it is raw: free the space early
    shutil.rmtree(ctx.packer_output.parent, ignore_errors=True)


def kernel_args(ctx: BuildContext) -> None:
    """Recipe and STIG kernel arguments into the image's own GRUB configuration."""
    args = [*ctx.recipe.kernel.cmdline, *(a for a in ctx.kernel_args if a not in ctx.recipe.kernel.cmdline)]
    if args:
        disk.add_kernel_args(ctx.root, args)


def close_disk(ctx: BuildContext) -> None:
    assert ctx.disk_handle is not None
    ctx.disk_handle.close()
    d = ctx.recipe.disk
    disk.convert(ctx.raw, ctx.image, d.format, d.compression)
    ctx.raw.unlink()


def steps(recipe: Recipe) -> list[Step]:
    return [
        Step("fetch-source", fetch_source),
        *([Step("fetch-inputs", rke2.fetch_inputs)] if recipe.rke2 or recipe.zarf else []),
        Step("packer-template", packer_template),
        Step("packer-build", packer_build),
        Step("open-disk", open_disk),
        *offline_steps(recipe, packages_step=False),  # the rootfs builder's own code, on the disk
        Step("kernel-args", kernel_args),
        *stig.steps_after_disk(recipe),
        Step("close-disk", close_disk),
    ]



def validate_recipe(recipe: Recipe, scratch: Path) -> list[str]:
    """Render the recipe's template with placeholders for what only a build knows (the verified
    image path and checksum, the key, the seed, the proxy port) and run `packer validate` on it:
    no network, no VM. Returns packer's problems with the recipe keys behind them."""
    src = recipe.source
    if isinstance(src, CloudImageSource):
        image = src.url
        checksum = src.checksum.partition(":")[2] if src.checksum and src.checksum.startswith("sha256:") \
            else "0" * 64
    elif isinstance(src, LocalImageSource):
        image, checksum = f"/var/lib/imagefactory/store/{src.image.replace(':', '/')}/image.qcow2", "0" * 64
    else:
        return [f"source type {src.type} cannot be built by the packer builder"]
    work = scratch / f"validate-{recipe.name}"
    work.mkdir(parents=True)
    key, _ = ephemeral_key(work)  # packer validate reads the key; it is thrown away with `work`
    seed = work / "seed.iso"
    write_seed_iso(render(SeedData("i-validate", "validate", "52:54:00:00:00:01")), seed)
    rendered = render_template(recipe, work / "template", source_image=image, source_checksum=checksum,
                               output_directory=work / "output", key=key, seed_iso=seed,
                               mac="52:54:00:00:00:01", proxy_port=3142, console_log=work / "console.log",
                               accelerator="tcg", user=distro(recipe.os.family).default_user)
    problems = pk.validate(pk.find_packer(), rendered.directory, var_file=rendered.var_file)
    return [explain([p]) for p in problems]
