"""Message catalogues: zh_CN first, English available. Keys are stable message ids."""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Term:
    """A message parameter that is itself a message id, shown in the reader's language.

    An error naming a state or an action passes Term("command.state.dispatched") rather than
    the raw enum value, so a Chinese sentence never carries an English word.
    """

    message_id: str

    def __str__(self) -> str:
        return self.message_id


def translate(message_id: str, language: str = DEFAULT_LANGUAGE, **params: Any) -> str:
    """Look up a message; fall back to zh_CN, then to the id itself so nothing is ever blank."""
    lang = language if language in LANGUAGES else DEFAULT_LANGUAGE
    text = catalogue(lang).get(message_id) or catalogue(DEFAULT_LANGUAGE).get(message_id)
    if text is None:
        return message_id
    if not params:
        return text
    shown = {name: translate(value.message_id, lang) if isinstance(value, Term) else value
             for name, value in params.items()}
    return text.format(**shown)


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
