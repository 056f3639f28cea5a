"""Semantic checks that run after the schema: things a type cannot express."""

from __future__ import annotations

import re
from collections.abc import Callable

from .. import distros, templates
from ..errors import Problem, UserError, ValidationError
from ..zarf_packages import PackageProblem, read_key
from .located import LoadedRecipe, Located, fmt_path
from .rke2_releases import release_problems, unknown_config_keys

# Trees that are the build host's own while a build runs (bind mounts, proc, sysfs) and runtime
# filesystems in the booted guest: a `files` entry there is refused.
HOST_TREES = ("proc", "sys", "dev", "run")
# what follows a comma inside a kernel argument's value and is never an argument of its own: a
# number, or a serial speed with its framing (console=ttyS0,115200n8)
SPLIT_OPTION = re.compile(r"[0-9]+(?:[noe][5-8]r?)?")


def _gib(n: int) -> str:
    return f"{n / 1024**3:g} GiB"


def semantic_problems(loaded: LoadedRecipe, located: Located) -> list[Problem]:
    r = loaded.recipe
    default_file = str(loaded.files[0])
    problems: list[Problem] = []

    def add(path: tuple[str | int, ...], message: str, hint: str | None = None) -> None:
        # where the user wrote it, and under the index their own file gives it
        file, line = located.locate(path, default_file)
        problems.append(Problem(file, line, fmt_path(located.own_path(path)), message, hint))

    distro = distros.get(r.os.family)
    if r.os.release not in distro.releases:
        add(("os", "release"), f"release '{r.os.release}' is not supported by family '{r.os.family}'",
            f"supported: {', '.join(distro.releases)}")
    if r.builder not in distro.builders:
        add(("builder",), f"builder '{r.builder}' cannot build family '{r.os.family}'",
            f"use: {', '.join(distro.builders)}")
    elif r.source.type not in distro.builders[r.builder]:
        add(("source", "type"), f"builder '{r.builder}' cannot build from a '{r.source.type}' source",
            f"builder '{r.builder}' takes: {', '.join(distro.builders[r.builder])}")
    if r.source.type == "mmdebstrap" and r.os.release in distro.releases:
        codename = distro.codename(r.os.release)
        if r.source.suite not in (codename, r.os.release):
            add(("source", "suite"), f"suite '{r.source.suite}' does not match {r.os.family} {r.os.release}",
                f"use '{codename}'")
    if r.builder == "rootfs" and r.os.arch != "amd64":
        add(("os", "arch"),
            f"the rootfs builder builds only for the host architecture (amd64), not {r.os.arch}",
            "cross-architecture builds are not supported")
    if r.disk.size < distro.min_disk:
        add(("disk", "size"), f"{_gib(r.disk.size)} is too small for a {r.os.family} image",
            f"use at least {_gib(distro.min_disk)}")
    if r.disk.size % (1024**2):
        add(("disk", "size"), "must be a whole number of MiB", "e.g. 4GiB or 3584MiB")
    if r.disk.partition_table == "msdos" and r.disk.uefi:
        add(("disk", "partition_table"), f"firmware '{r.disk.firmware}' needs a GPT disk",
            "remove partition_table (gpt is the default) or set disk.firmware: bios")

    for i, arg in enumerate(r.kernel.cmdline):
        # `cmdline: [console=tty0, console=ttyS0,115200n8]` is three items in YAML's flow style:
        # the serial speed becomes an argument of its own (passed to init) and the console runs
        # at the default speed.
        before = r.kernel.cmdline[i - 1] if i else ""
        if "=" in before and "=" not in arg and SPLIT_OPTION.fullmatch(arg):
            add(("kernel", "cmdline", i), f"'{arg}' looks like the rest of '{before},{arg}', split "
                "by the comma of a YAML flow list", f'quote the argument: "{before},{arg}"')

    seen: dict[str, int] = {}
    for i, f in enumerate(r.files):
        if f.path in seen:
            add(("files", i, "path"), f"'{f.path}' is also written by files[{seen[f.path]}]",
                "keep one entry per path")
        seen[f.path] = i
        if f.template is not None:
            # Rendered now, in the sandbox, with the merged recipe: an error names the template's
            # own file and line before anything is built.
            try:
                templates.render(loaded.directory, f.template, r)
            except templates.TemplateProblem as e:
                add(("files", i, "template"), f"template {e.where}: {e.message}",
                    "template paths are relative to the recipe directory; templates see `recipe` "
                    "and nothing of Python's internals")
        if f.path.split("/")[1] in HOST_TREES:
            add(("files", i, "path"), f"'{f.path}' is under /{f.path.split('/')[1]}, which is the "
                "build host's during the build and a runtime filesystem in the guest",
                "write under /etc, /usr or /var (use a systemd-tmpfiles entry for /run)")

    lists = {"enable": r.services.enable, "disable": r.services.disable, "mask": r.services.mask}
    for a, b in (("enable", "disable"), ("enable", "mask")):
        for unit in sorted(set(lists[a]) & set(lists[b])):
            add(("services", b), f"'{unit}' is in both services.{a} and services.{b}", "keep it in one list")

    for pkg in sorted(set(r.packages.install) & set(distro.unwanted_packages)):
        add(("packages", "install"), f"'{pkg}' is never shipped in {r.os.family} images "
            "(it phones home, nags or needs snapd)", "remove it from packages.install")
    both = sorted(set(r.packages.install) & set(r.packages.remove))
    for pkg in both:
        add(("packages", "remove"), f"'{pkg}' is both installed and removed", "keep it in one list")

    if r.rke2 is not None:
        if r.rke2.images != "all" and "core" not in r.rke2.images:
            add(("rke2", "images"), "the core images are mandatory offline (RKE2's runtime image)",
                "add 'core' or use 'all'")
        if r.rke2.arch != r.os.arch:
            add(("rke2", "arch"), f"rke2.arch {r.rke2.arch} differs from os.arch {r.os.arch}",
                "an image runs one architecture")
        if r.rke2.selinux and r.os.family in ("debian", "ubuntu"):
            add(("rke2", "selinux"), f"SELinux is not available on {r.os.family}", "remove it")
        for key, close in unknown_config_keys(r.rke2.config):
            add(("rke2", "config", key), f"rke2 has no '{key.rstrip('+')}' setting: it would log \"Unknown "
                f"flag --{key.rstrip('+')} found in config.yaml, skipping\" and run without it",
                f"did you mean '{close}'?" if close else "see `rke2 server --help` for the settings")
        configs = r.rke2.registries.get("configs") if isinstance(r.rke2.registries, dict) else None
        for host, cfg in (configs.items() if isinstance(configs, dict) else ()):
            auth = cfg.get("auth") if isinstance(cfg, dict) else None
            if isinstance(auth, dict) and auth:
                # an image is copied to every site and store: a credential in it is everyone's
                add(("rke2", "registries", "configs", host, "auth"), "registry credentials are never "
                    "baked into an image", "give them at first boot: the cluster spec's "
                    f"registries.configs.{host}.auth_file (see 'Clusters' in README.md)")
        if r.rke2.version is not None:  # a channel is checked when 'lock update' resolves it
            for p in release_problems(r.rke2, r.rke2.version):
                add(("rke2", *p.key), p.message, p.hint)
    if r.zarf is not None:
        if r.rke2 is None:
            add(("zarf",), "Zarf needs RKE2 in the same image (zarf init runs on the cluster)",
                "add an rke2 section")
        arch = r.rke2.arch if r.rke2 else r.os.arch
        for i, url in enumerate(r.zarf.packages):
            pkg = url.rsplit("/", 1)[-1]
            if pkg.startswith("zarf-init-") and pkg != f"zarf-init-{arch}-{r.zarf.version}.tar.zst":
                add(("zarf", "packages", i), f"{pkg} does not match the Zarf binary {r.zarf.version}",
                    f"zarf init needs exactly zarf-init-{arch}-{r.zarf.version}.tar.zst "
                    "(zarf.init_package bakes it)")
        if r.zarf.verify is not None:
            try:
                read_key(loaded.directory, r.zarf.verify.key)
            except PackageProblem as e:
                add(("zarf", "verify", "key"), str(e), "the cosign public key (cosign.pub from "
                    "`cosign generate-key-pair`), a file in the recipe directory")
            if not r.zarf.packages:
                add(("zarf", "verify"), "there are no zarf.packages to verify",
                    "add the signed packages to zarf.packages, or remove zarf.verify")
    if r.stig is not None:
        problems += _stig_problems(loaded, add)
    if "rke2" in r.tests.suites and r.rke2 is None:
        add(("tests", "suites"), "the rke2 suite needs an rke2 section", "remove 'rke2' from tests.suites")
    # tests.clones: 1 is allowed: the hygiene suite's comparison across clones is then a declared
    # skip (`recipe: ...`), visible in the results, and a hybrid disk boots its UEFI clone
    return problems


