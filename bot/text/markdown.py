"""Markdown + LaTeX model output as WeChat plain text, rendered from markdown-it-py's tokens.

:func:`to_wechat_text` parses with :mod:`bot.text.parser` and walks the token stream.  Rules
chosen here (tests pin them):

- Headings: H1/H2 (ATX or setext) become ``【Title】``, H3-H6 plain text.
- Bullets become ``• item``; numbered items keep their number as written (``1. item``); a nested
  list is indented two spaces per level, other continuation lines line up under the item text;
  task boxes ``[ ]``/``[x]`` become ``☐``/``☑``.
- Blockquotes become ``｜text`` (one ``｜`` per level); rules become :data:`HR_LINE`.
- Tables: one line per row, cells joined by `` | ``, the ``---`` delimiter row dropped.
- Links ``[text](url)`` become ``text (url)`` (just ``url`` when the text is the url or empty);
  images become ``[图片: alt] url``.
- Fenced code: fence lines dropped, a language tag becomes a ``[python]`` line, the content is
  kept byte for byte (no list padding, trailing spaces kept); indented code keeps its indent.
- Math (see :mod:`bot.text.parser`) is converted by :func:`bot.text.latex.latex_to_text`;
  ``\\boxed{x}`` becomes ``【x】``.
- HTML: ``<br>`` is a line break, ``<hr>`` a rule, comments and common formatting tags are
  dropped, anything else (``List<T>``) stays as written; the text inside an HTML block is read as
  Markdown (``<div>\n**bold**\n</div>`` shows ``bold``), except in ``<pre>``.
- Blank lines between blocks follow the source (a paragraph right above a list or a code block
  stays right above it); runs of blank lines collapse to one; trailing spaces and
  leading/trailing blank lines go.
"""

from __future__ import annotations

import html
import re
from typing import NamedTuple

from markdown_it.token import Token

from bot.text.latex import latex_to_text
from bot.text.parser import parse

__all__ = ["HR_LINE", "to_wechat_text"]

HR_LINE = "————————"

_LANG = re.compile(r"[\w+#.-]+")
_TASK = re.compile(r"^\[([ xX])\][ \t]+")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_HR_TAG = re.compile(r"<hr\s*/?>", re.IGNORECASE)
_RAW_HTML = re.compile(r"<(?:pre|script|style|textarea)\b", re.IGNORECASE)
_TAG = re.compile(
    r"</?(?:a|abbr|b|big|blockquote|center|cite|code|del|details|div|em|font|h[1-6]|i|img|ins|"
    r"kbd|li|mark|ol|p|pre|q|s|small|span|strike|strong|sub|summary|sup|table|tbody|td|th|"
    r"thead|tr|tt|u|ul|var)\b[^<>]*>",
    re.IGNORECASE,
)


class _Line(NamedTuple):
    """One output line and how the containers around it may change it."""

    text: str
    code: bool = False  # verbatim: no padding, trailing spaces kept, never a blank to collapse
    listed: bool = False  # made by a list: an enclosing item indents it two spaces


_BLANK = _Line("")

# --------------------------------------------------------------------------------- inline


def _html_inline(tag: str) -> str:
    """One inline HTML tag or comment as text."""
    if tag.startswith("<!--"):
        return ""
    if _BR.fullmatch(tag):
        return "\n"
    if _HR_TAG.fullmatch(tag):
        return f"\n{HR_LINE}\n"
    return "" if _TAG.fullmatch(tag) else tag


def _drop_comments(raw: str) -> str:
    """Remove ``<!-- … -->`` comments (an unclosed one stays) in one linear pass."""
    out: list[str] = []
    i = 0
    while (j := raw.find("<!--", i)) >= 0 and (k := raw.find("-->", j + 4)) >= 0:
        out.append(raw[i:j])
        i = k + 3
    out.append(raw[i:])
    return "".join(out)


def _strip_tags(raw: str) -> str:
    """An HTML block's text: comments and the tags a reader needs no markup for dropped."""
    s = _drop_comments(raw)
    s = _BR.sub("\n", s)
    s = _HR_TAG.sub(f"\n{HR_LINE}\n", s)
    return _TAG.sub("", s)


def _link(label: str, href: str, autolink: bool) -> str:
    """A link as ``text (url)``, or just one of them when the other adds nothing."""
    if autolink or not href:
        return label
    if not label.strip() or label.strip() == href:
        return href
    return f"{label} ({href})"


