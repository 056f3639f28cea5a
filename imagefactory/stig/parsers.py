"""Parsers and editors for the configuration formats the STIG controls touch.

Pure functions over text (and a `Source` where a format spans several files): `KEY value`
files (login.defs, pwquality.conf, auditd.conf, apt.conf), sysctl.d, sshd_config with its
`Include`s, audit rules, PAM stacks, dpkg/rpm package databases and RKE2's config.yaml with
its `config.yaml.d` drop-ins.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from .sources import Source

# --- KEY <sep> value lines -----------------------------------------------------------------


def _key_re(key: str, separator: str) -> str:
    k = r"\s+".join(re.escape(p) for p in key.split())
    sep = r"\s*=\s*" if "=" in separator else r"\s*:\s*" if ":" in separator else r"\s+"
    return k + f"(?:{sep})"


def active_values(text: str, key: str, separator: str = " ", comment: str = "#") -> list[tuple[int, str]]:
    """(line number, value) of every active `key<sep>value` line; keys match case-insensitively."""
    rx = re.compile(r"^\s*" + _key_re(key, separator) + r"(.*?)\s*$", re.IGNORECASE)
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(comment):
            continue
        m = rx.match(line)
        if m:
            out.append((n, m.group(1)))
    return out


def set_key(text: str, key: str, value: str, separator: str = " ", comment: str = "#") -> str:
    """Replace the first active `key` line (later duplicates are commented out); else turn the
    first commented-out `key` line into the setting; else append it."""
    line_new = f"{key}{separator}{value}"
    active = re.compile(r"^\s*" + _key_re(key, separator), re.IGNORECASE)
    commented = re.compile(r"^\s*" + re.escape(comment) + r"+\s*" + _key_re(key, separator), re.IGNORECASE)
    lines = text.splitlines()
    hits = [i for i, ln in enumerate(lines) if not ln.lstrip().startswith(comment) and active.match(ln)]
    if hits:
        lines[hits[0]] = line_new
        for i in hits[1:]:
            lines[i] = f"{comment} {lines[i]}"
    else:
        c = next((i for i, ln in enumerate(lines) if commented.match(ln)), None)
        if c is not None:
            lines[c] = line_new
        else:
            lines.append(line_new)
    return "\n".join(lines) + "\n"


def compare(actual: str, expected: str, op: str, *, ignore_case: bool = True,
            min_value: int | None = None) -> bool:
    """eq (string, whitespace-normalised), le/ge (integers; a trailing % is ignored) or contains
    (expected is one element of a comma/space separated list)."""
    if op == "eq":
        a, e = " ".join(actual.split()), " ".join(expected.split())
        return a.lower() == e.lower() if ignore_case else a == e
    if op == "contains":
        items = [i for i in re.split(r"[,;\s]+", actual) if i]
        return expected.lower() in (i.lower() for i in items) if ignore_case else expected in items
    try:
        a_num, e_num = int(actual.strip().strip('"').rstrip("%")), int(expected.rstrip("%"))
    except ValueError:
        return False
    if min_value is not None and a_num < min_value:
        return False
    return a_num <= e_num if op == "le" else a_num >= e_num


# --- sysctl ----------------------------------------------------------------------------------

SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d",
               "/lib/sysctl.d")
SYSCTL_DROPIN = "/etc/sysctl.d/99-imagefactory-stig.conf"


def sysctl_key(key: str) -> str:
    return key.strip().lstrip("-").replace("/", ".")


def sysctl_assignments(src: Source) -> list[tuple[str, int, str, str]]:
    """Every assignment in the order systemd-sysctl/procps apply them: files by basename (a name
    in /etc masks the same name further down the list), then /etc/sysctl.conf. Later wins."""
    chosen: dict[str, str] = {}
    for d in SYSCTL_DIRS:
        for p in src.glob(f"{d}/*.conf"):
            chosen.setdefault(PurePosixPath(p).name, p)
    files = [chosen[n] for n in sorted(chosen)] + ["/etc/sysctl.conf"]
    out = []
    for path in files:
        for n, line in enumerate((src.read(path) or "").splitlines(), 1):
            s = line.strip()
            if not s or s[0] in "#;" or "=" not in s:
                continue
            k, v = s.split("=", 1)
            out.append((path, n, sysctl_key(k), " ".join(v.split())))
    return out


# --- sshd ------------------------------------------------------------------------------------


def sshd_main(src: Source) -> str:
    """The sshd_config sshd reads: /etc/ssh, else the vendor copy in /usr/etc (SUSE)."""
    etc = "/etc/ssh/sshd_config"
    return etc if src.read(etc) is not None else "/usr/etc/ssh/sshd_config"


def sshd_effective(src: Source) -> dict[str, tuple[str, str]]:
    """Global sshd options (lower-case key -> (value, "file:line")), first value wins, following
    `Include` in order; anything after a `Match` in a file is conditional and ignored."""
    eff: dict[str, tuple[str, str]] = {}

    def parse(path: str, depth: int) -> None:
        if depth > 16:
            return
        for n, line in enumerate((src.read(path) or "").splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = re.split(r"\s*=\s*|\s+", s, maxsplit=1)
            key, value = parts[0].lower(), (parts[1] if len(parts) > 1 else "").strip().strip('"')
            if key == "match":
                return
            if key == "include":
                for pat in value.split():
                    pat = pat if pat.startswith("/") else f"/etc/ssh/{pat}"
                    for inc in src.glob(pat):
                        parse(inc, depth + 1)
                continue
            eff.setdefault(key, (value, f"{path}:{n}"))

    parse(sshd_main(src), 0)
    return eff


def sshd_t(output: str) -> dict[str, str]:
    """`sshd -T` output as lower-case key -> value (first line per key)."""
    out: dict[str, str] = {}
    for line in output.splitlines():
        k, _, v = line.strip().partition(" ")
        if k:
            out.setdefault(k.lower(), v.strip())
    return out


# --- audit rules -----------------------------------------------------------------------------


_AUDIT_OPTS_WITH_ARG = {"-a", "-A", "-w", "-W", "-p", "-S", "-F", "-C", "-k", "--key", "-e", "-b", "-f", "-r"}


def audit_canon(rule: str) -> str | None:
    """A canonical form of one audit rule, so a line from rules.d matches `auditctl -l` output:
    the key (-k / -F key=) is ignored (the STIG says it is arbitrary), `auid!=-1` is
    `auid!=unset`, `-S all` is dropped, syscall lists and fields are sorted."""
    try:
        tok = shlex.split(rule, comments=True)
    except ValueError:
        return None
    if not tok:
        return None
    head: list[str] = []
    fields: list[str] = []
    syscalls: set[str] = set()
    i = 0
    while i < len(tok):
        t = tok[i]
        takes_arg = t in _AUDIT_OPTS_WITH_ARG
        arg = tok[i + 1] if takes_arg and i + 1 < len(tok) else ""
        i += 2 if takes_arg else 1
        if t in ("-k", "--key"):
            continue
        if t == "-S":
            syscalls.update(s for s in arg.split(",") if s and s != "all")
        elif t in ("-F", "-C"):
            if not arg.startswith("key="):
                fields.append(t + re.sub(r"^auid!=(-1|4294967295)$", "auid!=unset", arg))
        elif t in ("-a", "-A"):
            head.append("-a" + ",".join(sorted(arg.split(","))))
        elif t == "-w":
            head.append("-w" + (arg.rstrip("/") or "/"))
        elif t == "-p":
            fields.append("-p" + "".join(sorted(arg)))
        else:
            head.append(t + arg)
    return " ".join([*head, *(["-S" + ",".join(sorted(syscalls))] if syscalls else []), *sorted(fields)])


# --- packages --------------------------------------------------------------------------------


def dpkg_installed(status: str) -> set[str]:
    """Package names dpkg considers installed, from /var/lib/dpkg/status."""
    out = set()
    for para in status.split("\n\n"):
        name = re.search(r"^Package:\s*(\S+)", para, re.MULTILINE)
        state = re.search(r"^Status:\s*(.+)$", para, re.MULTILINE)
        if name and state and state.group(1).split()[-1] == "installed":
            out.add(name.group(1))
    return out


def rpm_installed(db: Path) -> set[str] | None:
    """Package names from an rpm sqlite database, opened read-only and immutable (nothing is
    written into the image); None when there is no sqlite database to read."""
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
        try:
            rows = con.execute("SELECT key FROM Name").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return {r[0].decode() if isinstance(r[0], bytes) else str(r[0]) for r in rows}


# --- PAM -------------------------------------------------------------------------------------


def pam_split(line: str) -> tuple[str, str, str, list[str]] | None:
    """(type, control, module, args) of an active PAM line; None for comments/includes."""
    s = line.strip()
    if not s or s.startswith("#") or s.startswith("@"):
        return None
    m = re.match(r"^(-?\w+)\s+(\[[^\]]*\]|\S+)\s+(\S+)\s*(.*)$", s)
    if not m:
        return None
    return m.group(1).lstrip("-"), m.group(2), m.group(3), m.group(4).split()


def _opt_name(opt: str) -> str:
    return opt.split("=", 1)[0]


def pam_set_options(text: str, ptype: str, module: str, options: list[str], *, control: str | None,
                    insert_before: str | None, remove: list[str] | None = None) -> str:
    """Make every `ptype ... module` line carry `options` (an `x=` option replaces the old
    `x=` value) and none of `remove`. With `control`, a missing module line is inserted before
    the first `insert_before` module line (or appended)."""
    lines = text.splitlines()
    hit = False
    for i, line in enumerate(lines):
        p = pam_split(line)
        if not p or p[0] != ptype or PurePosixPath(p[2]).name != module:
            continue
        hit = True
        drop = {_opt_name(o) for o in options} | set(remove or ())
        args = [a for a in p[3] if _opt_name(a) not in drop]
        lines[i] = "\t".join([p[0], p[1], p[2], " ".join(args + options)]).rstrip()
    if not hit and control:
        new = "\t".join([ptype, control, module, " ".join(options)]).rstrip()
        at = next((i for i, ln in enumerate(lines) if (p := pam_split(ln)) and p[0] == ptype
                   and insert_before and PurePosixPath(p[2]).name == insert_before), len(lines))
        lines.insert(at, new)
    return "\n".join(lines) + "\n"


def pam_has_options(text: str, ptype: str, module: str, options: list[str],
                    absent: list[str] | None = None) -> tuple[bool, str]:
    """Whether some active `ptype ... module` line carries all `options` and none of `absent`
    (option names); plus the line seen."""
    seen = ""
    for line in text.splitlines():
        p = pam_split(line)
        if not p or p[0] != ptype or PurePosixPath(p[2]).name != module:
            continue
        seen = line.strip()
        if all(o in p[3] for o in options) and not {_opt_name(a) for a in p[3]} & set(absent or ()):
            return True, seen
    return False, seen


# --- YAML (RKE2 config) ----------------------------------------------------------------------


def _as_list(v: Any) -> list[Any]:
    return [] if v is None else list(v) if isinstance(v, list) else [v]


def yaml_merged(src: Source, path: str) -> dict[str, Any]:
    """`path` merged with its `<path>.d/*.yaml` drop-ins the way RKE2 does it: later files win,
    a `key+` appends to the list under `key`."""
    cfg: dict[str, Any] = {}
    for p in [path, *src.glob(f"{path}.d/*.yaml")]:
        data = yaml.safe_load(src.read(p) or "") or {}
        if not isinstance(data, dict):
            continue
        for k, v in data.items():
            k = str(k)
            if k.endswith("+"):
                cfg[k[:-1]] = _as_list(cfg.get(k[:-1])) + _as_list(v)
            else:
                cfg[k] = v
    return cfg


_MISSING = object()


def dig(data: Any, dotted: str) -> Any:
    """`a.b.0.c` lookup through dicts and lists; `_MISSING` when absent."""
    cur = data
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def as_list(v: Any) -> list[Any]:
    return _as_list(v)


def missing(v: Any) -> bool:
    return v is _MISSING
