"""Parsing bodies from the network with limits: nesting depth, size and numbers.

`json.loads` recurses once per `[` and a body of 30,000 of them raises RecursionError, which
no `except ValueError` catches: the caller answered 503 (and a platform retries a 503). Here
every way a hostile body can fail is a ValueError, found before the parser recurses.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 32  # the platforms' callbacks nest 4 deep; the console's bodies 2
MAX_CHARS = 1 << 20  # the web server refuses larger bodies first (MIMOCHAT_MAX_BODY_BYTES)
MAX_INT_DIGITS = 40  # ids and timestamps have 20 at most; int() of 5,000 digits is slow

# Linear on any input: the string pattern is the unrolled loop (no two ways to match a
# character) and an unterminated string simply runs to the end, so a lone `"` followed by
# 30,000 `\\"` costs one pass, not a quadratic search.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}
_XML_TOKENS = re.compile(r"<!\[CDATA\[.*?(?:\]\]>|\Z)|<!--.*?(?:-->|\Z)|<(/?)([^<>]*)>", re.DOTALL)


def _too_deep(text: str, max_depth: int) -> bool:
    """True when a JSON text's brackets (strings left out) nest deeper than `max_depth`."""
    if text.count("[") + text.count("{") <= max_depth:
        return False  # the common case: too few brackets to nest that deep
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_DELTA.__getitem__, brackets)), default=0) > max_depth


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError("number too large")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number too large")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(text: str | bytes, *, max_depth: int = MAX_DEPTH, max_chars: int = MAX_CHARS) -> Any:
    """`json.loads` for untrusted text: ValueError for anything too big, deep or malformed.

    Refused: over `max_chars`, nested deeper than `max_depth`, integers over 40 digits,
    floats that overflow to infinity, NaN/Infinity, bytes that are not UTF-8, lone surrogates.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("body is not UTF-8") from exc
    if len(text) > max_chars:
        raise ValueError("body too large")
    if _too_deep(text, max_depth):
        raise ValueError("JSON nested too deep")
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError as exc:  # not reachable past the depth check; kept as a backstop
        raise ValueError("JSON nested too deep") from exc
    _encodable(value)
    return value


def _encodable(value: Any) -> None:
    """ValueError for a string no UTF-8 can hold: `"\\ud800"` parses to a lone surrogate,
    which would fail much later (hashing, Redis) as an unexpected error. Depth is bounded."""
    if isinstance(value, str):
        value.encode("utf-8")  # UnicodeEncodeError is a ValueError
    elif isinstance(value, dict):
        for name, item in value.items():
            name.encode("utf-8")
            _encodable(item)
    elif isinstance(value, list):
        for item in value:
            _encodable(item)


def check_xml(text: str, *, max_depth: int = MAX_DEPTH, max_chars: int = MAX_CHARS) -> None:
    """ValueError when an XML text is larger or nests deeper than a callback ever does.

    A scan of the tags (CDATA and comments left out), not a parse: enough to refuse what would
    build a structure of thousands of levels, which later code would recurse through.
    """
    if len(text) > max_chars:
        raise ValueError("body too large")
    depth = 0
    for match in _XML_TOKENS.finditer(text):
        if match.group().startswith(("<![CDATA[", "<!--")):
            continue
        closing, inner = match.group(1), match.group(2)
        if closing:
            depth -= 1
        elif not (inner.endswith("/") or inner.startswith(("?", "!"))):
            depth += 1
            if depth > max_depth:
                raise ValueError("XML nested too deep")
