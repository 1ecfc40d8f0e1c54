"""Parsing bodies from the network with limits: nesting depth, size and numbers.

`json.loads` recurses once per `[` and a body of 30,000 of them raises RecursionError, which
no `except ValueError` catches: the caller answered 503 (and a platform retries a 503). Here
every way a hostile body can fail is a ValueError, found before the parser recurses.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32  # the platforms' callbacks nest 4 deep; the console's bodies 2
MAX_CHARS = 1 << 20  # the web server refuses larger bodies first (MIMOCHAT_MAX_BODY_BYTES)
MAX_INT_DIGITS = 40  # ids and timestamps have 20 at most; int() of 5,000 digits is slow

# One pass each: every match consumes its text, an unterminated string or section runs to the
# end, so no input makes the scan quadratic (a lone `"` followed by 30,000 `\\"` included).
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
_XML_TOKENS = re.compile(r"<!\[CDATA\[.*?(?:\]\]>|\Z)|<!--.*?(?:-->|\Z)|<(/?)([^<>]*)>", re.DOTALL)


def _depth_of(text: str) -> int:
    """The deepest bracket nesting of a JSON text, strings left out."""
    depth = deepest = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth -= 1
    return deepest


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
    floats that overflow to infinity, NaN/Infinity, bytes that are not UTF-8.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("body is not UTF-8") from exc
    if len(text) > max_chars:
        raise ValueError("body too large")
    if _depth_of(text) > max_depth:
        raise ValueError("JSON nested too deep")
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError as exc:  # not reachable past the depth check; kept as a backstop
        raise ValueError("JSON nested too deep") from exc


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
