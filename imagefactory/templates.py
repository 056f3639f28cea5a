"""Recipe templates (`files[].template`): rendered in jinja2's sandbox, from the recipe directory only.

A recipe is input from whoever wrote it, and the build runs as root: an unsandboxed template can
reach Python's internals (`cycler.__init__.__globals__.os.popen(...)`) and run commands on the
build host. The `SandboxedEnvironment` refuses attribute access to internals (a `SecurityError`),
StrictUndefined turns a misspelt variable into an error, and the loader is confined to the recipe
directory (jinja2's FileSystemLoader refuses `..` and absolute names). `recipes validate` renders
every template once with the merged recipe, so a template error names its file and line before a
build starts; the build renders them again with the same environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox


class TemplateProblem(Exception):
    """A template that cannot be rendered: `where` is `file:line` (relative to the recipe dir)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def environment(directory: Path) -> jinja2.Environment:
    return jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
    )


def render(directory: Path, name: str, recipe: Any, env: jinja2.Environment | None = None) -> str:
    """`name` (relative to `directory`) rendered with `recipe`; TemplateProblem on any error."""
    env = env or environment(directory)
    try:
        return env.get_template(name).render(recipe=recipe)
    except jinja2.TemplateNotFound:
        raise TemplateProblem(name, f"not found in {directory} (template names are relative to "
                                    "the recipe directory, without '..')") from None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateProblem(f"{e.name or name}:{e.lineno}", f"syntax error: {e.message}") from None
    except jinja2.exceptions.SecurityError as e:
        raise TemplateProblem(f"{name}:{_line(e, name)}", f"refused by the sandbox: {e}") from None
    except jinja2.TemplateError as e:
        raise TemplateProblem(f"{name}:{_line(e, name)}", str(e)) from None


def _line(e: BaseException, name: str) -> int | str:
    # The template's line is in the traceback frames jinja2 rewrites to point at the template file.
    tb = e.__traceback__
    line: int | str = "?"
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(name):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