def _inline(children: list[Token] | None) -> str:
    """Render an inline token list (a paragraph, heading or cell) as text."""
    parts: list[str] = []
    links: list[tuple[int, str, bool]] = []
    for tok in children or ():
        kind = tok.type
        if kind in ("text", "text_special", "code_inline"):
            parts.append(tok.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind == "math":
            parts.append(latex_to_text(tok.content, bool(tok.meta.get("display"))))
        elif kind == "link_open":
            links.append((len(parts), str(tok.attrGet("href") or ""), tok.markup == "autolink"))
        elif kind == "link_close" and links:
            start, href, auto = links.pop()
            label = "".join(parts[start:])
            del parts[start:]
            parts.append(_link(label, href, auto))
        elif kind == "image":
            alt = _inline(tok.children).strip()
            src = str(tok.attrGet("src") or "")
            label = f"[图片: {alt}]" if alt else "[图片]"
            parts.append(f"{label} {src}" if src else label)
        elif kind == "html_inline":
            parts.append(_html_inline(tok.content))
        # emphasis and strikethrough open/close tokens add nothing
    return "".join(parts)


# ---------------------------------------------------------------------------------- blocks

_Rendered = tuple[list[_Line], int, int | None]  # lines, next token index, last source line


def _text_lines(text: str) -> list[_Line]:
    """Plain lines of rendered inline text."""
    return [_Line(s) for s in text.split("\n")]


def _sequence(tokens: list[Token], i: int) -> _Rendered:
    """Render sibling blocks from ``tokens[i]`` up to their parent's closing token."""
    out: list[_Line] = []
    prev_end: int | None = None
    gap = False
    while i < len(tokens) and tokens[i].nesting != -1:
        tok = tokens[i]
        lines, i, end = _block(tokens, i)
        if tok.map and prev_end is not None and tok.map[0] > prev_end:
            gap = True  # the source has a blank line before this block
        if end is not None:
            prev_end = end
        if lines:
            if gap and out:
                out.append(_BLANK)
            gap = False
            out.extend(lines)
    return out, i, prev_end


def _skip(tokens: list[Token], i: int) -> int:
    """Index after the block that starts at ``tokens[i]`` (its closing token included)."""
    depth = 0
    while i < len(tokens):
        depth += tokens[i].nesting
        i += 1
        if depth <= 0:
            break
    return i


def _end(tok: Token) -> int | None:
    """Source line after a leaf block."""
    return tok.map[1] if tok.map else None


def _block(tokens: list[Token], i: int) -> _Rendered:
    """Render the block that starts at ``tokens[i]``."""
    tok = tokens[i]
    kind = tok.type
    if kind == "paragraph_open":
        return _text_lines(_inline(tokens[i + 1].children)), i + 3, _end(tok)
    if kind == "heading_open":
        text = _inline(tokens[i + 1].children).strip()
        if text and tok.tag in ("h1", "h2"):
            text = f"【{text}】"
        return _text_lines(text), i + 3, _end(tok)
    if kind == "fence":
        return _fence(tok), i + 1, _end(tok)
    if kind == "code_block":
        body = tok.content.rstrip("\n").split("\n")
        return [_Line("    " + s if s else s, code=True) for s in body], i + 1, _end(tok)
    if kind == "hr":
        return [_Line(HR_LINE)], i + 1, _end(tok)
    if kind == "html_block":
        return _html_block(tok.content), i + 1, _end(tok)
    if kind == "blockquote_open":
        inner, i, end = _sequence(tokens, i + 1)
        return [_Line("｜" + ln.text, ln.code) for ln in inner], i + 1, end
    if kind in ("bullet_list_open", "ordered_list_open"):
        return _list(tokens, i)
    if kind == "table_open":
        return _table(tokens, i)
    return [], _skip(tokens, i), _end(tok)


def _html_block(raw: str) -> list[_Line]:
    """An HTML block: its tags dropped, the text left rendered as Markdown (models mix them)."""
    text = _strip_tags(raw)
    if not text.strip():
        return []
    if _RAW_HTML.match(raw):  # preformatted content (or a script) stays as written
        return [_Line(s, code=True) for s in html.unescape(text).strip("\n").split("\n")]
    # once: the re-parse opens no HTML block, so it cannot come back here
    lines, _, _ = _sequence(parse(text, html_blocks=False), 0)
    return lines


def _fence(tok: Token) -> list[_Line]:
    """A fenced code block: an optional ``[lang]`` line, then the code as written."""
    body = tok.content[:-1] if tok.content.endswith("\n") else tok.content
    if not body.strip():
        return []
    lang = _LANG.match(tok.info.strip())
    label = [_Line(f"[{lang.group(0)}]", code=True)] if lang else []
    return label + [_Line(s, code=True) for s in body.split("\n")]


def _list(tokens: list[Token], i: int) -> _Rendered:
    """A bullet or ordered list, one item after another."""
    ordered = tokens[i].type == "ordered_list_open"
    i += 1
    out: list[_Line] = []
    prev_end: int | None = None
    while i < len(tokens) and tokens[i].type == "list_item_open":
        item = tokens[i]
        marker = f"{item.info}{item.markup} " if ordered else "• "
        inner, i, end = _sequence(tokens, i + 1)
        i += 1  # list_item_close
        if out and item.map and prev_end is not None and item.map[0] > prev_end:
            out.append(_BLANK)
        prev_end = end if end is not None else _end(item)
        out.extend(_item(marker, inner))
    return out, i + 1, prev_end


def _item(marker: str, inner: list[_Line]) -> list[_Line]:
    """One list item: the marker before its first line, continuation lines indented."""
    if not inner:
        return [_Line(marker.rstrip(), listed=True)]
    first = inner[0]
    text = first.text
    if not first.code and not first.listed:
        text = _TASK.sub(lambda m: "☐ " if m.group(1) == " " else "☑ ", text)
    out = [_Line(marker + text, first.code, True)]
    pad = " " * len(marker)
    for ln in inner[1:]:
        if ln.code or not ln.text:
            out.append(_Line(ln.text, ln.code, True))
        else:
            out.append(_Line(("  " if ln.listed else pad) + ln.text, False, True))
    return out


def _table(tokens: list[Token], i: int) -> _Rendered:
    """A table: one line per row, cells joined by `` | ``."""
    end = _end(tokens[i])
    rows: list[_Line] = []
    cells: list[str] = []
    i += 1
    while i < len(tokens) and tokens[i].type != "table_close":
        tok = tokens[i]
        if tok.type == "tr_open":
            cells = []
        elif tok.type == "inline":
            cells.append(_inline(tok.children).replace("\n", " ").strip())
        elif tok.type == "tr_close":
            while cells and not cells[-1]:
                cells.pop()  # cells the parser added to a short row
            rows.append(_Line(" | ".join(cells)))
        i += 1
    return rows, i + 1, end


# ---------------------------------------------------------------------------------- output


def _finish(lines: list[_Line]) -> str:
    """Join lines: trailing spaces stripped, blank runs collapsed, no blank lines at the ends."""
    out: list[str] = []
    blank = False
    for ln in lines:
        text = ln.text if ln.code else ln.text.rstrip()
        if not text and not ln.code:
            blank = bool(out)
            continue
        if blank:
            out.append("")
            blank = False
        out.append(text)
    return "\n".join(out).rstrip("\n")


def _cleanup(text: str) -> str:
    """Strip trailing spaces, collapse runs of blank lines, trim blank lines at both ends."""
    return _finish(_text_lines(text.replace("\r\n", "\n").replace("\r", "\n")))


def _render_wechat(markdown: str) -> str:
    """The conversion behind :func:`to_wechat_text` (may raise on a bug; the wrapper may not)."""
    lines, _, _ = _sequence(parse(markdown), 0)
    return _finish(lines)


def to_wechat_text(markdown: str) -> str:
    """Render Markdown + LaTeX model output as readable plain text for a WeChat text bubble."""
    if not isinstance(markdown, str):
        markdown = "" if markdown is None else str(markdown)
    # U+FFFD only marks bytes the tokenizer could not decode (a cut multi-byte character), and
    # the parser would turn a NUL into one: neither carries anything a reader could use.
    markdown = markdown.replace("\ufffd", "").replace("\x00", "")
    try:
        return _render_wechat(markdown)
    except Exception:  # never fail a delivery over formatting: fall back to the raw text
        return _cleanup(markdown)
