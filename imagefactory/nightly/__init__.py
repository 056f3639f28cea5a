"""Nightly rebuilds: build keys, the rebuild plan, upstream update checks, CI output and summaries.

- build keys (`imagefactory.buildkey`, below both `build` and this package, re-exported here):
  `build_key(book, lock, name) -> BuildKey`, every input of an image named and hashed;
- `plan`: `plan(book, lock, catalogue_latest, names) -> Plan`, rebuild or skip against the newest
  published manifest's `inputs.build_key`, in dependency order; `decide` (one recipe, for
  `build --if-changed`); `catalogue_latest(store)`;
- `updates`: `check_updates(cfg, book, lock, names) -> list[Update]`, what changed upstream;
- `render`: the plan as text, a GitLab child pipeline or a GitHub matrix, and
  `render_summary(results) -> (json, markdown)` of a run.
"""

from __future__ import annotations

# The version that goes into every key is `imagefactory.buildkey.IMAGEFACTORY_VERSION` (replace it
# there); it is not re-exported here, where replacing a copy would silently change nothing.
from ..buildkey import BuildKey, KeyMaker, build_key
from .plan import Plan, PlanEntry, catalogue_latest, decide, plan
from .render import RunResult, render_github, render_gitlab, render_summary, render_text
from .updates import CheckError, Update, check_updates

__all__ = ["BuildKey", "CheckError", "KeyMaker", "Plan", "PlanEntry", "RunResult",
           "Update", "build_key", "catalogue_latest", "check_updates", "decide", "plan", "render_github",
           "render_gitlab", "render_summary", "render_text"]
