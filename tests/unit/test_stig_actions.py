"""The offline fix/check engine on fake image roots: one sample per kind of control (fix result,
passing and failing roots), host-side checks through a fake testinfra host, idempotency, and
that nothing is ever written outside the root."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import sqlite3
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from imagefactory.errors import BuildError, UserError
from imagefactory.stig import parsers
from imagefactory.stig.actions import (
    DOD_BANNER,
    Tailoring,
    apply_fixes,
    check_host,
    check_root,
    evaluate,
    host_check,
    package_plan,
)
from imagefactory.stig.catalogue import Control, load_catalogue
from imagefactory.stig.kinds import CheckContext, FixContext, PamLineAbsent
from imagefactory.stig.kinds_fs import FileMode
from imagefactory.stig.kinds_svc import AuditRule, YamlListContains
from imagefactory.stig.sources import HostSource, RootSource, inroot
from imagefactory.stig.xccdf import load_benchmark

PAM_AUTH = ("auth\t[success=1 default=ignore]\tpam_unix.so nullok\n"
            "auth\trequisite\t\t\tpam_deny.so\nauth\trequired\t\t\tpam_permit.so\n")
PAM_PASSWORD = ("password\t[success=1 default=ignore]\tpam_unix.so obscure use_authtok try_first_pass "
                "yescrypt\npassword\trequisite\t\t\tpam_deny.so\npassword\trequired\t\t\tpam_permit.so\n")
SSH_UNIT = ("[Unit]\nDescription=OpenBSD Secure Shell server\n[Service]\nExecStart=/usr/sbin/sshd -D\n"
            "[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n")
UBUNTU = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/bash\nsyslog:x:104:110::/home/syslog:/usr/sbin/nologin\n",
    "etc/group": "root:x:0:\nadm:x:4:syslog\nsudo:x:27:\nsyslog:x:110:\nsystemd-journal:x:101:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\nsyslog:!:19000::::::\n",
    "etc/ssh/sshd_config": "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\n"
                           "UsePAM yes\nX11Forwarding yes\nMatch User backup\n  X11Forwarding yes\n",
    "etc/pam.d/common-auth": PAM_AUTH,
    "etc/pam.d/common-password": PAM_PASSWORD,
    "etc/login.defs": "#\tPASS_MAX_DAYS\tMaximum number of days a password may be used.\n"
                      "PASS_MAX_DAYS\t99999\nPASS_MIN_DAYS\t0\nUMASK\t\t022\nENCRYPT_METHOD SHA512\n",
    "etc/sysctl.conf": "#kernel.dmesg_restrict = 0\nnet.ipv4.tcp_syncookies = 0\n",
    "usr/lib/sysctl.d/50-default.conf": "kernel.randomize_va_space = 1\n",
    "etc/sudoers": "root ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n",
    "etc/sudoers.d/90-cloud-init-users": "ubuntu ALL=(ALL) NOPASSWD:ALL\n",
    "lib/systemd/system/ssh.service": SSH_UNIT,
    "var/lib/dpkg/status": "Package: openssh-server\nStatus: install ok installed\n\n"
                           "Package: telnetd\nStatus: install ok installed\n\n"
                           "Package: nfs-common\nStatus: deinstall ok config-files\n",
    "etc/os-release": 'NAME="Ubuntu"\nVERSION_ID="22.04"\n',
    "var/log/dpkg.log": "x\n",
    "usr/bin/tool": "#!/bin/sh\n",
}


def make_root(base: Path, files: dict[str, str], links: dict[str, str] | None = None,
              modes: dict[str, int] | None = None) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for rel, target in (links or {}).items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)
    for rel, mode in (modes or {}).items():
        os.chmod(base / rel, mode)
    return base


def ubuntu_root(tmp_path: Path, name: str = "root") -> Path:
    root = make_root(tmp_path / name, UBUNTU, modes={"usr/bin/tool": 0o777, "var/log/dpkg.log": 0o666})
    (root / "var/log").chmod(0o775)
    return root


# A minimal noble as mmdebstrap leaves it: merged /usr, sshd socket-activated, PAM from
# pam-auth-update's profiles (common-* as noble generates them), no rsyslog/auditd/apparmor yet.
NOBLE_SSH_SERVICE = ("[Unit]\nDescription=OpenBSD Secure Shell server\nAfter=network.target auditd.service\n"
                     "[Service]\nExecStartPre=/usr/sbin/sshd -t\nExecStart=/usr/sbin/sshd -D $SSHD_OPTS\n"
                     "Type=notify\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n")
NOBLE_SSH_SOCKET = ("[Unit]\nDescription=OpenBSD Secure Shell server socket\n"
                    "Before=sockets.target ssh.service\n[Socket]\nListenStream=0.0.0.0:22\n"
                    "ListenStream=[::]:22\nAccept=no\n"
                    "[Install]\nWantedBy=sockets.target\nRequiredBy=ssh.service\n")
NOBLE = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/bash\nsyslog:x:102:102::/nonexistent:/usr/sbin/nologin\n",
    "etc/group": "root:x:0:\nadm:x:4:syslog\nsudo:x:27:\nsyslog:x:102:\nsystemd-journal:x:999:\n",
    "etc/shadow": "root:*:20000:0:99999:7:::\nsyslog:!:20000::::::\n",
    "etc/os-release": 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n',
    "etc/ssh/sshd_config": "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\n"
                           "UsePAM yes\nX11Forwarding yes\nPrintMotd no\nAcceptEnv LANG LC_*\n",
    "etc/ssh/ssh_config": "Include /etc/ssh/ssh_config.d/*.conf\n\nHost *\n#   ForwardAgent no\n"
                          "#   Ciphers aes128-ctr,aes192-ctr,aes256-ctr,aes128-cbc,3des-cbc\n"
                          "#   MACs hmac-md5,hmac-sha1,umac-64@openssh.com\n    SendEnv LANG LC_*\n"
                          "    HashKnownHosts yes\n",
    "etc/pam.d/common-auth": "auth\t[success=1 default=ignore]\tpam_unix.so nullok\n"
                             "auth\trequisite\t\t\tpam_deny.so\nauth\trequired\t\t\tpam_permit.so\n",
    "etc/pam.d/common-password": "password\t[success=1 default=ignore]\tpam_unix.so obscure yescrypt\n"
                                 "password\trequisite\t\t\tpam_deny.so\npassword\trequired\t\t\tpam_permit.so\n",
    "etc/security/faillock.conf": "# audit\n# silent\n# deny = 3\n# fail_interval = 900\n"
                                  "# unlock_time = 600\n",
    "etc/login.defs": "PASS_MAX_DAYS\t99999\nPASS_MIN_DAYS\t0\nUMASK\t\t022\nENCRYPT_METHOD SHA512\n",
    "etc/sysctl.d/10-kernel-hardening.conf": "kernel.dmesg_restrict = 0\n",
    "etc/sudoers": "root ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n",
    "usr/lib/systemd/system/ssh.service": NOBLE_SSH_SERVICE,
    "usr/lib/systemd/system/ssh.socket": NOBLE_SSH_SOCKET,
    "var/lib/dpkg/status": "Package: openssh-server\nStatus: install ok installed\n\n"
                           "Package: telnetd\nStatus: install ok installed\n",
    "var/log/faillog": "",
    "usr/bin/tool": "#!/bin/sh\n",
}
NOBLE_LINKS = {
    "bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib",
    "etc/systemd/system/sockets.target.wants/ssh.socket": "/usr/lib/systemd/system/ssh.socket",
    "etc/systemd/system/ssh.service.requires/ssh.socket": "/usr/lib/systemd/system/ssh.socket",
}


def noble_root(tmp_path: Path, name: str = "noble") -> Path:
    return make_root(tmp_path / name, NOBLE, NOBLE_LINKS)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, st.st_uid, st.st_gid)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_mode, st.st_uid, st.st_gid)
    return out


def controls(name: str, *ids: str) -> list[Control]:
    cat = load_catalogue(name)
    found = [cat.get(i) for i in ids]
    assert all(found), ids
    return [c for c in found if c is not None]


def fix(root: Path, family: str, *ids: str, name: str = "ubuntu2204",
        tailoring: Tailoring | None = None) -> Any:
    res = apply_fixes(root, family, controls(name, *ids), tailoring)
    assert not res.failed, res.failed
    return res


def status(root: Path, family: str, stig_id: str, name: str = "ubuntu2204", **kw: Any) -> tuple[str, str]:
    r = check_root(root, family, controls(name, stig_id), **kw)[stig_id]
    return r.status, r.evidence


# --- a fake testinfra host ----------------------------------------------------------------------


@dataclass
class _Result:
    rc: int
    stdout: str


class _File:
    def __init__(self, text: str | None) -> None:
        self.exists = text is not None
        self._text = text

    @property
    def content_string(self) -> str:
        assert self._text is not None
        return self._text


class _Package:
    def __init__(self, installed: bool) -> None:
        self.is_installed = installed


class FakeHost:
    """Only what host_check may use: file().content_string/.exists, run().rc/.stdout, package(),
    sysctl()."""

    def __init__(self, files: dict[str, str] | None = None, commands: dict[str, str] | None = None,
                 packages: Iterable[str] = (), sysctls: dict[str, Any] | None = None) -> None:
        self.files = files or {}
        self.commands = commands or {}
        self.packages = set(packages)
        self.sysctls = sysctls or {}
        self.ran: list[str] = []

    def file(self, path: str) -> _File:
        return _File(self.files.get(path))

    def run(self, cmd: str) -> _Result:
        self.ran.append(cmd)
        if cmd.startswith("for f in "):
            pats = cmd[len("for f in "):cmd.index("; do")].split()
            hits = [p for p in sorted(self.files) if any(fnmatch.fnmatch(p, x) for x in pats)]
            return _Result(0, "".join(f"{p}\n" for p in hits))
        if cmd.startswith("cat -- "):
            content = self.files.get(shlex.split(cmd)[2])
            return _Result(0, content) if content is not None else _Result(1, "")
        for prefix, out in self.commands.items():
            if cmd.startswith(prefix):
                return _Result(0, out)
        return _Result(1, "")

    def package(self, name: str) -> _Package:
        return _Package(name in self.packages)

    def sysctl(self, key: str) -> Any:
        return self.sysctls[key]


# --- one sample per kind ------------------------------------------------------------------------


def test_sysctl_is_a_dropin_and_conflicts_in_etc_are_commented_out(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    assert status(root, "ubuntu", "UBTU-22-253010")[0] == "fail"  # /etc/sysctl.conf says 0
    assert status(root, "ubuntu", "UBTU-22-213020")[0] == "fail"  # only the vendor default 1
    fix(root, "ubuntu", "UBTU-22-253010", "UBTU-22-213020", "UBTU-22-213010")
    assert (root / "etc/sysctl.d/99-imagefactory-stig.conf").read_text() == (
        "net.ipv4.tcp_syncookies = 1\nkernel.randomize_va_space = 2\nkernel.dmesg_restrict = 1\n")
    assert (root / "etc/sysctl.conf").read_text() == (
        "#kernel.dmesg_restrict = 0\n# net.ipv4.tcp_syncookies = 0\n")
    assert (root / "usr/lib/sysctl.d/50-default.conf").read_text() == "kernel.randomize_va_space = 1\n"
    for i in ("UBTU-22-253010", "UBTU-22-213020", "UBTU-22-213010"):
        assert status(root, "ubuntu", i)[0] == "pass", i
    # /etc/sysctl.conf is applied last: a later conflicting value wins and fails the check
    (root / "etc/sysctl.conf").write_text("kernel.dmesg_restrict=0\n")
    st, ev = status(root, "ubuntu", "UBTU-22-213010")
    assert st == "fail" and "/etc/sysctl.conf:1" in ev and "overridden" in ev
    # on a booted host the live value counts
    c = controls("ubuntu2204", "UBTU-22-213010")[0].checks_for("ubuntu")[0]
    assert host_check(c, FakeHost(sysctls={"kernel.dmesg_restrict": 1})).status == "pass"
    assert host_check(c, FakeHost(sysctls={"kernel.dmesg_restrict": 0})).status == "fail"


def test_sshd_dropin_wins_over_conflicting_lines(tmp_path: Path) -> None:
    files = dict(UBUNTU)
    files["etc/ssh/sshd_config"] = (
        "PermitEmptyPasswords yes\nX11Forwarding yes\nMatch User backup\n  X11Forwarding yes\n")
    files["etc/ssh/sshd_config.d/10-early.conf"] = "X11Forwarding yes\n"
    root = make_root(tmp_path / "root", files)
    st, ev = status(root, "ubuntu", "UBTU-22-255040")
    assert st == "fail" and "/etc/ssh/sshd_config:2" in ev
    fix(root, "ubuntu", "UBTU-22-255040", "UBTU-22-255025")
    assert (root / "etc/ssh/sshd_config.d/50-imagefactory-stig.conf").read_text() == (
        "X11Forwarding no\nPermitEmptyPasswords no\nPermitUserEnvironment no\n")
    main = (root / "etc/ssh/sshd_config").read_text().splitlines()
    assert main[0] == "Include /etc/ssh/sshd_config.d/*.conf"
    assert main[1].startswith("# PermitEmptyPasswords yes") and main[2].startswith("# X11Forwarding yes")
    assert main[3:] == ["Match User backup", "  X11Forwarding yes"]  # conditional blocks are left alone
    assert (root / "etc/ssh/sshd_config.d/10-early.conf").read_text().startswith("# X11Forwarding yes")
    assert status(root, "ubuntu", "UBTU-22-255040") == (
        "pass", "/etc/ssh/sshd_config.d/50-imagefactory-stig.conf:1: X11Forwarding no")
    assert status(root, "ubuntu", "UBTU-22-255025")[0] == "pass"
    # first match wins: an earlier drop-in added later makes the check fail again
    (root / "etc/ssh/sshd_config.d/01-late.conf").write_text("X11Forwarding yes\n")
    assert status(root, "ubuntu", "UBTU-22-255040")[0] == "fail"
    # booted host: sshd -T
    c = controls("ubuntu2204", "UBTU-22-255040")[0].checks_for("ubuntu")[0]
    assert host_check(c, FakeHost(commands={"sshd -T": "port 22\nx11forwarding no\n"})).status == "pass"
    assert host_check(c, FakeHost(commands={"sshd -T": "x11forwarding yes\n"})).status == "fail"
    assert host_check(c, FakeHost()).status == "error"


def test_login_defs_key_value(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    assert status(root, "ubuntu", "UBTU-22-411030")[0] == "fail"
    assert status(root, "ubuntu", "UBTU-22-411025")[0] == "fail"
    fix(root, "ubuntu", "UBTU-22-411030", "UBTU-22-411025", "UBTU-22-412035")
    assert (root / "etc/login.defs").read_text() == (
        "#\tPASS_MAX_DAYS\tMaximum number of days a password may be used.\nPASS_MAX_DAYS 60\n"
        "PASS_MIN_DAYS 1\nUMASK 077\nENCRYPT_METHOD SHA512\n")
    assert status(root, "ubuntu", "UBTU-22-411030")[0] == "pass"
    (root / "etc/login.defs").write_text("PASS_MIN_DAYS 7\nPASS_MAX_DAYS 30\n")  # stricter passes
    assert status(root, "ubuntu", "UBTU-22-411025")[0] == "pass"
    assert status(root, "ubuntu", "UBTU-22-411030")[0] == "pass"
    (root / "etc/login.defs").write_text("PASS_MAX_DAYS 30\nPASS_MAX_DAYS 90\n")  # conflicting results
    st, ev = status(root, "ubuntu", "UBTU-22-411030")
    assert st == "fail" and "/etc/login.defs:2" in ev
    (root / "etc/login.defs").write_text("PASS_MAX_DAYS 0\n")  # 0 locks accounts: not allowed
    assert status(root, "ubuntu", "UBTU-22-411030")[0] == "fail"


def test_pam_nullok_removed_and_pam_unix_options(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    pam = PAM_PASSWORD.replace("yescrypt", "yescrypt nullok_secure")
    (root / "etc/pam.d/common-password").write_text(pam)
    st, ev = status(root, "ubuntu", "UBTU-22-611060")
    assert st == "fail" and "common-auth:1" in ev and "common-password:1" in ev
    fix(root, "ubuntu", "UBTU-22-611060", "UBTU-22-611055")
    assert (root / "etc/pam.d/common-auth").read_text() == PAM_AUTH.replace(" nullok", "")
    assert (root / "etc/pam.d/common-password").read_text().splitlines()[0] == (
        "password\t[success=1 default=ignore]\tpam_unix.so\tuse_authtok try_first_pass obscure sha512 shadow "
        "rounds=100000")
    assert status(root, "ubuntu", "UBTU-22-611060")[0] == "pass"
    assert status(root, "ubuntu", "UBTU-22-611055")[0] == "pass"
    (root / "etc/pam.d/common-password").write_text(PAM_PASSWORD)
    assert status(root, "ubuntu", "UBTU-22-611055")[0] == "fail"
    drop = PamLineAbsent(type="pam_line_absent", paths=("/etc/pam.d/common-*",), regex=r"pam_deny\.so")
    assert evaluate(drop, RootSource(root), CheckContext()).status == "fail"
    drop.apply(FixContext(root))
    assert "pam_deny" not in (root / "etc/pam.d/common-password").read_text()
    assert evaluate(drop, RootSource(root), CheckContext()).status == "pass"


def test_pam_lines_keep_the_stack_working(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    fix(root, "ubuntu", "UBTU-22-411045", "UBTU-22-412010")
    assert (root / "etc/pam.d/common-auth").read_text().splitlines() == [
        "auth\trequired\tpam_faildelay.so\tdelay=4000000",
        "auth\t[success=1 default=ignore]\tpam_unix.so nullok",
        "auth\t[default=die]\tpam_faillock.so authfail",  # skipped by success=1 on a good password
        "auth\tsufficient\tpam_faillock.so authsucc",
        "auth\trequisite\t\t\tpam_deny.so",
        "auth\trequired\t\t\tpam_permit.so",
    ]
    assert (root / "etc/security/faillock.conf").read_text() == (
        "audit\nsilent\ndeny = 3\nfail_interval = 900\nunlock_time = 0\n")
    assert status(root, "ubuntu", "UBTU-22-411045")[0] == "pass"
    (root / "etc/security/faillock.conf").write_text(
        "audit\nsilent\ndeny = 5\nfail_interval = 900\nunlock_time = 0\n")
    assert status(root, "ubuntu", "UBTU-22-411045")[0] == "fail"


def test_modprobe_disable(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    fix(root, "ubuntu", "UBTU-22-291010")
    assert (root / "etc/modprobe.d/imagefactory-stig.conf").read_text() == (
        "install usb-storage /bin/false\nblacklist usb-storage\n")
    assert status(root, "ubuntu", "UBTU-22-291010")[0] == "pass"
    failing = make_root(tmp_path / "failing", {"etc/modprobe.d/blacklist.conf": "blacklist usb-storage\n"})
    st, ev = status(failing, "ubuntu", "UBTU-22-291010")
    assert st == "fail" and "missing install" in ev
    other = make_root(tmp_path / "other", {"usr/lib/modprobe.d/stig.conf": "install usb_storage /bin/true\n"
                                                                           "blacklist usb_storage\n"})
    assert status(other, "ubuntu", "UBTU-22-291010")[0] == "pass"


def test_packages_are_returned_for_the_builder_not_installed(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    before = (root / "var/lib/dpkg/status").read_text()
    assert status(root, "ubuntu", "UBTU-22-215035") == ("fail", "telnetd is installed")
    assert status(root, "ubuntu", "UBTU-22-215040")[0] == "pass"  # nfs-common only has config files left
    res = fix(root, "ubuntu", "UBTU-22-215035", "UBTU-22-215040", "UBTU-22-653010", "UBTU-22-212015")
    assert res.packages_to_remove == ["telnetd", "nfs-kernel-server", "nfs-common"]
    assert res.packages_to_install == ["auditd"]
    assert res.kernel_args == ["audit=1"]
    assert (root / "var/lib/dpkg/status").read_text() == before  # nothing was run
    assert package_plan("ubuntu", controls("ubuntu2204", "UBTU-22-215035", "UBTU-22-653010")) == (
        ["telnetd"], ["auditd"])
    assert status(root, "ubuntu", "UBTU-22-215035", packages=["openssh-server"])[0] == "pass"
    c = controls("ubuntu2204", "UBTU-22-215035")[0].checks_for("ubuntu")[0]
    assert host_check(c, FakeHost(packages=["telnetd"])).status == "fail"
    assert host_check(c, FakeHost()).status == "pass"


def test_rpm_sqlite_database_is_read_offline_and_read_only(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", {})
    db = root / "usr/lib/sysimage/rpm/rpmdb.sqlite"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE Name (key TEXT, hnum INTEGER)")
    con.executemany("INSERT INTO Name VALUES (?, ?)", [("openssh", 1), (b"telnet-server", 2)])
    con.commit()
    con.close()
    before = snapshot(root)
    assert status(root, "sle-micro", "SLEM-05-255010", name="slmicro5")[0] == "pass"
    assert status(root, "sle-micro", "SLEM-05-215015", name="slmicro5") == (
        "fail", "telnet-server is installed")
    assert snapshot(root) == before
    st, ev = status(make_root(tmp_path / "empty", {}), "sle-micro", "SLEM-05-215015", name="slmicro5")
    assert st == "error" and "package database" in ev


def test_systemd_mask_and_enable(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    assert status(root, "ubuntu", "UBTU-22-211015")[0] == "fail"
    fix(root, "ubuntu", "UBTU-22-211015", "UBTU-22-255015")
    assert os.readlink(root / "etc/systemd/system/ctrl-alt-del.target") == "/dev/null"
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/ssh.service") == (
        "/lib/systemd/system/ssh.service")
    assert os.readlink(root / "etc/systemd/system/sshd.service") == "/lib/systemd/system/ssh.service"
    assert status(root, "ubuntu", "UBTU-22-211015")[0] == "pass"
    assert status(root, "ubuntu", "UBTU-22-255015")[0] == "pass"  # service_active is a host-only check
    mask = controls("ubuntu2204", "UBTU-22-211015")[0].checks_for("ubuntu")[0]
    assert host_check(mask, FakeHost(commands={"systemctl is-enabled": "masked\n"})).status == "pass"
    assert host_check(mask, FakeHost(commands={"systemctl is-enabled": "static\n"})).status == "fail"
    res = check_host(FakeHost(commands={"systemctl is-enabled ssh.service": "enabled\n",
                                        "systemctl is-active ssh.service": "inactive\n"}),
                     "ubuntu", controls("ubuntu2204", "UBTU-22-255015"))
    assert res["UBTU-22-255015"].status == "fail" and "inactive" in res["UBTU-22-255015"].evidence


def test_audit_rules(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    fix(root, "ubuntu", "UBTU-22-654020", "UBTU-22-654155")
    rules = root / "etc/audit/rules.d/stig.rules"
    assert rules.read_text() == (
        "-a always,exit -F path=/usr/bin/chage -F perm=x -F auid>=1000 -F auid!=unset -k privileged-chage\n"
        "-a always,exit -F arch=b32 -S chmod,fchmod,fchmodat -F auid>=1000 -F auid!=unset -k perm_chng\n"
        "-a always,exit -F arch=b64 -S chmod,fchmod,fchmodat -F auid>=1000 -F auid!=unset -k perm_chng\n")
    assert rules.stat().st_mode & 0o777 == 0o640
    assert status(root, "ubuntu", "UBTU-22-654020")[0] == "pass"
    # the key is arbitrary and auid!=-1 is auid!=unset: an equivalent rule elsewhere passes
    other = make_root(tmp_path / "other", {"etc/audit/rules.d/local.rules":
                                           "-a always,exit -F path=/usr/bin/chage -F perm=x -F auid>=1000 "
                                           "-F auid!=-1 -k mykey\n"})
    assert status(other, "ubuntu", "UBTU-22-654020")[0] == "pass"
    assert status(other, "ubuntu", "UBTU-22-654155")[0] == "fail"
    c = controls("ubuntu2204", "UBTU-22-654020")[0].checks_for("ubuntu")[0]
    loaded = "-a always,exit -S all -F path=/usr/bin/chage -F perm=x -F auid>=1000 -F auid!=-1 -F key=x\n"
    assert host_check(c, FakeHost(commands={"auditctl -l": loaded})).status == "pass"
    assert host_check(c, FakeHost(commands={"auditctl -l": "No rules\n"})).status == "fail"


def test_file_permissions(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    assert status(root, "ubuntu", "UBTU-22-232015")[0] == "fail"
    assert status(root, "ubuntu", "UBTU-22-232026")[0] == "fail"
    fix(root, "ubuntu", "UBTU-22-232015", "UBTU-22-232026")
    assert (root / "usr/bin/tool").stat().st_mode & 0o7777 == 0o755
    assert (root / "var/log/dpkg.log").stat().st_mode & 0o7777 == 0o644 & 0o640
    # /var/log itself: verified on the host, not applicable while rsyslog runs (the check text)
    [c] = controls("ubuntu2204", "UBTU-22-232025")[0].checks_for("ubuntu")
    assert host_check(c, FakeHost(commands={"systemctl is-active rsyslog.service; stat -c 'mode %a' /var/log":
                                            "active\nmode 775\n"})).status == "pass"
    assert host_check(c, FakeHost(commands={"systemctl is-active rsyslog.service; stat -c 'mode %a' /var/log":
                                            "inactive\nmode 775\n"})).status == "fail"
    for i in ("UBTU-22-232015", "UBTU-22-232026"):
        assert status(root, "ubuntu", i)[0] == "pass", i
    # ownership is resolved with the image's own /etc/passwd, never the build host's
    (root / "usr/bin/tool").chmod(0o4755)  # setuid is not judged, only rwx bits
    os.lchown(root / "usr/bin/tool", 4242, 4242)
    st, ev = status(root, "ubuntu", "UBTU-22-232050")
    assert st == "fail" and "/usr/bin/tool: owner 4242" in ev
    fix(root, "ubuntu", "UBTU-22-232050", "UBTU-22-232055")
    assert (root / "usr/bin/tool").lstat().st_uid == 0
    assert status(root, "ubuntu", "UBTU-22-232050")[0] == "pass"
    check = FileMode(type="file_mode", paths=("/usr/bin",), recursive=True, kind="file", max_mode="0755")
    find = "0777\t0\t0\tf\t/usr/bin/bad\n0755\t0\t0\tf\t/usr/bin/good\n"
    r = host_check(check, FakeHost(commands={"find -H /usr/bin -printf": find}))
    assert r.status == "fail" and r.evidence == "/usr/bin/bad: mode 0777 > 0755"
    # on the host too, names come from the image's own account files (not a lookup per file)
    owned = FileMode(type="file_mode", paths=("/usr/bin",), recursive=True, owner="root", group="root")
    accounts = {"/etc/passwd": "root:x:0:0::/root:/bin/sh\nbin:x:2:2::/:/bin/false\n",
                "/etc/group": "root:x:0:\n"}
    find = "0755\t0\t0\tf\t/usr/bin/ok\n0755\t2\t0\tf\t/usr/bin/bins\n0755\t0\t4242\tf\t/usr/bin/odd\n"
    r = host_check(owned, FakeHost(files=accounts, commands={"find -H /usr/bin -printf": find}))
    assert (r.status, r.evidence) == ("fail", "/usr/bin/bins: owner bin; /usr/bin/odd: group 4242")


def test_rke2_config_list_entry(tmp_path: Path) -> None:
    cfg = "etc/rancher/rke2/config.yaml"
    root = make_root(tmp_path / "root", {cfg: "kube-apiserver-arg:\n- anonymous-auth=true\n- foo=bar\n"})
    assert status(root, "server", "CNTR-R2-000160", name="rke2")[0] == "fail"
    fix(root, "server", "CNTR-R2-000160", "CNTR-R2-001500", "CNTR-R2-000120", name="rke2")
    assert yaml.safe_load((root / cfg).read_text()) == {
        "kube-apiserver-arg": ["foo=bar", "anonymous-auth=false"], "secrets-encryption": True}
    for i in ("CNTR-R2-000160", "CNTR-R2-001500", "CNTR-R2-000120"):
        assert status(root, "server", i, name="rke2")[0] == "pass", i
    # drop-ins are merged like RKE2 does: a plain key replaces the list, `key+` appends
    dropin = root / "etc/rancher/rke2/config.yaml.d/90-site.yaml"
    dropin.parent.mkdir()
    dropin.write_text("kube-apiserver-arg:\n- insecure-port=0\n")
    assert status(root, "server", "CNTR-R2-000160", name="rke2")[0] == "fail"
    assert status(root, "server", "CNTR-R2-000120", name="rke2") == (
        "fail", "kube-apiserver-arg has insecure-port=0")
    dropin.write_text("kube-apiserver-arg+:\n- audit-log-maxage=30\n")
    assert status(root, "server", "CNTR-R2-000160", name="rke2")[0] == "pass"
    assert status(root, "server", "CNTR-R2-000320", name="rke2")[0] == "pass"
    new = make_root(tmp_path / "new", {})
    fix(new, "agent", "CNTR-R2-000130", "CNTR-R2-000520", name="rke2")
    assert (new / cfg).read_text() == "kubelet-arg:\n- read-only-port=0\n"
    assert (new / cfg).stat().st_mode & 0o777 == 0o600
    r = host_check(YamlListContains(type="yaml_list_contains", path="/" + cfg, key="kubelet-arg",
                                    item="read-only-port=0"),
                   FakeHost(files={"/" + cfg: (new / cfg).read_text()}))
    assert r.status == "pass"


def test_rke2_cipher_subset_and_tls_version(tmp_path: Path) -> None:
    cfg = "etc/rancher/rke2/config.yaml"
    short = "tls-cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
    text = "".join(f"{k}:\n- tls-min-version=VersionTLS13\n- {short}\n" for k in (
        "kube-apiserver-arg", "kube-controller-manager-arg", "kube-scheduler-arg"))
    root = make_root(tmp_path / "root", {cfg: text})
    assert status(root, "server", "CNTR-R2-000010", name="rke2")[0] == "pass"
    weak = text.replace("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_RSA_WITH_3DES_EDE_CBC_SHA", 1)
    (root / cfg).write_text(weak)
    assert status(root, "server", "CNTR-R2-000010", name="rke2")[0] == "fail"


# --- whole catalogues ---------------------------------------------------------------------------

SLEM = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
    "etc/group": "root:x:0:\nwheel:x:10:\n",
    "etc/shadow": "root:$6$abc:19000::::::\n",
    "usr/etc/ssh/sshd_config": "PermitRootLogin yes\nX11Forwarding yes\n",
    "etc/pam.d/common-password-pc": "password\trequisite\tpam_cracklib.so\n"
                                    "password\toptional\tpam_gnome_keyring.so\n"
                                    "password\trequired\tpam_unix.so\t"
                                    "use_authtok nullok shadow try_first_pass\n",
    "etc/pam.d/common-auth-pc": "auth\trequired\tpam_env.so\n"
                                "auth\trequired\tpam_unix.so\ttry_first_pass nullok\n",
    "etc/login.defs": "ENCRYPT_METHOD SHA512\n",
    "etc/sudoers": "Defaults targetpw   # ask for the password of the target user\n"
                   "ALL   ALL=(ALL) ALL   # WARNING! Only use this together with 'Defaults targetpw'!\n"
                   "root ALL=(ALL) ALL\n@includedir /etc/sudoers.d\n",
    "etc/audit/rules.d/audit.rules": "-D\n-a task,never\n",
    "etc/zypp/zypp.conf": "[main]\n# gpgcheck = on\n",
    "usr/lib/systemd/system/sshd.service": "[Unit]\n[Service]\n[Install]\nWantedBy=multi-user.target\n",
    "usr/lib/systemd/system/auditd.service": "[Unit]\n[Service]\n[Install]\nWantedBy=multi-user.target\n",
    "run/issue": "Welcome\n",
}
SLEM_LINKS = {"etc/pam.d/common-password": "common-password-pc", "etc/pam.d/common-auth": "common-auth-pc",
              "etc/issue": "../run/issue"}


@pytest.mark.parametrize(("name", "family"), [
    ("ubuntu2204", "ubuntu"), ("ubuntu2204", "debian"), ("ubuntu2404", "ubuntu"), ("slmicro5", "sle-micro"),
    ("rke2", "server"), ("rke2", "agent")])
def test_whole_catalogue_applies_idempotently_and_its_checks_pass(tmp_path: Path, name: str,
                                                                  family: str) -> None:
    if name == "slmicro5":
        root = make_root(tmp_path / "root", SLEM, SLEM_LINKS)
    elif name == "ubuntu2404":
        root = noble_root(tmp_path)
    elif name == "rke2":
        root = make_root(tmp_path / "root", {"etc/passwd": "root:x:0:0::/root:/bin/sh\n",
                                             "etc/group": "root:x:0:\n"})
    else:
        root = ubuntu_root(tmp_path)
    ctl = load_catalogue(name).controls_for(family)
    first = apply_fixes(root, family, ctl)
    # only units whose packages the builder has not installed yet may fail on the fake root
    assert set(first.failed) <= {"UBTU-22-431015", "UBTU-22-652010", "UBTU-22-653015",
                                 "UBTU-24-100510", "UBTU-24-100200", "UBTU-24-100410"}
    snap = snapshot(root)
    second = apply_fixes(root, family, ctl)
    assert snapshot(root) == snap
    assert second.applied == first.applied and second.packages_to_install == first.packages_to_install
    results = check_root(root, family, ctl, packages=set(first.packages_to_install))
    for c in ctl:
        kinds = {k.kind_name() for k in c.fix_for(family)}
        if c.id in first.applied and not kinds & {"kernel_arg", "package_absent"}:
            assert results[c.id].status == "pass", (c.id, results[c.id].evidence)


def test_slem_specifics(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", SLEM, SLEM_LINKS)
    ids = ("SLEM-05-631025", "SLEM-05-611010", "SLEM-05-611055", "SLEM-05-611045", "SLEM-05-211020",
           "SLEM-05-432010", "SLEM-05-432025", "SLEM-05-654245", "SLEM-05-255060")
    fix(root, "sle-micro", *ids, name="slmicro5")
    pam = root / "etc/pam.d/common-password"
    assert not pam.is_symlink()  # pam-config can no longer rewrite it
    assert pam.read_text().splitlines() == [
        "password\trequisite\tpam_cracklib.so\tucredit=-1",
        "password\toptional\tpam_gnome_keyring.so",
        "password\trequisite\tpam_pwhistory.so\tremember=5 use_authtok",
        "password\trequired\tpam_unix.so\tuse_authtok shadow try_first_pass",
    ]
    assert not (root / "etc/issue").is_symlink() and (root / "run/issue").read_text() == "Welcome\n"
    assert (root / "etc/issue").read_text() == DOD_BANNER + "\n"
    sudoers = (root / "etc/sudoers").read_text().splitlines()
    assert sudoers[0].startswith("# Defaults targetpw") and sudoers[1].startswith("# ALL   ALL=(ALL) ALL")
    assert (root / "etc/sudoers.d/hardening_defaults").read_text() == (
        "Defaults !targetpw\nDefaults !rootpw\nDefaults !runaspw\n")
    assert (root / "etc/sudoers.d/hardening_defaults").stat().st_mode & 0o777 == 0o440
    assert (root / "etc/audit/rules.d/audit.rules").read_text() == "-D\n"
    # SUSE's vendor sshd_config is copied to /etc, then the drop-in is included first
    assert (root / "etc/ssh/sshd_config").read_text().startswith("Include /etc/ssh/sshd_config.d/*.conf\n")
    assert (root / "usr/etc/ssh/sshd_config").read_text() == SLEM["usr/etc/ssh/sshd_config"]
    for i in ids:
        assert status(root, "sle-micro", i, name="slmicro5")[0] == "pass", i


# --- Ubuntu 24.04 (noble) ------------------------------------------------------------------------


def n24(root: Path, stig_id: str, **kw: Any) -> tuple[str, str]:
    return status(root, "ubuntu", stig_id, name="ubuntu2404", **kw)


def host24(stig_id: str, host: FakeHost) -> Any:
    return check_host(host, "ubuntu", controls("ubuntu2404", stig_id))[stig_id]


def test_noble_ssh_service_next_to_the_socket(tmp_path: Path) -> None:
    root = noble_root(tmp_path)
    st, ev = n24(root, "UBTU-24-100810")  # socket-activated as Ubuntu ships it: ssh.service disabled
    assert st == "fail" and "no enablement symlinks" in ev
    before = {p: os.readlink(root / p) for p in NOBLE_LINKS if p.startswith("etc/")}
    fix(root, "ubuntu", "UBTU-24-100810", name="ubuntu2404")
    units = root / "etc/systemd/system"
    assert os.readlink(units / "multi-user.target.wants/ssh.service") == "/usr/lib/systemd/system/ssh.service"
    assert os.readlink(units / "sshd.service") == "/usr/lib/systemd/system/ssh.service"
    assert {p: os.readlink(root / p) for p in before} == before  # ssh.socket keeps its listener
    assert n24(root, "UBTU-24-100810")[0] == "pass"  # service_active is checked on the host only
    up = {"systemctl is-enabled ssh.service": "enabled\n", "systemctl is-active ssh.service": "active\n"}
    assert host24("UBTU-24-100810", FakeHost(commands=up)).status == "pass"
    lazy = {"systemctl is-enabled ssh.service": "disabled\n", "systemctl is-active ssh.service": "active\n"}
    r = host24("UBTU-24-100810", FakeHost(commands=lazy))
    assert r.status == "fail" and "is-enabled ssh.service: disabled" in r.evidence


def test_noble_sshd_and_client_algorithms(tmp_path: Path) -> None:
    root = noble_root(tmp_path)
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
    (root / "etc/ssh/sshd_config.d/10-legacy.conf").write_text("Ciphers aes128-cbc\n")
    st, ev = n24(root, "UBTU-24-100820")
    assert st == "fail" and "10-legacy.conf:1: Ciphers aes128-cbc" in ev
    assert n24(root, "UBTU-24-100850") == ("fail", "Ciphers not set in /etc/ssh/ssh_config, "
                                                   "/etc/ssh/ssh_config.d/*.conf")
    ids = ("UBTU-24-100820", "UBTU-24-100830", "UBTU-24-100840", "UBTU-24-100850", "UBTU-24-100860")
    fix(root, "ubuntu", *ids, name="ubuntu2404")
    ciphers = "aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes128-ctr"
    assert (root / "etc/ssh/sshd_config.d/50-imagefactory-stig.conf").read_text().splitlines()[0] == (
        f"Ciphers {ciphers}")
    assert (root / "etc/ssh/sshd_config.d/10-legacy.conf").read_text().startswith("# Ciphers aes128-cbc")
    client = (root / "etc/ssh/ssh_config").read_text().splitlines()
    assert client[4] == f"Ciphers {ciphers}" and client[:3] == ["Include /etc/ssh/ssh_config.d/*.conf", "",
                                                               "Host *"]  # under Host *, after the Include
    for i in ids:
        assert n24(root, i)[0] == "pass", i
    # the client reads ssh_config.d first: a conflicting drop-in fails the check
    (root / "etc/ssh/ssh_config.d").mkdir()
    (root / "etc/ssh/ssh_config.d/20-x.conf").write_text("Ciphers aes128-cbc\n")
    st, ev = n24(root, "UBTU-24-100850")
    assert st == "fail" and "20-x.conf:1" in ev
    c = controls("ubuntu2404", "UBTU-24-100840")[0].checks_for("ubuntu")[0]
    kex = "ecdh-sha2-nistp521,ecdh-sha2-nistp384,ecdh-sha2-nistp256,diffie-hellman-group-exchange-sha256," \
          "diffie-hellman-group16-sha512,diffie-hellman-group14-sha256"
    assert host_check(c, FakeHost(commands={"sshd -T": f"kexalgorithms {kex}\n"})).status == "pass"
    assert host_check(c, FakeHost(commands={"sshd -T": "kexalgorithms curve25519-sha256\n"})).status == "fail"


def test_noble_sysctl(tmp_path: Path) -> None:
    root = noble_root(tmp_path)
    assert n24(root, "UBTU-24-600140") == (
        "fail", "/etc/sysctl.d/10-kernel-hardening.conf:1: kernel.dmesg_restrict = 0")
    fix(root, "ubuntu", "UBTU-24-600140", name="ubuntu2404")
    assert (root / "etc/sysctl.d/10-kernel-hardening.conf").read_text() == "# kernel.dmesg_restrict = 0\n"
    assert n24(root, "UBTU-24-600140")[0] == "pass"
    c = controls("ubuntu2404", "UBTU-24-600140")[0].checks_for("ubuntu")[0]
    assert host_check(c, FakeHost(sysctls={"kernel.dmesg_restrict": 0})).status == "fail"


def test_noble_pam_faillock_and_nullok(tmp_path: Path) -> None:
    root = noble_root(tmp_path)
    assert n24(root, "UBTU-24-200610")[0] == "fail"
    assert n24(root, "UBTU-24-300028")[0] == "fail"  # nullok in the profile-generated common-auth
    fix(root, "ubuntu", "UBTU-24-200610", "UBTU-24-300028", "UBTU-24-300017", "UBTU-24-400220",
        name="ubuntu2404")
    assert (root / "etc/pam.d/common-auth").read_text().splitlines() == [
        "auth\trequired\tpam_faildelay.so\tdelay=4000000",
        "auth\t[success=1 default=ignore]\tpam_unix.so",
        "auth\t[default=die]\tpam_faillock.so authfail",  # skipped by success=1 on a good password
        "auth\tsufficient\tpam_faillock.so authsucc",
        "auth\trequisite\t\t\tpam_deny.so",
        "auth\trequired\t\t\tpam_permit.so",
    ]
    assert (root / "etc/pam.d/common-password").read_text().splitlines()[0] == (
        "password\t[success=1 default=ignore]\tpam_unix.so\tobscure sha512 shadow rounds=100000")
    # noble's faillock.conf has every key commented out: values replace their comment, flags are appended
    assert (root / "etc/security/faillock.conf").read_text() == (
        "# audit\n# silent\ndeny = 3\nfail_interval = 900\nunlock_time = 0\naudit\nsilent\n")
    for i in ("UBTU-24-200610", "UBTU-24-300028", "UBTU-24-300017", "UBTU-24-400220"):
        assert n24(root, i)[0] == "pass", i
    (root / "etc/security/faillock.conf").write_text("audit\nsilent\ndeny = 3\nfail_interval = 900\n"
                                                     "unlock_time = 600\n")
    st, ev = n24(root, "UBTU-24-200610")
    assert st == "fail" and "unlock_time = 600" in ev


def test_noble_audit_rules_and_immutable_config(tmp_path: Path) -> None:
    root = noble_root(tmp_path)
    su = "-a always,exit -F path=/bin/su -F perm=x -F auid>=1000 -F auid!=-1 -k privileged-priv_change"
    assert n24(root, "UBTU-24-900070") == ("fail", f"missing in /etc/audit/rules.d: {su}")
    assert n24(root, "UBTU-24-909000")[0] == "fail"
    fix(root, "ubuntu", "UBTU-24-900070", "UBTU-24-909000", "UBTU-24-900040", name="ubuntu2404")
    rules = root / "etc/audit/rules.d"
    assert (rules / "stig.rules").read_text() == su + "\n"
    assert (rules / "99-imagefactory-stig-immutable.rules").read_text() == "-e 2\n"
    assert {p.stat().st_mode & 0o777 for p in rules.iterdir()} == {0o640}
    for i in ("UBTU-24-900070", "UBTU-24-909000", "UBTU-24-900040"):
        assert n24(root, i)[0] == "pass", i
    other = make_root(tmp_path / "other", {"etc/audit/rules.d/site.rules":
                                           "-a always,exit -F path=/bin/su -F perm=x -F auid>=1000 "
                                           "-F auid!=unset -k su\n-e 1\n"})
    assert n24(other, "UBTU-24-900070")[0] == "pass"
    assert n24(other, "UBTU-24-909000")[0] == "fail"
    loaded = "-a always,exit -S all -F path=/bin/su -F perm=x -F auid>=1000 -F auid!=-1 -F key=x\n"
    assert host24("UBTU-24-900070", FakeHost(commands={"auditctl -l": loaded})).status == "pass"
    assert host24("UBTU-24-900070", FakeHost(commands={"auditctl -l": "No rules\n"})).status == "fail"
    f = {"/etc/audit/rules.d/99-imagefactory-stig-immutable.rules": "-e 2\n"}
    lock = FakeHost(files=f, commands={"auditctl -s": "enabled 2\nfailure 1\n"})
    assert host24("UBTU-24-909000", lock).status == "pass"
    r = host24("UBTU-24-909000", FakeHost(files=f, commands={"auditctl -s": "enabled 1\nfailure 1\n"}))
    assert r.status == "fail" and "enabled 1" in r.evidence  # the file is there, the rules not locked


def test_noble_packages_and_usb_storage(tmp_path: Path) -> None:
    root = noble_root(tmp_path)
    assert n24(root, "UBTU-24-100030") == ("fail", "telnetd is installed")
    res = fix(root, "ubuntu", "UBTU-24-100030", "UBTU-24-100010", "UBTU-24-100200", name="ubuntu2404",
              tailoring=Tailoring(disable={"UBTU-24-100200": "no rsyslog in this test"}))
    assert (res.packages_to_remove, res.packages_to_install) == (["telnetd", "systemd-timesyncd"], [])
    assert n24(root, "UBTU-24-100030", packages=["openssh-server"])[0] == "pass"
    c = controls("ubuntu2404", "UBTU-24-100030")[0].checks_for("ubuntu")[0]
    assert host_check(c, FakeHost(packages=["telnetd"])).status == "fail"
    # usb-storage: 24.04 wants `install usb-storage /bin/true`; a /bin/false line does not pass
    make_root(root, {"etc/modprobe.d/usb.conf": "install usb-storage /bin/false\nblacklist usb-storage\n"})
    st, ev = n24(root, "UBTU-24-300039")
    assert st == "fail" and "bin/true" in ev
    fix(root, "ubuntu", "UBTU-24-300039", name="ubuntu2404")
    assert (root / "etc/modprobe.d/imagefactory-stig.conf").read_text() == (
        "install usb-storage /bin/true\nblacklist usb-storage\n")
    assert n24(root, "UBTU-24-300039")[0] == "pass"


def test_noble_phases_and_texts(tmp_path: Path) -> None:
    root = noble_root(tmp_path)
    ids = ("UBTU-24-300021", "UBTU-24-200680", "UBTU-24-700120", "UBTU-24-102000", "UBTU-24-200640")
    (root / "etc/sudoers.d").mkdir()
    (root / "etc/sudoers.d/90-cloud-init-users").write_text("ubuntu ALL=(ALL) NOPASSWD:ALL\n")
    res = apply_fixes(root, "ubuntu", controls("ubuntu2404", *ids))
    assert res.applied == ["UBTU-24-200640"]
    assert res.skipped["UBTU-24-300021"].startswith("waive-by-default: ")
    assert "NOPASSWD" in (root / "etc/sudoers.d/90-cloud-init-users").read_text()
    assert not (root / "etc/profile.d/ssh_confirm.sh").exists()
    enable = Tailoring(enable=("UBTU-24-300021", "UBTU-24-200680"))
    res = apply_fixes(root, "ubuntu", controls("ubuntu2404", *ids), enable)
    assert res.applied == ["UBTU-24-300021", "UBTU-24-200680", "UBTU-24-200640"]
    assert (root / "etc/sudoers.d/90-cloud-init-users").read_text() == "# ubuntu ALL=(ALL) NOPASSWD:ALL\n"
    # the SSH banner acknowledgement script is the XCCDF's, with the banner of UBTU-24-200640
    fixtext = load_benchmark("ubuntu2404").rules["UBTU-24-200680"].fixtext
    want = fixtext[fixtext.index("#!/bin/bash"):fixtext.index("fi", fixtext.index("done")) + 2]
    assert " ".join((root / "etc/profile.d/ssh_confirm.sh").read_text().split()) == " ".join(want.split())
    for i in ("UBTU-24-300021", "UBTU-24-200680", "UBTU-24-200640"):
        assert n24(root, i)[0] == "pass", i
    # /var/log: not applicable while rsyslog runs (it keeps the directory group-writable)
    assert "UBTU-24-700120" not in check_root(root, "ubuntu", controls("ubuntu2404", "UBTU-24-700120"))
    cmd = "systemctl is-active rsyslog.service; stat -c 'mode %a' /var/log"
    for out, want_status in (("active\nmode 775\n", "pass"), ("inactive\nmode 755\n", "pass"),
                             ("inactive\nmode 775\n", "fail"), ("inactive\nmode 757\n", "fail")):
        assert host24("UBTU-24-700120", FakeHost(commands={cmd: out})).status == want_status, out
    assert n24(root, "UBTU-24-700400") == ("pass", '/etc/os-release:3: VERSION_ID="24.04"')


# --- tailoring, placeholders, phases ------------------------------------------------------------


def test_dod_banner_is_the_xccdf_text() -> None:
    fixtext = load_benchmark("ubuntu2204").rules["UBTU-22-255020"].fixtext
    start = fixtext.index("You are accessing")
    end = fixtext.index("See User Agreement for details.") + len("See User Agreement for details.")
    assert fixtext[start:end] == DOD_BANNER


def test_banner_placeholder_and_tailoring_values(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    fix(root, "ubuntu", "UBTU-22-255020")
    assert (root / "etc/issue.net").read_text() == DOD_BANNER + "\n"
    assert status(root, "ubuntu", "UBTU-22-255020")[0] == "pass"
    (root / "etc/issue.net").write_text(" ".join(DOD_BANNER.split()))  # whitespace-insensitive
    assert status(root, "ubuntu", "UBTU-22-255020")[0] == "pass"
    (root / "etc/issue.net").write_text("Authorised use only.\n")
    assert status(root, "ubuntu", "UBTU-22-255020")[0] == "fail"
    site = Tailoring(values={"banner_text": "Authorised use only."})
    res = check_root(root, "ubuntu", controls("ubuntu2204", "UBTU-22-255020"), site)
    assert res["UBTU-22-255020"].status == "pass"
    other = ubuntu_root(tmp_path, "other")
    fix(other, "ubuntu", "UBTU-22-653030", tailoring=Tailoring(values={"audit_disk_full_action": "HALT"}))
    assert (other / "etc/audit/auditd.conf").read_text() == "disk_full_action = HALT\n"


def test_tailoring_disable_enable_and_phases(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    ids = ("UBTU-22-213010", "UBTU-22-432011", "UBTU-22-212010", "UBTU-22-211015")
    t = Tailoring(disable={"UBTU-22-211015": "kiosk needs ctrl-alt-del (POA&M 12)"})
    res = apply_fixes(root, "ubuntu", controls("ubuntu2204", *ids), t)
    assert res.applied == ["UBTU-22-213010"]
    assert res.skipped["UBTU-22-211015"] == "disabled by tailoring: kiosk needs ctrl-alt-del (POA&M 12)"
    assert res.skipped["UBTU-22-432011"].startswith("waive-by-default: ")
    assert res.skipped["UBTU-22-212010"].startswith("first-boot: ")
    assert "NOPASSWD" in (root / "etc/sudoers.d/90-cloud-init-users").read_text()
    res = apply_fixes(root, "ubuntu", controls("ubuntu2204", *ids), Tailoring(enable=("UBTU-22-432011",)))
    assert "UBTU-22-432011" in res.applied
    assert (root / "etc/sudoers.d/90-cloud-init-users").read_text() == "# ubuntu ALL=(ALL) NOPASSWD:ALL\n"
    assert apply_fixes(root, "sle-micro", controls("ubuntu2204", "UBTU-22-213010")).skipped == {
        "UBTU-22-213010": "not applicable to sle-micro"}
    offline = check_root(root, "ubuntu", controls("ubuntu2204", *ids))
    assert "UBTU-22-212010" not in offline  # first-boot settings arrive later
    with pytest.raises(pydantic.ValidationError, match="a reason is required"):
        Tailoring(disable={"UBTU-22-211015": " "})
    with pytest.raises(pydantic.ValidationError):
        Tailoring.model_validate({"disabled": {}})


def test_unknown_placeholder_is_a_user_error(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path)
    rule = AuditRule(type="audit_rule", rule="-w {{ audit_path }} -p wa -k x")
    with pytest.raises(UserError, match="unknown STIG placeholder"):
        host_check(rule, FakeHost())
    assert host_check(rule, FakeHost(commands={"auditctl -l": "-w /etc/x -p wa -k y\n"}),
                      {"audit_path": "/etc/x"}).status == "pass"
    assert root.exists()


def test_kernel_arg_check_reads_the_bootloader_config(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", {})
    assert status(root, "ubuntu", "UBTU-22-212015")[0] == "error"
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/grub").write_text(
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="audit=1"\n')
    assert status(root, "ubuntu", "UBTU-22-212015")[0] == "pass"
    (root / "boot/grub").mkdir(parents=True)
    (root / "boot/grub/grub.cfg").write_text("  linux /vmlinuz root=/dev/vda1 ro audit=1\n"
                                             "  linux /vmlinuz root=/dev/vda1 ro single\n")
    st, ev = status(root, "ubuntu", "UBTU-22-212015")
    assert st == "fail" and "grub.cfg:2" in ev
    c = controls("ubuntu2204", "UBTU-22-212015")[0].checks_for("ubuntu")[0]
    host = FakeHost(files={"/proc/cmdline": "BOOT_IMAGE=/vmlinuz audit=1 quiet\n"})
    assert host_check(c, host).status == "pass"


# --- safety -------------------------------------------------------------------------------------

HOST_PATHS = ("/etc/sysctl.d/99-imagefactory-stig.conf", "/etc/modprobe.d/imagefactory-stig.conf",
              "/etc/ssh/sshd_config.d/50-imagefactory-stig.conf", "/etc/audit/rules.d/stig.rules",
              "/etc/apt/apt.conf.d/99imagefactory-stig")


def test_nothing_is_written_outside_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sysctl.d").mkdir(parents=True)
    (outside / "issue.net").write_text("host banner\n")
    (outside / "shadow").write_text("root::1::::::\n")
    root = ubuntu_root(tmp_path)
    # absolute symlinks in the image point at paths that also exist on the build host
    (root / "etc/sysctl.d").symlink_to(outside / "sysctl.d")
    (root / "etc/issue.net").symlink_to(outside / "issue.net")
    (root / "var/run").symlink_to("/run")
    host_before = {p: os.path.exists(p) for p in HOST_PATHS}
    outside_before = snapshot(outside)
    res = apply_fixes(root, "ubuntu", load_catalogue("ubuntu2204").controls_for("ubuntu"))
    assert len(res.applied) > 100
    assert snapshot(outside) == outside_before
    assert {p: os.path.exists(p) for p in HOST_PATHS} == host_before
    # the writes landed where the image will see them
    inside = inroot(root, str(outside / "sysctl.d/99-imagefactory-stig.conf"))
    assert inside.is_relative_to(root) and "kernel.dmesg_restrict = 1" in inside.read_text()
    assert inroot(root, "/var/run/x") == root / "run/x"
    assert inroot(root, "/../../etc/passwd") == root / "etc/passwd"


def test_refuses_the_build_hosts_root() -> None:
    with pytest.raises(BuildError, match="refusing"):
        apply_fixes(Path("/"), "ubuntu", controls("ubuntu2204", "UBTU-22-213010"))


# --- parsers ------------------------------------------------------------------------------------


def test_audit_rules_compare_canonically() -> None:
    a = "-a always,exit -F arch=b64 -S chmod,fchmod,fchmodat -F auid>=1000 -F auid!=unset -k perm_chng"
    b = "-a exit,always -F arch=b64 -S fchmodat -S chmod,fchmod -F auid!=4294967295 -F auid>=1000 -F key=x"
    assert parsers.audit_canon(a) == parsers.audit_canon(b)
    watch = parsers.audit_canon("-w /etc/sudoers.d/ -p wa -k a")
    assert watch == parsers.audit_canon("-w /etc/sudoers.d -p aw")
    assert parsers.audit_canon(a) != parsers.audit_canon(a.replace("b64", "b32"))
    assert parsers.audit_canon("# comment") is None


def test_sysctl_files_in_etc_mask_vendor_files_of_the_same_name(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", {"usr/lib/sysctl.d/50-x.conf": "a.b = 1\n",
                                         "etc/sysctl.d/50-x.conf": "a/b=2\n",
                                         "usr/lib/sysctl.d/10-y.conf": "-a.b = 3\n"})
    assert [(p, k, v) for p, _, k, v in parsers.sysctl_assignments(RootSource(root))] == [
        ("/usr/lib/sysctl.d/10-y.conf", "a.b", "3"), ("/etc/sysctl.d/50-x.conf", "a.b", "2")]


def test_sshd_effective_config_follows_includes(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", {
        "etc/ssh/sshd_config": "Port 22\nInclude sshd_config.d/*.conf\nCiphers aes128-ctr\n"
                               "Match all\nMACs x\n",
        "etc/ssh/sshd_config.d/20-b.conf": "Ciphers aes256-ctr\nMatch User x\nUsePAM no\n",
        "etc/ssh/sshd_config.d/10-a.conf": "usepam yes\n"})
    eff = parsers.sshd_effective(RootSource(root))
    assert eff["ciphers"] == ("aes256-ctr", "/etc/ssh/sshd_config.d/20-b.conf:1")
    assert eff["usepam"][0] == "yes" and "macs" not in eff


def test_yaml_key_dotted_paths(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", {})
    fix(root, "server", "CNTR-R2-001130", name="rke2")
    data = yaml.safe_load((root / "etc/rancher/rke2/rke2-pss.yaml").read_text())
    assert data["plugins"][0]["configuration"]["defaults"]["enforce"] == "restricted"
    # RKE2's CIS default exempts Rancher's compliance operator (cis-operator before Rancher 2.12)
    assert data["plugins"][0]["configuration"]["exemptions"]["namespaces"] == [
        "kube-system", "compliance-operator-system", "cis-operator-system", "tigera-operator"]
    assert status(root, "server", "CNTR-R2-001130", name="rke2")[0] == "pass"
    pss = root / "etc/rancher/rke2/rke2-pss.yaml"
    pss.write_text(re.sub(r'enforce: "restricted"', 'enforce: "baseline"', pss.read_text()))
    st, ev = status(root, "server", "CNTR-R2-001130", name="rke2")
    assert st == "fail" and "defaults.enforce: 'baseline'" in ev


def test_shadow_kinds_lock_accounts(tmp_path: Path) -> None:
    from imagefactory.stig.kinds import CheckContext, FixContext
    from imagefactory.stig.kinds_fs import AccountLocked, NoEmptyPasswords
    from imagefactory.stig.sources import RootSource

    shadow = "root:$6$abc:19000::::::\nguest::19000::::::\nsvc:!:19000::::::\n"
    root = make_root(tmp_path, {"etc/shadow": shadow})
    locked = AccountLocked(type="account_locked", user="root")
    empty = NoEmptyPasswords(type="no_empty_passwords")
    ctx = CheckContext(family="ubuntu")
    assert locked.evaluate(RootSource(root), ctx).status == "fail"
    assert empty.evaluate(RootSource(root), ctx).status == "fail"
    for _ in range(2):  # idempotent
        locked.apply(FixContext(root))
        empty.apply(FixContext(root))
    expected = shadow.replace("root:$6", "root:!$6").replace("guest::", "guest:!:")
    assert (root / "etc/shadow").read_text() == expected
    assert locked.evaluate(RootSource(root), ctx).status == "pass"
    assert empty.evaluate(RootSource(root), ctx).status == "pass"


def test_host_source_reads_each_file_once() -> None:
    # Each command is an SSH round trip on the booted VM: repeated reads must come from the cache.
    from imagefactory.stig.sources import HostSource

    host = FakeHost(files={"/etc/login.defs": "UMASK 077\n"})
    src = HostSource(host)
    assert src.read("/etc/login.defs") == src.read("/etc/login.defs") == "UMASK 077\n"
    assert src.read("/etc/missing") is None and src.read("/etc/missing") is None
    assert host.ran == ["cat -- /etc/login.defs", "cat -- /etc/missing"]


class _ShellHost:
    """Runs host_check's commands with this machine's sh and find (for the walk's shell prelude)."""

    def run(self, cmd: str) -> _Result:
        p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)
        return _Result(p.returncode, p.stdout)


