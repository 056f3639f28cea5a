"""Nightly rebuilds: build keys, the rebuild plan, upstream update checks, CI output and summaries.

- `keys`: `build_key(book, lock, name) -> BuildKey`, every input of an image named and hashed;
- `plan`: `plan(book, lock, catalogue_latest, names) -> Plan`, rebuild or skip against the newest
  published manifest's `inputs.build_key`, in dependency order; `decide` (one recipe, for
  `build --if-changed`); `catalogue_latest(store)`;
- `updates`: `check_updates(cfg, book, lock, names) -> list[Update]`, what changed upstream;
- `render`: the plan as text, a GitLab child pipeline or a GitHub matrix, and
  `render_summary(results) -> (json, markdown)` of a run.
"""

from __future__ import annotations

from .. import __version__

# The imagefactory version in every build key: a new release rebuilds every image. Looked up at
# call time by `keys`, so it can be replaced (tests, a build that wants to include a git commit).
IMAGEFACTORY_VERSION: str = __version__

from .keys import BuildKey, KeyMaker, build_key  # noqa: E402
from .plan import Plan, PlanEntry, catalogue_latest, decide, plan  # noqa: E402
from .render import RunResult, render_github, render_gitlab, render_summary, render_text  # noqa: E402
from .updates import CheckError, Update, check_updates  # noqa: E402

__all__ = ["IMAGEFACTORY_VERSION", "BuildKey", "CheckError", "KeyMaker", "Plan", "PlanEntry", "RunResult",
           "Update", "build_key", "catalogue_latest", "check_updates", "decide", "plan", "render_github",
           "render_gitlab", "render_summary", "render_text"]
