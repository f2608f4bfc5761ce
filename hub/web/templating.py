"""HTML for every page of the web surface: Jinja2 templates from ``hub/web/templates``, autoescaped.

One environment and one stylesheet, so the wall screen, the console and the public pages look
and escape alike. Values are escaped by Jinja2; secrets are scrubbed by the caller before they
reach a template (``hub.logs.scrub``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

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


def strings(page: str, **values: Any) -> dict[str, dict[str, str]]:
    """A page's words by language (``i18n/<page>.json``: ``{"vi": {...}, "en": {...}}``), with
    ``{name}`` placeholders filled from ``values`` where given. Translations are data, kept
    beside each other so a missing one shows in review."""
    text = json.loads(files("hub.web").joinpath("i18n", f"{page}.json").read_text(encoding="utf-8"))
    if values:
        for words in text.values():
            for key, word in words.items():
                if any("{" + name + "}" in word for name in values):
                    words[key] = word.format(**values)
    return text
