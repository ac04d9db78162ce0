"""Jinja2 prompt templates, rendered as lm-evaluation-harness renders them.

Same environment as lm-eval (``StrictUndefined``, trailing newlines kept, a
``regex_replace`` filter), so a ported task renders byte-identical prompts. A
template is compiled when its task is loaded: a broken one fails there, not
halfway through a run.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import jinja2

from scorer.errors import BadInput


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


_ENV = jinja2.Environment(
    loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
)
_ENV.filters["regex_replace"] = _regex_replace


@lru_cache(maxsize=512)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template; raises :class:`jinja2.TemplateSyntaxError` when broken."""
    return _ENV.from_string(source)


def check_template(source: str, where: str) -> None:
    """Raise :class:`BadInput` naming ``where`` if ``source`` does not compile."""
    try:
        compile_template(source)
    except jinja2.TemplateSyntaxError as exc:
        raise BadInput(f"{where}: broken Jinja template (line {exc.lineno}): {exc.message}") from exc


def render(source: str, doc: dict[str, Any], where: str) -> str:
    """``source`` rendered with the document's fields; a missing field is :class:`BadInput`."""
    try:
        return compile_template(source).render(**doc)
    except jinja2.UndefinedError as exc:
        raise BadInput(f"{where}: template uses a field the document lacks: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise BadInput(f"{where}: template failed: {exc}") from exc
