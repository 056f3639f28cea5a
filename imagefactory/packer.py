"""A typed wrapper of the `packer` CLI, through the project's single command runner.

Why our own: the PyPI `python-packer` 0.1.2 is Python-2 era and always passes `-parallel`, which
packer 1.6.6 rejects. This wrapper finds packer and checks its version (Debian's 1.6.6 and
current releases >= 1.9; features are guarded by version), runs `validate` and `build` with
`-machine-readable`, unescapes the stream (`%!(PACKER_COMMA)` and literal `\\n`), collects
artifacts, errors and provisioner output, feeds progress and the build log, gives packer a private
`TMPDIR` (it leaves `packer_to_cdrom*` dirs behind) that is removed afterwards, sets
`CHECKPOINT_DISABLE=1`, and on timeout or Ctrl-C sends SIGINT to packer's process group (packer
then stops its qemu and deletes its output) and SIGKILL after a grace period.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BuildError, CommandFailed, UserError
from .run import run

log = logging.getLogger(__name__)

MIN_VERSION = (1, 6, 6)
INSTALL_HINT = ("install packer >= 1.6.6: 'apt-get install packer' on Debian 12 (ci/bootstrap.sh does), "
                "or a release from releases.hashicorp.com on PATH")
# Features by the first version that has them (1.6.6 is what Debian 12 ships).
FEATURES = {
    "hcl2": (1, 6, 6),
    "init": (1, 7, 0),  # `packer init` and required_plugins; 1.6.6 has every builder compiled in
    "parallel_builds_flag": (1, 5, 2),  # -parallel-builds=N (the old -parallel is gone)
}


@dataclass(frozen=True)
class PackerVersion:
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def tuple(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def supports(self, feature: str) -> bool:
        return self.tuple() >= FEATURES[feature]


@dataclass(frozen=True)
class Packer:
    path: str
    version: PackerVersion


@dataclass(frozen=True)
class Event:
    """One `-machine-readable` line: `timestamp,target,type,data...` (data unescaped)."""

    timestamp: int
    target: str
    type: str
    data: tuple[str, ...]


@dataclass
class BuildOutcome:
    artifacts: list[str] = field(default_factory=list)  # files of the artifact(s)
    errors: list[str] = field(default_factory=list)
    ui: list[str] = field(default_factory=list)  # what a human would have seen (say/message/error)
    returncode: int = 0


def unescape(text: str) -> str:
    return text.replace("%!(PACKER_COMMA)", ",").replace("\\r", "").replace("\\n", "\n")


def parse_line(line: str) -> Event | None:
    parts = line.split(",")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    return Event(int(parts[0]), parts[1], parts[2], tuple(unescape(p) for p in parts[3:]))


def parse_version(text: str) -> PackerVersion | None:
    m = re.search(r"(?:Packer )?v?(\d+)\.(\d+)\.(\d+)", text)
    return PackerVersion(int(m[1]), int(m[2]), int(m[3])) if m else None


def find_packer(binary: str = "packer") -> Packer:
    path = shutil.which(binary)
    if path is None:
        raise UserError("packer not found on PATH", hint=INSTALL_HINT)
    out = run([path, "version"], quiet=True, env={"CHECKPOINT_DISABLE": "1"}).stdout
    version = parse_version(out)
    if version is None:
        raise UserError(f"cannot tell the version of {path} from {out.strip()[:100]!r}", hint=INSTALL_HINT)
    if version.tuple() < MIN_VERSION:
        raise UserError(f"packer {version} is too old (need >= {'.'.join(map(str, MIN_VERSION))})",
                        hint=INSTALL_HINT)
    return Packer(path, version)


def _env(tmpdir: Path) -> dict[str, str]:
    return {"CHECKPOINT_DISABLE": "1", "TMPDIR": str(tmpdir), "PACKER_NO_COLOR": "1",
            "PACKER_CACHE_DIR": str(tmpdir / "cache")}


def validate(packer: Packer, template_dir: Path, *, var_file: Path | None = None,
             syntax_only: bool = False) -> list[str]:
    """Problems `packer validate` finds (empty when valid)."""
    argv = [packer.path, "validate"]
    if syntax_only:
        argv.append("-syntax-only")
    if var_file is not None:
        argv.append(f"-var-file={var_file}")
    argv.append(str(template_dir))
    with tempfile.TemporaryDirectory(prefix="imagefactory-packer-") as tmp:
        r = run(argv, check=False, env=_env(Path(tmp)), cwd=template_dir)
    if r.returncode == 0:
        return []
    text = "\n".join(x for x in (r.stdout.strip(), r.stderr.strip()) if x)
    return [block.strip() for block in re.split(r"\n(?=Error: )", text) if block.strip()] or [text]


def build(packer: Packer, template_dir: Path, *, var_file: Path | None = None, timeout: float | None = None,
          on_event: Callable[[Event], None] | None = None) -> BuildOutcome:
    """`packer build` with machine-readable output; raises BuildError with packer's errors and the
    last lines of output when it fails. A private TMPDIR is removed afterwards."""
    outcome = BuildOutcome()
    # Short and in /tmp, not under the build's scratch: packer's plugins listen on unix sockets in
    # TMPDIR, and a socket path over 107 bytes fails with "bind: invalid argument".
    tmp = Path(tempfile.mkdtemp(prefix="ifpk-"))

    def handle(line: str) -> None:
        ev = parse_line(line)
        if ev is None:
            return
        if ev.type == "artifact" and len(ev.data) >= 4 and ev.data[1] == "file":
            outcome.artifacts.append(ev.data[3])
        elif ev.type == "error":
            outcome.errors.append(" ".join(ev.data))
        elif ev.type == "ui" and len(ev.data) >= 2:
            text = ev.data[1]
            outcome.ui.append(text)
            log.info("packer: %s", text.rstrip())
        if on_event is not None:
            on_event(ev)

    argv = [packer.path, "build", "-machine-readable", "-color=false", "-on-error=cleanup"]
    if var_file is not None:
        argv.append(f"-var-file={var_file}")
    argv.append(str(template_dir))
    try:
        r = run(argv, check=False, env=_env(tmp), cwd=template_dir, timeout=timeout, on_line=handle,
                quiet=True, own_group=True, grace=30)
    except CommandFailed as e:  # timeout
        raise BuildError(f"packer build {e}",
                         hint="raise tests.timeout or check the guest's console") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    outcome.returncode = r.returncode
    if r.returncode != 0:
        tail = "\n  ".join(line.rstrip() for line in outcome.ui[-15:])
        errors = "\n  ".join(outcome.errors) or (r.stderr.strip()[-2000:] or "no error text")
        raise BuildError(f"packer build failed (exit {r.returncode}):\n  {errors}\nlast output:\n  {tail}",
                         hint="the provisioner step named above failed; see the build log for all output")
    return outcome