def test_walk_lists_a_merged_usr_tree_once_on_both_sides(tmp_path: Path) -> None:
    """/lib -> usr/lib: find -H follows the link, so /lib /usr/lib walked the same tree twice. Both
    sides keep the first name and list each file once; unrelated roots are all walked."""
    root = make_root(tmp_path / "r", {"usr/lib/x/libfoo.so.1": "", "usr/lib64/ld.so": "", "opt/a": ""},
                     {"lib": "usr/lib", "lib64": "usr/lib64"})
    roots = ["/lib", "/usr/lib", "/lib64", "/usr/lib64", "/opt", "/missing"]
    offline = sorted(s.path for s in RootSource(root).walk(roots, True, None))
    assert offline == ["/lib", "/lib/x", "/lib/x/libfoo.so.1", "/lib64", "/lib64/ld.so", "/opt", "/opt/a"]
    on_host = HostSource(_ShellHost()).walk([f"{root}{r}" for r in roots], True, None)
    assert sorted(s.path.removeprefix(str(root)) for s in on_host) == offline
    named = HostSource(_ShellHost()).walk([f"{root}{r}" for r in roots], True, "*.so*")
    assert sorted(s.path.removeprefix(str(root)) for s in named) == ["/lib/x/libfoo.so.1", "/lib64/ld.so"]
    assert sorted(s.path for s in RootSource(root).walk(roots, True, "*.so*")) == [
        "/lib/x/libfoo.so.1", "/lib64/ld.so"]
    # one root: a plain find, as before
    single = HostSource(_ShellHost()).walk([f"{root}/usr/lib"], True, None)
    assert len(single) == 3
