"""Jinja2 prompt templates, rendered as lm-evaluation-harness renders them.

Same environment as lm-eval (``StrictUndefined``, trailing newlines kept, a
``regex_replace`` filter), so a ported task renders byte-identical prompts. A
template is compiled when its task is loaded: a broken one fails there, not
halfway through a run.

Most task templates are literal text around plain ``{{field}}`` substitutions.
Those are rendered without Jinja (a join of the literal parts and ``str`` of
the fields, which is what Jinja outputs for them) because rendering is on the
hot path of ``scorer score``; Jinja itself is imported only for the others.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from scorer.errors import BadInput

if TYPE_CHECKING:
    import jinja2

# ``{{ name }}`` with a plain identifier: nothing Jinja would evaluate beyond a lookup.
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Literal text Jinja would not copy verbatim: other delimiters, and "\r" (Jinja rewrites newlines).
_NOT_LITERAL = re.compile(r"\{\{|\{%|\{#|\r")
# Names Jinja resolves by itself (constants, and globals when the document lacks them).
_JINJA_NAMES = frozenset(
    {
        "true",
        "false",
        "none",
        "True",
        "False",
        "None",
        "range",
        "dict",
        "lipsum",
        "cycler",
        "joiner",
        "namespace",
    }
)


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    env.filters["regex_replace"] = _regex_replace
    return env


@lru_cache(maxsize=512)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template; raises :class:`jinja2.TemplateSyntaxError` when broken."""
    return _environment().from_string(source)


@lru_cache(maxsize=512)
def simple_template(source: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """``(literals, fields)`` when ``source`` is literal text and plain ``{{field}}`` only, else None.

    ``literals`` has one more item than ``fields``; the rendering is
    ``literals[0] + str(doc[fields[0]]) + literals[1] + …``.
    """
    parts = _PLACEHOLDER.split(source)
    literals, fields = tuple(parts[0::2]), tuple(parts[1::2])
    if any(_NOT_LITERAL.search(text) for text in literals) or _JINJA_NAMES.intersection(fields):
        return None
    return literals, fields


def check_template(source: str, where: str) -> None:
    """Raise :class:`BadInput` naming ``where`` if ``source`` does not compile."""
    if simple_template(source) is not None:
        return
    import jinja2

    try:
        compile_template(source)
    except jinja2.TemplateSyntaxError as exc:
        raise BadInput(f"{where}: broken Jinja template (line {exc.lineno}): {exc.message}") from exc


def missing_field(name: str, where: str) -> BadInput:
    """The error for a template field ``name`` the document lacks."""
    return BadInput(f"{where}: template uses a field the document lacks: '{name}' is undefined")


def render(source: str, doc: dict[str, Any], where: str) -> str:
    """``source`` rendered with the document's fields; a missing field is :class:`BadInput`."""
    simple = simple_template(source)
    if simple is not None:
        literals, fields = simple
        if not fields:
            return source
        out = [literals[0]]
        for name, literal in zip(fields, literals[1:], strict=True):
            try:
                value = doc[name]
            except KeyError:
                raise missing_field(name, where) from None
            out.append(value if type(value) is str else str(value))
            out.append(literal)
        return "".join(out)
    import jinja2

    try:
        return compile_template(source).render(**doc)
    except jinja2.UndefinedError as exc:
        raise BadInput(f"{where}: template uses a field the document lacks: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise BadInput(f"{where}: template failed: {exc}") from exc
