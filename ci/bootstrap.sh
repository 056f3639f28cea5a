#!/usr/bin/env bash
# Set up a Debian 12 build host for imagefactory, idempotently: host packages (ci/debian-packages.txt),
# the libvirt daemons (started by hand: these machines have no service manager), and a virtualenv
# (.venv) with the project installed. Safe to run again; fast when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "ci/bootstrap.sh: run as root (builds need chroot, mounts and libvirt's system instance)" >&2
  exit 2
fi

mapfile -t wanted < <(grep -vE '^\s*(#|$)' ci/debian-packages.txt)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "+ apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# /dev/kvm as udev would leave it (root:kvm 0660). Without udev it stays root-only, and libvirt 9.0
# then re-probes QEMU forever ("KVM was enabled when probing ... but it is not available now"),
# hanging every domain start - even TCG ones.
if [ -e /dev/kvm ] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi

# libvirt: system instance, no default network (guests use user-mode networking).
pgrep -x virtlogd >/dev/null || virtlogd -d
if ! pgrep -x libvirtd >/dev/null; then
  libvirtd -d
  for _ in $(seq 60); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.5; done
fi
# Never the 'default' NAT network (192.168.122.0/24): guests use user-mode networking only.
virsh -q -c qemu:///system net-autostart default --disable >/dev/null 2>&1 || true

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.imagefactory-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "+ pip install -e .[dev] (log: .venv/pip.log)"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' > .venv/pip.log 2>&1 \
    || { tail -40 .venv/pip.log; exit 1; }
  .venv/bin/python -c 'import imagefactory, libvirt, testinfra' 
  echo "$want" > "$stamp"
fi

# gitlab-ci-local, the CI engine tests/integration/test_gitlab_ci_local.py runs the nightly
# pipeline with (npm registry; Node.js >= 18 from the machine). 4.69.0: later releases call
# Node 22's Set.prototype.union and crash on Node 20.
GCL_VERSION=4.69.0
if [ "$(.ci-tools/node_modules/.bin/gitlab-ci-local --version 2>/dev/null)" != "$GCL_VERSION" ]; then
  command -v npm >/dev/null || { echo "ci/bootstrap.sh: npm is missing (Node.js >= 18 with npm)" >&2; exit 1; }
  echo "+ npm install gitlab-ci-local@$GCL_VERSION (into .ci-tools/)"
  npm install --prefix .ci-tools --no-audit --no-fund --loglevel=error "gitlab-ci-local@$GCL_VERSION" >/dev/null
fi
