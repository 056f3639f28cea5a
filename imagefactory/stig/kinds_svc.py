"""Action/check kinds for sshd, the audit rules and RKE2's config.yaml."""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import Field

from . import parsers as P
from .kinds import (
    AUDIT_RULES,
    SSHD_DROPIN,
    SSHD_INCLUDE,
    CheckContext,
    CheckResult,
    FixContext,
    ImagePath,
    Kind,
    Mode,
    bad,
    err,
    ok,
    verdict,
)
from .sources import HostSource, Source


class SshdOption(Kind):
    """An sshd option in the drop-in /etc/ssh/sshd_config.d/50-imagefactory-stig.conf. sshd
    takes the *first* value it reads, so the fix makes sure sshd_config includes the drop-in
    directory (at the top when missing) and comments out conflicting global lines in
    sshd_config and in the other drop-ins. Offline the effective value is computed from the
    files, on a host from `sshd -T`."""

    type: Literal["sshd_option"]
    key: str = Field(pattern=r"^[A-Za-z0-9]+$")
    value: str
    compare: Literal["eq", "le", "ge"] = "eq"
    min_value: int | None = None

    def apply(self, fx: FixContext) -> None:
        main = P.sshd_main(fx.src)
        if main != "/etc/ssh/sshd_config":  # SUSE vendor file only: sshd reads /etc once it exists
            fx.write("/etc/ssh/sshd_config", fx.read(main) or "", "0600")
            main = "/etc/ssh/sshd_config"
        text = fx.read(main)
        if text is None:
            fx.write(main, SSHD_INCLUDE + "\n", "0644")
            text = SSHD_INCLUDE + "\n"
        if not any(re.match(r"^\s*Include\s+/etc/ssh/sshd_config\.d/\*\.conf\s*$", ln, re.I)
                   for ln in text.splitlines()):
            text = f"{SSHD_INCLUDE}\n{text}"
        fx.write(main, self._comment_conflicts(text))
        for other in fx.src.glob("/etc/ssh/sshd_config.d/*.conf"):
            if other != SSHD_DROPIN:
                fx.write(other, self._comment_conflicts(fx.read(other) or ""))
        fx.write(SSHD_DROPIN, P.set_key(fx.read(SSHD_DROPIN) or "", self.key, self.value, " "), "0644")

    def _comment_conflicts(self, text: str) -> str:
        out, in_match = [], False
        for ln in text.splitlines():
            parts = ln.split()
            key = parts[0].lower() if parts and not parts[0].startswith("#") else ""
            in_match = in_match or key == "match"
            if key == self.key.lower() and not in_match and " ".join(parts[1:]) != self.value:
                ln = f"# {ln}  # imagefactory STIG: set in {SSHD_DROPIN}"
            out.append(ln)
        return "\n".join(out) + "\n"

    def _good(self, value: str) -> bool:
        return P.compare(value, self.value, self.compare, min_value=self.min_value)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        key = self.key.lower()
        if isinstance(src, HostSource):
            if "sshd_t" not in ctx.cache:
                rc, out = src.run("sshd -T")
                ctx.cache["sshd_t"] = P.sshd_t(out) if rc == 0 else None
            eff: dict[str, str] | None = ctx.cache["sshd_t"]
            if eff is None:
                return err("sshd -T failed (needs root)")
            if key not in eff:
                return bad(f"sshd -T shows no {key}")
            return verdict(self._good(eff[key]), f"sshd -T: {key} {eff[key]}")
        found = P.sshd_effective(src)
        if key not in found:
            return bad(f"{self.key} not set in sshd_config or its includes")
        value, where = found[key]
        return verdict(self._good(value), f"{where}: {self.key} {value}")


class AuditRule(Kind):
    """One audit rule in /etc/audit/rules.d/stig.rules (mode 0640). Offline any rules.d file
    counts, on a host the loaded rules (`auditctl -l`); rules compare in a canonical form
    (the key is ignored, `auid!=-1` equals `auid!=unset`)."""

    type: Literal["audit_rule"]
    rule: str
    file: ImagePath = AUDIT_RULES

    def apply(self, fx: FixContext) -> None:
        text = fx.read(self.file) or ""
        want = P.audit_canon(self.rule)
        if any(P.audit_canon(ln) == want for ln in text.splitlines()):
            return
        sep = "" if not text or text.endswith("\n") else "\n"
        fx.write(self.file, f"{text}{sep}{self.rule}\n", "0640")

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        want = P.audit_canon(self.rule)
        if isinstance(src, HostSource):
            if "auditctl" not in ctx.cache:
                rc, out = src.run("auditctl -l")
                ctx.cache["auditctl"] = out.splitlines() if rc == 0 else None
            loaded: list[str] | None = ctx.cache["auditctl"]
            if loaded is None:
                return err("auditctl -l failed (needs root and a running auditd)")
            hit = next((ln for ln in loaded if P.audit_canon(ln) == want), None)
            return verdict(hit is not None, f"loaded: {hit}" if hit else f"not loaded: {self.rule}")
        for path in src.glob("/etc/audit/rules.d/*.rules"):
            for n, ln in enumerate((src.read(path) or "").splitlines(), 1):
                if P.audit_canon(ln) == want:
                    return ok(f"{path}:{n}: {ln.strip()}")
        return bad(f"missing in /etc/audit/rules.d: {self.rule}")


