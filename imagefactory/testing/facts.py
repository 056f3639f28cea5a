"""What the boot-test suites read from a booted clone, gathered in a few round trips.

Under TCG every remote command costs an SSH exec channel and a `sudo` on an emulated CPU
(about a second on a hardened guest), and the suites ask hundreds of questions. So they ask
them in batches: a `FactStore` per clone sends a list of *items* - shell commands, file
metadata, file contents, glob matches - to a small Python script (`GUEST_SCRIPT`, run once
with sudo by the guest's own `python3`, which cloud-init needs anyway) that answers all of
them as JSON, and the checks are then evaluated on the build host from the answers.

- The hygiene/recipe/rke2 suites declare what they read (`wanted(target, clone)` in each
  suite module); conftest prefetches that for every clone at once, in one round trip each.
- The STIG checks find out what they read as they go (a file names the next file): they are
  evaluated in rounds (`evaluate_in_rounds`) with the store *collecting*: a missing fact raises
  `Pending` and is recorded, every missing fact of a round is fetched in one round trip, and
  the checks that missed something are evaluated again until nothing is missing. They see the
  clone through `CachedHost`, a testinfra host answering from the store (file contents, globs,
  packages and sysctl values without a process in the guest; other commands in the batch).
- Anything asked outside a prefetch is fetched on demand (one round trip each) and recorded
  in `on_demand`, so a check that forgot to declare a fact is slower, never wrong.
A check that needs a live probe (no egress, an SSH handshake) still runs live.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import testinfra.backend
import testinfra.host

from ..stig.sources import Pending

K = TypeVar("K")
R = TypeVar("R")
Item = tuple[str, str]  # (kind, key): ("cmd", "hostname"), ("file", path), ("read", path), ("glob", pattern)
KINDS = ("cmd", "file", "read", "glob")
CMD_TIMEOUT = 600  # seconds, per command inside the guest
MAX_PAYLOAD = 48 * 1024  # bytes of encoded request per round trip (one argv string is capped at 128 KiB)
MAX_ROUNDS = 12

# Runs in the guest with the guest's python3 (3.6 or later: SLE Micro 5 ships 3.6), under sudo.
# Reads the request from argv[1] (base64 of zlib of JSON), answers on stdout (JSON, bytes as
# base64). Commands run through /bin/sh like testinfra's, with stdin closed, a few at a time.
GUEST_SCRIPT = r'''
import base64, glob, grp, json, os, pwd, stat, subprocess, sys, time, zlib
from concurrent.futures import ThreadPoolExecutor


def b64(data):
    return base64.b64encode(data).decode("ascii")


def name(lookup, i):
    try:
        return lookup(i)[0]
    except KeyError:
        return str(i)


def fileinfo(path):
    try:
        s = os.lstat(path)
    except OSError as e:
        return {"lexists": False, "exists": False, "error": e.strerror or str(e)}
    m = s.st_mode
    kind = ("link" if stat.S_ISLNK(m) else "dir" if stat.S_ISDIR(m)
            else "file" if stat.S_ISREG(m) else "other")
    info = {"lexists": True, "kind": kind, "mode": stat.S_IMODE(m), "uid": s.st_uid, "gid": s.st_gid,
            "user": name(pwd.getpwuid, s.st_uid), "group": name(grp.getgrgid, s.st_gid),
            "size": s.st_size, "mtime": s.st_mtime, "exists": os.path.exists(path),
            "isfile": os.path.isfile(path), "isdir": os.path.isdir(path)}
    if kind == "link":
        try:
            info["target"] = os.readlink(path)
        except OSError:
            pass
    return info


def read(path):
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return {"error": "not a regular file"}
        with open(path, "rb") as f:
            return {"data": b64(f.read())}
    except OSError as e:
        return {"error": e.strerror or str(e)}


def run(cmd, timeout):
    start = time.time()
    try:
        p = subprocess.run(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
        a = {"rc": p.returncode, "out": b64(p.stdout), "err": b64(p.stderr)}
    except subprocess.TimeoutExpired as e:
        a = {"rc": 124, "out": b64(e.stdout or b""), "err": b64(b"timed out after %d s" % timeout)}
    a["t"] = round(time.time() - start, 3)
    return a


def matches(pattern):
    found = sorted(glob.glob(pattern))
    return {"paths": found, "files": dict((p, fileinfo(p)) for p in found)}


req = json.loads(zlib.decompress(base64.b64decode(sys.argv[1])).decode("utf-8"))
items = req["items"]
answers = [None] * len(items)
# "first": commands that wait for the boot to settle, run in order before anything is looked at
order = req.get("first", [])
first = sorted((i for i, (kind, key) in enumerate(items) if kind == "cmd" and key in order),
               key=lambda i: order.index(items[i][1]))
for i in first:
    answers[i] = run(items[i][1], req.get("timeout", 600))
cmds = [i for i, (kind, _) in enumerate(items) if kind == "cmd" and i not in first]
with ThreadPoolExecutor(max_workers=req.get("workers", 4)) as pool:
    futures = dict((i, pool.submit(run, items[i][1], req.get("timeout", 600))) for i in cmds)
    for i, (kind, key) in enumerate(items):
        if kind == "file":
            answers[i] = fileinfo(key)
        elif kind == "read":
            answers[i] = read(key)
        elif kind == "glob":
            answers[i] = matches(key)
    for i, f in futures.items():
        answers[i] = f.result()
sys.stdout.write(json.dumps({"v": 1, "answers": answers}))
'''

# The command line that runs it: small enough to leave room for the request in one argv string.
_BOOT = ("import base64,zlib;exec(zlib.decompress(base64.b64decode('"
         + base64.b64encode(zlib.compress(GUEST_SCRIPT.encode(), 9)).decode() + "')))")


class FactsError(Exception):
    """The guest could not answer (no python3, a broken reply): the facts say nothing."""


# --- items ----------------------------------------------------------------------------------


def cmd(command: str) -> Item:
    """The rc/stdout/stderr of a shell command (run as root, like testinfra with sudo)."""
    return ("cmd", command)


def stat(path: str) -> Item:
    """lstat of `path` (mode, owner, size, mtime, link target) and whether it exists when followed."""
    return ("file", path)


def read(path: str) -> Item:
    """The bytes of a regular file (following symlinks); None when missing or unreadable."""
    return ("read", path)


def glob(pattern: str) -> Item:
    """The paths matching a shell pattern (dot files only when the pattern says so), each stat'ed."""
    return ("glob", pattern)


