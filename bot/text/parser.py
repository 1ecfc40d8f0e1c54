"""The markdown-it-py parser for model output: CommonMark, tables, strikethrough, math, bare URLs.

On top of ``MarkdownIt("commonmark").enable(["table", "strikethrough"])``, for what chat models
write:

- ``math`` (inline rule): ``$…$`` (pandoc's dollar rule, so ``$5 and $10`` stay currency),
  ``$$…$$``, ``\\(…\\)``, ``\\[…\\]`` and a bare ``\\boxed{…}`` become ``math`` tokens
  (``content`` is the LaTeX source, ``meta["display"]`` says whether it was display math).
  Markdown inside math is never parsed (``$a_1 * b_2$`` has no emphasis).
- ``bare_url`` (inline rule): ``https://…`` in prose is literal text, so ``__`` or ``*`` inside
  a URL never becomes emphasis.
- ``emphasis`` (inline rule, replaced): ``*`` between two ASCII letters or digits neither opens
  nor closes emphasis (``2*3*4`` and ``x**2 + y**2`` are arithmetic), and a delimiter run next
  to a CJK character is flanking even when its other side is punctuation (``**注意：**这里`` is
  bold, as Chinese writers mean it).
- ``reference`` (block rule, wrapped): a footnote definition (``[^1]: note``) is not a link
  reference definition; it and the ``[^1]`` marks stay as written.

Links keep their destination as written: no percent-encoding, no scheme filtering (the output is
plain text, never HTML).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.common.utils import isMdAsciiPunct, isPunctChar, isWhiteSpace
from markdown_it.rules_block import reference
from markdown_it.rules_block.state_block import StateBlock
from markdown_it.rules_inline.state_inline import Delimiter, Scanned, StateInline
from markdown_it.token import Token

__all__ = ["parse"]

# URL characters as the old renderer read them: up to whitespace, quotes, brackets or CJK
# punctuation (a Chinese sentence often runs straight on after a link).
_URL_REST = re.compile(r"://[^\s<>\"'`\[\]\u3000-\u303f\uff00-\uffef]+")
_URL_TAIL = ".,;:!?*_~"
_SCHEMES = ("http", "https", "ftp")


def _find(state: StateInline, needle: str, start: int) -> int:
    """``state.src.find(needle, start, posMax)``, remembering misses so scans stay linear."""
    end = state.posMax
    misses: dict[tuple[str, str, int], int] = state.env.setdefault("_math_misses", {})
    key = (state.src, needle, end)
    if start >= misses.get(key, end + 1):
        return -1
    pos = state.src.find(needle, start, end)
    if pos < 0:
        misses[key] = min(start, misses.get(key, start))
    return pos


def _brace_partner(state: StateInline, at: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``at`` in ``state.src`` (-1 when unbalanced)."""
    cache: dict[str, dict[int, int]] = state.env.setdefault("_math_braces", {})
    partners = cache.get(state.src)
    if partners is None:
        partners = {}
        stack: list[int] = []
        src = state.src
        j = 0
        while j < len(src):
            ch = src[j]
            if ch == "\\":
                j += 2
                continue
            if ch == "{":
                stack.append(j)
            elif ch == "}" and stack:
                partners[stack.pop()] = j
            j += 1
        cache[state.src] = partners
    return partners.get(at, -1)


def _dollar_close(src: str, i: int, line_end: int) -> int:
    """Closing ``$`` of inline math opened at ``i`` (pandoc's rule), or -1 for a literal dollar."""
    j = i + 1
    if j >= line_end or src[j].isspace():
        return -1
    k = src.find("$", j, line_end)
    if k < 0 or src[k - 1].isspace() or src[k - 1] == "\\":
        return -1
    if k + 1 < len(src) and src[k + 1].isdigit():
        return -1
    return k


def _push_math(state: StateInline, silent: bool, source: str, display: bool, end: int) -> bool:
    """Emit one ``math`` token for ``source`` and move past the closing delimiter at ``end``."""
    if not silent:
        token = state.push("math", "", 0)
        token.content = source
        token.meta = {"display": display}
    state.pos = end
    return True


def _math(state: StateInline, silent: bool) -> bool:
    """Inline rule: math in dollars, ``\\(…\\)``, ``\\[…\\]``, or a bare ``\\boxed{…}``."""
    src, pos, end = state.src, state.pos, state.posMax
    ch = src[pos]
    if ch == "$":
        if src.startswith("$$", pos):
            close = _find(state, "$$", pos + 2)
            if close >= 0 and src[pos + 2 : close].strip():
                return _push_math(state, silent, src[pos + 2 : close], True, close + 2)
            # two literal dollars: the second must not open inline math
            if not silent:
                state.pending += "$$"
            state.pos += 2
            return True
        line_end = src.find("\n", pos, end)
        close = _dollar_close(src, pos, end if line_end < 0 else line_end)
        if close > 0:
            return _push_math(state, silent, src[pos + 1 : close], False, close + 1)
        return False  # a literal dollar: the parser adds it to the text
    if ch != "\\" or pos + 1 >= end:
        return False
    nxt = src[pos + 1]
    if nxt in "([":
        closer = "\\)" if nxt == "(" else "\\]"
        close = _find(state, closer, pos + 2)
        if close >= 0 and src[pos + 2 : close].strip():
            return _push_math(state, silent, src[pos + 2 : close], nxt == "[", close + 2)
        return False  # the escape rule makes it a literal bracket
    if src.startswith("\\boxed", pos):
        k = pos + 6
        while k < end and src[k] in " \t":
            k += 1
        if k < end and src[k] == "{":
            close = _brace_partner(state, k)
            if 0 <= close < end:
                return _push_math(state, silent, src[pos : close + 1], False, close + 1)
    return False


