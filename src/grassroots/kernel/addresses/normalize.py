"""Pure text keys for matching a typed address against the stored standard addresses.

A resident or a hotline operator writes the same address many ways: with or without
"重庆市江津区", with full-width digits, spaces, "·" or "-", and usually with a tail the register
does not hold ("2单元301室"). `normalize` removes the spelling differences; `lookup_keys` lists
the stored forms the text could be an extension of, so one indexed IN query finds the match.
"""

from __future__ import annotations

import unicodedata

# Markers that end an administrative division; a stored address may start right after any of
# them ("双福街道…" or "江津区双福街道…").
DIVISION_MARKERS = ("街道", "省", "市", "区", "县", "镇", "乡")

MAX_TEXT_CHARS = 300  # the stored column's length: a longer key can never match
MIN_KEY_CHARS = 4  # shorter prefixes ("双福街") would match far too much
# Registered standard addresses run to 20–60 characters; prefixes up to this length cover them
# with room to spare, and the whole remainder is always a key, so a longer address still
# matches when typed without a tail.
MAX_PREFIX_CHARS = 100
MAX_STARTS = 8  # position 0 and the first seven markers: enough for province to street


def _dropped(char: str) -> bool:
    # P*: all punctuation, Chinese and ASCII ("·", "、", "，", "-", "（"); Z*: spaces;
    # Cc/Cf: tabs, newlines and the zero-width characters pasted from chat apps.
    category = unicodedata.category(char)
    return category[0] in "PZ" or category in ("Cc", "Cf")


def normalize(text: str) -> str:
    """NFKC, no whitespace or punctuation, ASCII letters upper-cased: the comparable form."""
    folded = unicodedata.normalize("NFKC", text)
    return "".join(
        char.upper() if "a" <= char <= "z" else char
        for char in folded
        if not _dropped(char)
    )


# Divisions above the street; a stored key drops them, so "双福街道…" typed without the city
# still finds "重庆市江津区双福街道…".
_ABOVE_STREET = ("省", "市", "区", "县")
_STREET_MARKERS = ("街道", "镇", "乡")


def stored_key(text: str) -> str:
    """The form an address is stored under: normalised, from its street (街道/镇/乡) on.

    Every lookup key list includes the text from just after each division marker, so an input
    with the city, with the district only, or with neither reaches the same stored key.
    """
    key = normalize(text)[:MAX_TEXT_CHARS]
    street_at = min((p for p in (key.find(m) for m in _STREET_MARKERS) if p > 0), default=-1)
    if street_at < 0:
        return key
    cut = 0
    for marker in _ABOVE_STREET:
        position = key.rfind(marker, 0, street_at)
        if position != -1:
            cut = max(cut, position + len(marker))
    return key[cut:] if len(key) - cut >= MIN_KEY_CHARS else key


def _starts(key: str) -> list[int]:
    """Position 0 and every position just after a division marker, in order, capped."""
    starts = {0}
    for marker in DIVISION_MARKERS:
        position = key.find(marker)
        while position != -1:
            starts.add(position + len(marker))
            position = key.find(marker, position + 1)
    return sorted(start for start in starts if len(key) - start >= MIN_KEY_CHARS)[:MAX_STARTS]


def lookup_keys(text: str) -> list[str]:
    """Normalised keys a stored standard address may equal for this input, longest first.

    Every prefix of at least MIN_KEY_CHARS characters, taken from the start of the text and
    from just after each division marker, so "重庆市江津区双福街道X路1号2单元301室" yields
    "江津区双福街道X路1号" and "双福街道X路1号" among others. At most MAX_STARTS starting
    points and prefixes up to MAX_PREFIX_CHARS (plus each whole remainder): a few hundred keys
    for the longest input.
    """
    key = normalize(text)[:MAX_TEXT_CHARS]
    found: set[str] = set()
    for start in _starts(key):
        rest = key[start:]
        found.add(rest)
        longest = min(len(rest), MAX_PREFIX_CHARS)
        found.update(rest[:end] for end in range(MIN_KEY_CHARS, longest + 1))
    return sorted(found, key=lambda k: (-len(k), k))