def is_active(unit: str) -> Item:
    return cmd(f"systemctl is-active {unit}")


def is_enabled(unit: str) -> Item:
    return cmd(f"systemctl is-enabled {unit}")


def sysctl(key: str) -> Item:
    return cmd(f"sysctl -n {key}")


# Commands that wait until the boot has settled (no job left; cloud-init's last stage is one of
# them): a batch runs them first, in this order, before it looks at anything else - as the
# suites did when this was one of their first tests. (Clones count as ready only once cloud-init
# has finished: libvirt.wait_for_ssh.)
SETTLE = ("systemctl is-system-running --wait",)

# Every installed package with its dpkg status (Debian/Ubuntu) or rpm (SUSE) in one list.
PACKAGES = cmd("if command -v dpkg-query >/dev/null 2>&1; then dpkg-query -W -f '${Package}\\t${Status}\\n'; "
               "else rpm -qa --qf '%{NAME}\\tinstall ok installed\\n'; fi")


# --- answers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CmdFact:
    rc: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    seconds: float = field(default=0.0, compare=False)  # how long it ran in the guest

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class FileFact:
    """lstat of a path, plus `exists`/`is_file`/`is_directory` following symlinks (as `test -e/-f/-d`)."""

    path: str
    lexists: bool = False
    exists: bool = False
    kind: str | None = None  # "file" | "dir" | "link" | "other"; None when missing
    mode: int = 0
    uid: int = -1
    gid: int = -1
    user: str = ""
    group: str = ""
    size: int = 0
    mtime: float = 0.0
    is_file: bool = False
    is_directory: bool = False
    link_target: str | None = None

    @property
    def is_symlink(self) -> bool:
        return self.kind == "link"


