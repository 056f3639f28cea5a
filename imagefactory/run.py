"""The only place that runs external programs.

Every command is logged as `+ <shell-quoted argv>` before it runs, its output goes to the build
log line by line, a missing binary becomes a `CommandNotFound` naming the Debian package to
install, and a non-zero exit becomes a `CommandFailed` carrying the tail of stderr. Secrets are
never passed on argv: callers hand them over through `env` or `input`.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CommandFailed, CommandNotFound

log = logging.getLogger("imagefactory.run")

# Which Debian package provides a binary, for the "not found" hint.
PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "grub-mkimage": "grub-pc-bin",
    "qemu-img": "qemu-utils",
    "cloud-init": "cloud-init",
    "chroot": "coreutils",
    "mount": "mount",
    "umount": "mount",
    "virtlogd": "libvirt-daemon-system",
    "libvirtd": "libvirt-daemon-system",
    "oscap": "openscap-scanner",
    "packer": "packer",
    "losetup": "mount",
    "fstrim": "util-linux",
}


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def _pump(stream: object, sink: list[str], echo: bool, on_line: Callable[[str], None] | None = None) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        line = raw.decode("utf-8", "replace").rstrip("\n")
        sink.append(line)
        if echo:
            log.debug("  %s", redact(line))
        if on_line is not None:
            on_line(line)


# What a child may see of our environment: the basics every tool expects, locale, proxies and CA
# settings, packer's and libvirt's own knobs, our non-secret settings. Anything else - cloud and
# S3 keys, the manifest signing key, CI tokens - never reaches mmdebstrap, packer, a maintainer
# script in a chroot or any other child; a caller hands a child what it needs through `env`.
ALLOWED_ENV = re.compile(
    r"PATH|HOME|USER|LOGNAME|SHELL|TERM|TZ|TMPDIR|LANG|LANGUAGE|LC_\w+"
    r"|(?i:https?_proxy|no_proxy|ftp_proxy|all_proxy)|SSL_CERT_(?:FILE|DIR)|REQUESTS_CA_BUNDLE"
    r"|PACKER_\w+|CHECKPOINT_DISABLE|LIBVIRT_\w+|VIRTUAL_ENV|PYTHONPATH|PYTHONDONTWRITEBYTECODE"
    r"|SOURCE_DATE_EPOCH"
    r"|IMAGEFACTORY_\w+")
# ...and never a name that says it is a secret, even when the pattern above would let it through
SECRET_ENV = re.compile(r"(?i)SECRET|TOKEN|PASSW|PRIVATE|CREDENTIAL|SIGNING_KEY|ACCESS_KEY|API_KEY")


USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@")


def redact(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://***@host`: recipes refuse such URLs, but a
    command line or a message built from configuration never shows one in a log."""
    return USERINFO.sub(r"\1***@", text)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if ALLOWED_ENV.fullmatch(k) and not SECRET_ENV.search(k)}


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    quiet: bool = False,
    on_line: Callable[[str], None] | None = None,
    own_group: bool = False,
    grace: float = 10.0,
) -> Result:
    """Run `argv`, log it and its output, and return its captured output.

    `env` is *added* to the allow-listed part of the current environment (`child_environment`).
    Output goes to the build log (DEBUG): the console shows the command lines, and a failure
    carries the tail of stderr. `quiet` keeps stdout out of the log (for commands whose output
    is data, e.g. `qemu-img info`).
    `on_line` sees each stdout line as it arrives (progress parsing). `own_group` starts the
    command in its own process group, so that on Ctrl-C or timeout SIGINT reaches it and all its
    children (packer and its qemu), followed by SIGKILL to the group after `grace` seconds.
    """
    args = [os.fspath(a) for a in argv]
    log.info("+ %s", redact(shlex.join(args)))
    full_env = child_environment(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd,
            start_new_session=own_group,
        )
    except FileNotFoundError:
        pkg = PACKAGES.get(Path(args[0]).name)
        hint = f"install the Debian package '{pkg}' (ci/bootstrap.sh does)" if pkg else None
        raise CommandNotFound(f"{args[0]} not found", hint=hint) from None
    out: list[str] = []
    err: list[str] = []
    threads = [
        threading.Thread(target=_pump, args=(proc.stdout, out, not quiet, on_line), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, True), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        if input is not None:
            assert proc.stdin is not None
            proc.stdin.write(input.encode() if isinstance(input, str) else input)
            proc.stdin.close()
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, grace, own_group)
        raise CommandFailed(args, -1, f"timed out after {timeout:.0f} s") from None
    except BaseException:
        # Ctrl-C or timeout: the child shares our process group and got SIGINT too (or, in its
        # own group, gets it now); give it a moment to clean up, then make sure it is gone
        # before the caller's cleanup runs.
        _stop(proc, grace, own_group)
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
    result = Result(args, returncode, "\n".join(out) + ("\n" if out else ""), "\n".join(err))
    if check and returncode != 0:
        raise CommandFailed(args, returncode, result.stderr or result.stdout)
    return result


def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0, group: bool = False) -> None:
    def signal_all(sig: int) -> None:
        try:
            if group:
                os.killpg(proc.pid, sig)  # the child leads its own group: reach its children too
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass

    if proc.poll() is not None and not group:
        return
    signal_all(signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        signal_all(signal.SIGKILL)
        proc.wait()
    if group:
        # packer may exit before the qemu it started: nothing of the group may outlive us
        time.sleep(0.2)
        signal_all(signal.SIGKILL)


def spawn_daemon(argv: Sequence[str | os.PathLike[str]], log_file: Path, ready: Path,
                 timeout: float = 10.0) -> int:
    """Start `argv` detached (own session, stdin from /dev/null, output to `log_file`) for a helper
    that must outlive this command (the libvirt cluster's switch); wait until it has written its
    pid to `ready` and return the pid."""
    args = [os.fspath(a) for a in argv]
    log.info("+ %s &", redact(shlex.join(args)))
    ready.unlink(missing_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise CommandFailed(args, proc.returncode, log_file.read_text(errors="replace")[-2000:])
        if time.monotonic() > deadline:
            _stop(proc, 2.0, True)
            raise CommandFailed(args, -1, f"not ready after {timeout:.0f} s")
        time.sleep(0.05)
    return proc.pid