def _bare_url(state: StateInline, silent: bool) -> bool:
    """Inline rule: the rest of a bare ``scheme://…`` URL is literal text."""
    src, pos = state.src, state.pos
    if src[pos] != ":" or not state.pending[-5:].lower().endswith(_SCHEMES):
        return False
    m = _URL_REST.match(src, pos, state.posMax)
    if m is None:
        return False
    url = m.group()
    while len(url) > 3 and (
        url[-1] in _URL_TAIL or (url[-1] == ")" and url.count(")") > url.count("("))
    ):
        url = url[:-1]
    if not silent:
        state.pending += url
    state.pos += len(url)
    return True


def _is_wide(ch: str) -> bool:
    """True for a CJK (wide or fullwidth) character."""
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _scan(state: StateInline, start: int) -> Scanned:
    """``StateInline.scanDelims`` for ``*`` and ``_`` with the chat rules in the module doc."""
    src = state.src
    marker = src[start]
    pos = start
    while pos < state.posMax and src[pos] == marker:
        pos += 1
    last = src[start - 1] if start > 0 else " "
    nxt = src[pos] if pos < state.posMax else " "
    last_ws, next_ws = isWhiteSpace(ord(last)), isWhiteSpace(ord(nxt))
    last_p = isMdAsciiPunct(ord(last)) or isPunctChar(last)
    next_p = isMdAsciiPunct(ord(nxt)) or isPunctChar(nxt)
    left = not next_ws and (not next_p or last_ws or last_p or _is_wide(last))
    right = not last_ws and (not last_p or next_ws or next_p or _is_wide(nxt))
    if marker == "*":
        # between two ASCII letters or digits a star is arithmetic (2*3*4, x**2), not markup
        inside = last.isascii() and last.isalnum() and nxt.isascii() and nxt.isalnum()
        can_open = left and not inside
        can_close = right and not inside
    else:
        can_open = left and (not right or last_p)
        can_close = right and (not left or next_p)
    return Scanned(can_open, can_close, pos - start)


def _emphasis(state: StateInline, silent: bool) -> bool:
    """markdown-it's emphasis tokenizer, with :func:`_scan` deciding who opens and closes."""
    marker = state.src[state.pos]
    if silent or marker not in ("_", "*"):
        return False
    scanned = _scan(state, state.pos)
    for _ in range(scanned.length):
        token = state.push("text", "", 0)
        token.content = marker
        state.delimiters.append(
            Delimiter(
                marker=ord(marker),
                length=scanned.length,
                token=len(state.tokens) - 1,
                end=-1,
                open=scanned.can_open,
                close=scanned.can_close,
            )
        )
    state.pos += scanned.length
    return True


def _reference(state: StateBlock, start: int, end: int, silent: bool) -> bool:
    """Block rule: a link reference definition, but never a footnote (``[^1]: note``)."""
    pos = state.bMarks[start] + state.tShift[start]
    if state.src.startswith("[^", pos):
        return False  # no footnote support: the line stays text, ``[^1]`` stays as written
    return reference(state, start, end, silent)


class _PlainTextMarkdownIt(MarkdownIt):
    """A parser whose links keep their destination exactly as written."""

    def normalizeLink(self, url: str) -> str:
        """No percent-encoding: the reader sees the URL the model wrote."""
        return url

    def normalizeLinkText(self, link: str) -> str:
        """No decoding either."""
        return link

    def validateLink(self, url: str) -> bool:
        """Every destination: plain-text output has no script to protect."""
        return True


def _build() -> MarkdownIt:
    """The configured parser."""
    md = _PlainTextMarkdownIt("commonmark").enable(["table", "strikethrough"])
    md.inline.ruler.before("linkify", "math", _math)
    md.inline.ruler.before("linkify", "bare_url", _bare_url)
    md.inline.ruler.at("emphasis", _emphasis)
    md.block.ruler.at("reference", _reference)
    return md


_MD = _build()
_MD_NO_HTML_BLOCKS = _build().disable("html_block")


def parse(text: str, html_blocks: bool = True) -> list[Token]:
    """Parse Markdown into markdown-it-py's flat block token stream (inline tokens as children).

    ``html_blocks=False`` reads lines that would open an HTML block as Markdown instead (inline
    HTML tags are still tokens), for the text left inside an HTML block once its tags are gone.
    """
    env: dict[str, Any] = {}
    return (_MD if html_blocks else _MD_NO_HTML_BLOCKS).parse(text, env)