def _b64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def _file(path: str, a: dict[str, Any]) -> FileFact:
    if not a.get("lexists"):
        return FileFact(path)
    return FileFact(path, True, bool(a["exists"]), str(a["kind"]), int(a["mode"]), int(a["uid"]),
                    int(a["gid"]), str(a["user"]), str(a["group"]), int(a["size"]), float(a["mtime"]),
                    bool(a["isfile"]), bool(a["isdir"]), a.get("target"))


def encode_request(items: list[Item], *, timeout: int = CMD_TIMEOUT, workers: int = 4) -> str:
    """The guest script's argument for `items`. `SETTLE` commands among them run first, in order."""
    first = [key for kind, key in items if kind == "cmd" and key in SETTLE]
    body = json.dumps({"items": [list(i) for i in items], "timeout": timeout, "workers": workers,
                       "first": sorted(first, key=SETTLE.index)})
    return base64.b64encode(zlib.compress(body.encode(), 9)).decode("ascii")


def command_line(items: list[Item], *, timeout: int = CMD_TIMEOUT) -> str:
    """The shell command that answers `items` in the guest (prefix it with sudo as needed)."""
    return f"python3 -c {shlex.quote(_BOOT)} {encode_request(items, timeout=timeout)}"


def parse_reply(items: list[Item], rc: int, stdout: str, stderr: str) -> dict[Item, Any]:
    """The guest script's answers, item by item: CmdFact, FileFact, bytes | None, list[str].
    Glob answers also yield a `stat` fact for every match. Raises FactsError on anything else."""
    if rc != 0:
        why = " (python3 missing in the guest?)" if rc == 127 else ""
        raise FactsError(f"fact gathering exited {rc}{why}: {stderr.strip()[-500:]}")
    try:
        reply = json.loads(stdout)
        answers = reply["answers"]
        if reply.get("v") != 1 or not isinstance(answers, list) or len(answers) != len(items):
            raise ValueError(f"expected {len(items)} answers of version 1")
        out: dict[Item, Any] = {}
        for item, a in zip(items, answers, strict=True):
            kind, key = item
            if kind == "cmd":
                out[item] = CmdFact(int(a["rc"]), _b64(a["out"]), _b64(a["err"]), float(a.get("t", 0.0)))
            elif kind == "file":
                out[item] = _file(key, a)
            elif kind == "read":
                out[item] = _b64(a["data"]) if "data" in a else None
            elif kind == "glob":
                out[item] = [str(p) for p in a["paths"]]
                out.update({stat(p): _file(p, f) for p, f in a["files"].items()})
            else:
                raise ValueError(f"unknown item kind {kind!r}")
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # json errors are ValueErrors
        raise FactsError(f"unreadable reply from the fact-gathering script: {e}: {stdout[:200]!r}") from e


def batches(items: list[Item], limit: int = MAX_PAYLOAD) -> list[list[Item]]:
    """`items` split so that each batch's encoded request stays under `limit` bytes."""
    if len(items) <= 1 or len(encode_request(items)) <= limit:
        return [items] if items else []
    half = len(items) // 2
    return batches(items[:half], limit) + batches(items[half:], limit)


def remote_fetch(host: Any) -> Callable[[list[Item]], dict[Item, Any]]:
    """A fetch function answering items through a testinfra host (sudo=True: root in the guest)."""
    def fetch(items: list[Item]) -> dict[Item, Any]:
        r = host.run(command_line(items))
        return parse_reply(items, int(r.rc), str(r.stdout), str(r.stderr))
    return fetch


# --- the store ------------------------------------------------------------------------------


