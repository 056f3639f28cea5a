"""Step scripts: shell text that both builders run, the rootfs builder in its chroot and the
Packer builder as shell provisioners in the booted source image - one text, two places.

Only the steps that need the package manager of the running system are scripts (packages and
updates); file-level steps (files, RKE2/Zarf, STIG bake, sealing) are Python that both builders
run on a root directory (see builders/packer.py for why that happens offline).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from ..distros import get as distro
from ..recipes.model import Recipe
from . import stig

APT = r"""#!/bin/bash
# imagefactory step "packages" (apt): install, update, purge. The same text runs in the rootfs
# builder's chroot and in the Packer build VM (there through the allow-list proxy).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
opts=(-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -o Acquire::Retries=3)
if [ -n "${IMAGEFACTORY_PROXY:-}" ]; then opts+=(-o "Acquire::http::Proxy=$IMAGEFACTORY_PROXY"); fi
install=(__INSTALL__)
remove=(__REMOVE__)
if [ "${IMAGEFACTORY_UPDATE:-0}" = 1 ] || [ ${#install[@]} -gt 0 ]; then
  apt-get "${opts[@]}" update
fi
if [ "${IMAGEFACTORY_UPDATE:-0}" = 1 ]; then
  # all available updates (security included); new dependencies may come in, nothing is removed
  apt-get "${opts[@]}" -y --with-new-pkgs upgrade
fi
if [ ${#install[@]} -gt 0 ]; then
  apt-get "${opts[@]}" -y --no-install-recommends install "${install[@]}"
fi
purge=()
for p in "${remove[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then purge+=("$p"); fi
done
if [ ${#purge[@]} -gt 0 ]; then
  apt-get "${opts[@]}" -y purge --auto-remove "${purge[@]}"
fi
apt-get clean
"""

ZYPPER = r"""#!/bin/bash
# imagefactory step "packages" (transactional-update): SLE Micro's root is read-only; changes go
# into a new snapshot that becomes active at the next boot (the provisioner expects the reboot).
set -euo pipefail
install=(__INSTALL__)
remove=(__REMOVE__)
if [ -n "${IMAGEFACTORY_PROXY:-}" ]; then
  export https_proxy="$IMAGEFACTORY_PROXY" http_proxy="$IMAGEFACTORY_PROXY"
fi
tu=(transactional-update --non-interactive --continue)
if [ "${IMAGEFACTORY_UPDATE:-0}" = 1 ]; then "${tu[@]}" up; fi
if [ ${#install[@]} -gt 0 ]; then "${tu[@]}" pkg install --no-recommends "${install[@]}"; fi
purge=()
for p in "${remove[@]}"; do
  if rpm -q "$p" >/dev/null 2>&1; then purge+=("$p"); fi
done
if [ ${#purge[@]} -gt 0 ]; then "${tu[@]}" pkg remove "${purge[@]}"; fi
"""


@dataclass(frozen=True)
class Script:
    name: str
    text: str
    env: dict[str, str] = field(default_factory=dict)
    reboot: bool = False  # the provisioner must expect a disconnect (SLE Micro snapshots)


def packages_script(recipe: Recipe, *, install: list[str], remove: list[str]) -> Script:
    d = distro(recipe.os.family)
    text = APT if d.package_manager == "apt" else ZYPPER
    text = (text.replace("__INSTALL__", " ".join(shlex.quote(p) for p in install))
            .replace("__REMOVE__", " ".join(shlex.quote(p) for p in remove)))
    return Script("packages", text, reboot=d.package_manager == "transactional-update")


def packer_scripts(recipe: Recipe) -> list[Script]:
    """The provisioners of a Packer build: packages (recipe + STIG), with all updates applied."""
    stig_remove, stig_install = stig.packages(recipe)
    d = distro(recipe.os.family)
    install = sorted({*recipe.packages.install, *stig_install, *d.feature_packages(recipe)})
    remove = sorted({*recipe.packages.remove, *stig_remove, *d.unwanted_packages})
    s = packages_script(recipe, install=install, remove=remove)
    return [Script(s.name, s.text, {"IMAGEFACTORY_UPDATE": "1" if recipe.packer.update else "0"},
                   s.reboot)]
