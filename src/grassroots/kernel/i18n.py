"""Message catalogues: zh_CN first, English available. Keys are stable message ids."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

LANGUAGES = ("zh_CN", "en")
DEFAULT_LANGUAGE = "zh_CN"


# Each package keeps its own messages in <package>/locales/<language>.json; all are merged.
MESSAGE_PACKAGES = (
    "grassroots.kernel",
    "grassroots.web",
    "grassroots.command",
    "grassroots.governance",
    "grassroots.irrigation",
)


@cache
def catalogue(language: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for package in MESSAGE_PACKAGES:
        path = resources.files(package).joinpath(f"locales/{language}.json")
        if path.is_file():
            merged.update(json.loads(path.read_text(encoding="utf-8")))
    return merged


def register_messages(language: str, messages: dict[str, str]) -> None:
    """Let a domain add its own messages at import time, keeping one lookup path."""
    catalogue(language).update(messages)


def translate(message_id: str, language: str = DEFAULT_LANGUAGE, **params: Any) -> str:
    """Look up a message; fall back to zh_CN, then to the id itself so nothing is ever blank."""
    lang = language if language in LANGUAGES else DEFAULT_LANGUAGE
    text = catalogue(lang).get(message_id) or catalogue(DEFAULT_LANGUAGE).get(message_id)
    if text is None:
        return message_id
    return text.format(**params) if params else text


def negotiate(accept_language: str | None, explicit: str | None = None) -> str:
    """Pick zh_CN or en from a ?lang= value or an Accept-Language header."""
    if explicit in LANGUAGES:
        return explicit
    if explicit and explicit.lower().startswith("en"):
        return "en"
    if explicit and explicit.lower().startswith("zh"):
        return "zh_CN"
    if not accept_language:
        return DEFAULT_LANGUAGE
    ranked: list[tuple[float, str]] = []
    for part in accept_language.split(","):
        pieces = part.strip().split(";q=")
        tag = pieces[0].strip().lower()
        try:
            weight = float(pieces[1]) if len(pieces) > 1 else 1.0
        except ValueError:
            weight = 0.0
        ranked.append((weight, tag))
    for _weight, tag in sorted(ranked, key=lambda item: -item[0]):
        if tag.startswith("zh"):
            return "zh_CN"
        if tag.startswith("en"):
            return "en"
    return DEFAULT_LANGUAGE