def _load_yaml(fx: FixContext, path: str) -> dict[str, Any]:
    data = yaml.safe_load(fx.read(path) or "") or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return data


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=4096)


class YamlListContains(Kind):
    """A list entry under `key` of a YAML file (RKE2 `kube-apiserver-arg` and friends). For
    `name=value` items the fix replaces any other `name=` entry. Checks read the file merged
    with its `.d/*.yaml` drop-ins. `match`: exact (or one of `accept`), prefix (any entry
    starting with `item`), subset (same `name=` and a comma-separated value list within
    `item`'s). `present: false` means no entry may match (the fix removes them)."""

    type: Literal["yaml_list_contains"]
    path: ImagePath
    key: str
    item: str
    match: Literal["exact", "prefix", "subset"] = "exact"
    accept: tuple[str, ...] = ()
    present: bool = True
    mode: Mode = "0600"

    def _hit(self, entry: Any) -> bool:
        e = str(entry)
        if self.match == "prefix":
            return e.startswith(self.item)
        if self.match == "subset":
            name, _, values = self.item.partition("=")
            ename, _, evalues = e.partition("=")
            return ename == name and bool(evalues) and set(evalues.split(",")) <= set(values.split(","))
        return e == self.item or e in self.accept

    def apply(self, fx: FixContext) -> None:
        data = _load_yaml(fx, self.path)
        items = [str(i) for i in P.as_list(data.get(self.key))]
        if self.present:
            name = self.item.split("=", 1)[0] + "=" if "=" in self.item else None
            if not any(self._hit(i) for i in items):
                items = [i for i in items if not (name and i.startswith(name))] + [self.item]
        else:
            items = [i for i in items if not self._hit(i)]
        if items or self.key in data:
            data[self.key] = items
        fx.write(self.path, _dump(data), self.mode)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        if src.read(self.path) is None:
            return bad(f"{self.path} missing")
        try:
            items = P.as_list(P.yaml_merged(src, self.path).get(self.key))
        except yaml.YAMLError as e:
            return err(f"{self.path}: {e}")
        hits = [str(i) for i in items if self._hit(i)]
        if self.present:
            return verdict(bool(hits), f"{self.key}: {hits[0]}" if hits else f"{self.key} lacks {self.item}")
        return verdict(not hits, f"{self.key} has {', '.join(hits)}" if hits else f"{self.key}: none")


class YamlKey(Kind):
    """A scalar at `key` (dotted path, list indexes allowed: `plugins.0.name`) of a YAML file;
    checks read the file merged with its `.d/*.yaml` drop-ins."""

    type: Literal["yaml_key"]
    path: ImagePath
    key: str
    value: str | int | bool
    accept: tuple[str | int | bool, ...] = ()
    mode: Mode = "0600"

    def apply(self, fx: FixContext) -> None:
        data = _load_yaml(fx, self.path)
        cur: Any = data
        parts = self.key.split(".")
        for part in parts[:-1]:
            nxt = cur[int(part)] if isinstance(cur, list) else cur.setdefault(part, {})
            cur = nxt
        if isinstance(cur, list):
            cur[int(parts[-1])] = self.value
        else:
            cur[parts[-1]] = self.value
        fx.write(self.path, _dump(data), self.mode)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        if src.read(self.path) is None:
            return bad(f"{self.path} missing")
        try:
            got = P.dig(P.yaml_merged(src, self.path), self.key)
        except yaml.YAMLError as e:
            return err(f"{self.path}: {e}")
        if P.missing(got):
            return bad(f"{self.path}: {self.key} not set")
        good = any(str(got).lower() == str(v).lower() for v in (self.value, *self.accept))
        return verdict(good, f"{self.path}: {self.key}: {got!r}")