class FactStore:
    """The facts of one clone, fetched in batches and kept for the whole session.

    `fetch(items)` answers a batch in one round trip (`remote_fetch`, or a fake in unit tests).
    While `collecting`, a missing fact raises `Pending` (and is remembered in `pending`);
    otherwise it is fetched on demand. `host` is the live testinfra host, for live probes."""

    def __init__(self, name: str, fetch: Callable[[list[Item]], dict[Item, Any]], host: Any = None) -> None:
        self.name = name
        self.host = host
        self._fetch = fetch
        self.facts: dict[Item, Any] = {}
        self.collecting = False
        self.pending: set[Item] = set()
        self.misses = 0  # facts asked for while collecting and not there
        self.on_demand: list[Item] = []
        self.round_trips = 0
        self.fetches: list[tuple[int, float]] = []  # (items, seconds) per round trip
        self._lock = threading.Lock()

    def _get(self, items: Iterable[Item]) -> None:
        todo = [i for i in dict.fromkeys(items) if i not in self.facts]
        for batch in batches(todo):
            start = time.monotonic()
            got = self._fetch(batch)
            with self._lock:
                self.round_trips += 1
                self.fetches.append((len(batch), time.monotonic() - start))
                self.facts.update(got)

    def prefetch(self, items: Iterable[Item]) -> None:
        """Fetch every item not known yet, in as few round trips as the payload limit allows."""
        self._get(items)

    def fetch_pending(self) -> None:
        todo, self.pending = sorted(self.pending), set()
        self._get(todo)

    def get(self, item: Item) -> Any:
        if item[0] not in KINDS:
            raise ValueError(f"unknown fact kind {item[0]!r}")
        if item not in self.facts:
            if self.collecting:
                self.pending.add(item)
                self.misses += 1
                raise Pending(f"{self.name}: {item[0]} {item[1]}")
            self.on_demand.append(item)
            self._get([item])
        return self.facts[item]

    # --- what the checks ask ---

    def cmd(self, command: str) -> CmdFact:
        fact: CmdFact = self.get(cmd(command))
        return fact

    def file(self, path: str) -> FileFact:
        fact: FileFact = self.get(stat(path))
        return fact

    def read(self, path: str) -> bytes | None:
        data: bytes | None = self.get(read(path))
        return data

    def text(self, path: str) -> str:
        """The content of a file as text; fails the check when it cannot be read (as testinfra's
        `file(path).content_string` does)."""
        data = self.read(path)
        if data is None:
            raise AssertionError(f"{self.name}: cannot read {path}")
        return data.decode("utf-8", errors="replace")

    def boot_time(self) -> int:
        """When the clone booted (`btime` of /proc/stat, epoch seconds): what "made this boot"
        compares against. A suite that calls it declares `read("/proc/stat")` in `wanted`."""
        for line in self.text("/proc/stat").splitlines():
            if line.startswith("btime "):
                return int(line.split()[1])
        raise AssertionError(f"{self.name}: no btime in /proc/stat")

    def glob(self, pattern: str) -> list[str]:
        found: list[str] = self.get(glob(pattern))
        return list(found)

    def is_active(self, unit: str) -> bool:
        """`systemctl is-active` says active (what testinfra's `service(unit).is_running` asks)."""
        return self.cmd(is_active(unit)[1]).rc == 0

    def is_enabled(self, unit: str) -> str:
        """`systemctl is-enabled` output: enabled, disabled, masked, static, alias, ..."""
        return self.cmd(is_enabled(unit)[1]).stdout.strip()

    def sysctl(self, key: str) -> str:
        r = self.cmd(sysctl(key)[1])
        assert r.rc == 0, f"sysctl -n {key}: rc={r.rc} {r.stderr.strip()}"
        return " ".join(r.stdout.split())

    def installed(self, package: str) -> bool:
        """Installed as testinfra's package module decides: dpkg status `install|hold ok installed`."""
        return package in installed_packages(self.cmd(PACKAGES[1]).stdout)

    def mount_fs(self, path: str) -> str | None:
        """The filesystem type mounted at `path`, from /proc/mounts (the first entry, as testinfra's
        `mount_point(path).filesystem`); None when nothing is mounted there."""
        for line in self.text("/proc/mounts").splitlines():
            f = line.split()
            if len(f) >= 3 and f[0] != "rootfs" and f[1] == path:
                return f[2]
        return None


