"""HTML for every page of the web surface: Jinja2 templates from ``hub/web/templates``, autoescaped.

One environment and one stylesheet, so the wall screen, the console and the public pages look
and escape alike. Values are escaped by Jinja2; secrets are scrubbed by the caller before they
reach a template (``hub.logs.scrub``).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.templating import Jinja2Templates


@cache
def templates() -> Jinja2Templates:
    env = Environment(loader=PackageLoader("hub.web", "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=False, lstrip_blocks=False)
    return Jinja2Templates(env=env)


@cache
def stylesheet() -> str:
    """The pages' CSS, inlined: each page is one response, with nothing else to fetch."""
    return files("hub.web").joinpath("static", "hub.css").read_text(encoding="utf-8")