# OS family/release -> the catalogue that covers it (Debian: the family-generic Ubuntu 22.04 controls).
OS_BENCHMARK = {("ubuntu", "22.04"): "ubuntu2204", ("ubuntu", "24.04"): "ubuntu2404",
                ("debian", "12"): "ubuntu2204", ("sle-micro", "5.5"): "slmicro5"}


def _stig_problems(loaded: LoadedRecipe, add: Callable[..., None]) -> list[Problem]:
    from ..stig.catalogue import load_catalogue
    from ..stig.selection import resolve_waiver_path
    from ..stig.waivers import load_waivers, validate_waivers

    r = loaded.recipe
    assert r.stig is not None
    s = r.stig
    want = OS_BENCHMARK.get((r.os.family, r.os.release))
    os_marks = [b for b in s.benchmarks if b != "rke2"]
    if want is None:
        add(("stig", "benchmarks"), f"no STIG catalogue covers {r.os.family} {r.os.release} yet",
            "remove the stig section (the image is then reported as not hardened)")
    elif os_marks != [want]:
        add(("stig", "benchmarks"), f"{r.os.family} {r.os.release} takes exactly one OS benchmark: {want}",
            f"use benchmarks: [{want}{', rke2' if r.rke2 else ''}]")
    if "rke2" in s.benchmarks and r.rke2 is None:
        add(("stig", "benchmarks"), "the rke2 benchmark needs an rke2 section", "remove rke2 from benchmarks")
    problems: list[Problem] = []
    catalogues = [load_catalogue(b) for b in dict.fromkeys(s.benchmarks)]
    known = {c.id: c for cat in catalogues for c in cat}
    for sid in s.tailoring.disable:
        if sid not in known:
            add(("stig", "tailoring", "disable", sid), "not a control of the selected catalogues",
                "see 'imagefactory stig list --benchmark NAME'")
    for i, sid in enumerate(s.tailoring.enable):
        if sid not in known:
            add(("stig", "tailoring", "enable", i), f"{sid} is not a control of the selected catalogues",
                "see 'imagefactory stig list --benchmark NAME'")
        elif known[sid].phase != "waive-by-default":
            add(("stig", "tailoring", "enable", i), f"{sid} is applied anyway (phase {known[sid].phase})",
                "enable lists only waive-by-default controls")
    for i, name in enumerate(s.waivers):
        try:
            path = resolve_waiver_path(name, loaded.directory)
        except UserError as e:
            add(("stig", "waivers", i), e.message, e.hint)
            continue
        if not path.is_file():
            add(("stig", "waivers", i), f"waiver file '{name}' not found ({path})",
                "a shipped set by name (stig/waivers/NAME.yaml) or a path relative to the recipe")
            continue
        try:
            validate_waivers(load_waivers(path), catalogues)
        except ValidationError as e:
            problems += e.problems
    return problems