def installed_packages(listing: str) -> set[str]:
    """Names from `PACKAGES` output whose status is `install|hold ok installed`."""
    out = set()
    for line in listing.splitlines():
        name, _, status = line.partition("\t")
        words = status.split()
        if name and words[:1] in (["install"], ["hold"]) and words[1:3] == ["ok", "installed"]:
            out.add(name)
    return out


@dataclass(frozen=True)
class _Package:
    is_installed: bool


class CachedHost(testinfra.host.Host):  # type: ignore[misc]
    """A testinfra host answering from a `FactStore`. Commands - and with them testinfra's own
    modules (service, file, ...) - are answered by running them in a batch; what needs no
    process in the guest is answered from gathered facts: file contents and globs (for the STIG
    host source), `package(name).is_installed` from one package listing (as testinfra decides
    it from dpkg's status), `sysctl(key)` from /proc/sys (what sysctl reads). Commands never go
    through its backend (a local one, for testinfra's quoting and results)."""

    def __init__(self, store: FactStore) -> None:
        super().__init__(testinfra.backend.get_backend("local://"))
        self.store = store

    def run(self, command: str, *args: str, **kwargs: Any) -> Any:
        line = self.backend.quote(command, *args)
        r = self.store.cmd(line)
        return self.backend.result(r.rc, self.backend.encode(line), r.stdout_bytes, r.stderr_bytes)

    def read_file(self, path: str) -> str | None:
        data = self.store.read(path)
        return None if data is None else data.decode("utf-8", errors="replace")

    def glob_paths(self, pattern: str) -> list[str]:
        return self.store.glob(pattern)

    def package(self, name: str) -> _Package:
        return _Package(self.store.installed(name))

    def sysctl(self, key: str) -> int | str:
        # sysctl(8)'s mapping: dots separate levels, a slash in a key stands for a dot (eth0/100)
        path = "/proc/sys/" + key.replace("/", "\0").replace(".", "/").replace("\0", ".")
        text = self.read_file(path)
        if text is None:
            raise AssertionError(f"sysctl {key}: cannot read {path}")
        value = text.rstrip("\r\n")
        try:
            return int(value)  # as testinfra's sysctl module answers
        except ValueError:
            return value


def first_round(store: FactStore, tasks: Mapping[K, Callable[[], Any]]) -> list[Item]:
    """What `tasks` ask the store for before anything else: the first round of
    `evaluate_in_rounds`, without fetching it (to prefetch it together with other facts)."""
    store.collecting = True
    try:
        for task in tasks.values():
            with contextlib.suppress(Pending):
                task()
    finally:
        store.collecting = False
    todo, store.pending = sorted(store.pending), set()
    return todo


def evaluate_in_rounds(store: FactStore, tasks: Mapping[K, Callable[[], R]],
                       max_rounds: int = MAX_ROUNDS) -> dict[K, R]:
    """Every task's result, evaluated from the store's facts in rounds: with the store collecting,
    each round runs the tasks that are not done yet, fetches in one round trip every fact they
    found missing, and keeps the results of the tasks that missed nothing (their facts will not
    change). After `max_rounds` the rest is evaluated fetching on demand. Results come back in
    the order of `tasks`."""
    done: dict[K, R] = {}
    todo = list(tasks)
    for _ in range(max_rounds):
        if not todo:
            break
        missed = []
        store.collecting = True
        try:
            for key in todo:
                before = store.misses
                try:
                    result = tasks[key]()
                except Pending:
                    missed.append(key)
                    continue
                if store.misses == before:
                    done[key] = result
                else:
                    missed.append(key)
        finally:
            store.collecting = False
        store.fetch_pending()
        todo = missed
    for key in todo:
        done[key] = tasks[key]()
    return {key: done[key] for key in tasks}
