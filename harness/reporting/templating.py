"""The one Jinja2 environment every HTML page the harness writes is rendered through.

A page is a template under ``harness/reporting/templates/`` (package data), autoescaped: a step
or measurement name, a serial, a diagnosis is text on the page, never markup, whatever it holds.
Build no HTML from strings elsewhere: add a ``*.html.j2`` template and render it with
:func:`render_page` (the qualification summary, ``hil compare``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"


@lru_cache(maxsize=1)
def environment() -> Any:
    """The shared environment: templates from :data:`TEMPLATES`, HTML autoescaped, an undefined
    name an error (a page never silently drops a field)."""
    import jinja2  # on first page only: the CLI starts without it
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                              autoescape=jinja2.select_autoescape(["html", "j2"]),
                              undefined=jinja2.StrictUndefined)


def render_page(template: str, **context: Any) -> str:
    """``template`` (a file name under :data:`TEMPLATES`) rendered with ``context``."""
    return environment().get_template(template).render(**context)
