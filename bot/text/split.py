"""Byte-limited splitting of chat text: UTF-8 sizes, natural break points, fences, part numbers.

The pipeline a channel uses is ``number_parts(split_text(text, limit), limit)``.  A fenced code
block is kept whole when it fits, and split by lines with its fence re-opened when it does not.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

__all__ = ["MIN_LIMIT_BYTES", "number_parts", "split_and_number", "split_text", "utf8_len"]

MIN_LIMIT_BYTES = 4  # one code point takes up to 4 UTF-8 bytes


def utf8_len(s: str) -> int:
    """Length of ``s`` in UTF-8 bytes (a lone surrogate counts as 3 bytes)."""
    return len(s.encode("utf-8", "surrogatepass"))


def _cp_len(ch: str) -> int:
    """UTF-8 length of one code point."""
    o = ord(ch)
    return 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4


# ------------------------------------------------------------------------------ fenced code

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


class _Segment(NamedTuple):
    """A run of lines: prose, or one fenced code block (fences included in ``raw``)."""

    code: bool
    raw: str
    fence: str = ""
    info: str = ""
    body: str = ""
    indent: int = 0
    closer: str = ""


def _segments(text: str) -> list[_Segment]:
    """Cut text into prose and fenced-code segments; ``"\\n".join(raw)`` gives the text back."""
    lines = text.split("\n")
    segs: list[_Segment] = []
    buf: list[str] = []
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
            buf.append(lines[i])
            i += 1
            continue
        fence = m["fence"]
        close = -1
        for j in range(i + 1, len(lines)):
            s = lines[j].strip()
            if len(s) >= len(fence) and s == fence[0] * len(s):
                close = j
                break
        if buf:
            segs.append(_Segment(False, "\n".join(buf)))
            buf = []
        end = close if close >= 0 else len(lines)
        raw_end = close + 1 if close >= 0 else len(lines)
        segs.append(
            _Segment(
                code=True,
                raw="\n".join(lines[i:raw_end]),
                fence=fence,
                info=m["info"].strip(),
                body="\n".join(lines[i + 1 : end]),
                indent=len(m["indent"].expandtabs(4)),
                closer=lines[close] if close >= 0 else "",
            )
        )
        i = raw_end
    if buf or not segs:
        segs.append(_Segment(False, "\n".join(buf)))
    return segs


# ------------------------------------------------------------------------------------ split

_PARA_RE = re.compile(r"\n(?:[ \t]*\n)+")
_LINE_RE = re.compile(r"\n")
_SENT_RE = re.compile(r"[.!?;…]+[\"'”’)\]」』）]*\s+|[。！？；]+[”’」』）\"']*[ \t]*|\n")
_SOFT_RE = re.compile(r"\s+|[，、,]")
_LEVELS = (_PARA_RE, _LINE_RE, _SENT_RE, _SOFT_RE)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


def _tokens(s: str, rx: re.Pattern[str]) -> list[str]:
    """Cut ``s`` after every match of ``rx`` (the separator stays with the piece before it)."""
    out: list[str] = []
    start = 0
    for m in rx.finditer(s):
        if m.end() > start:
            out.append(s[start : m.end()])
            start = m.end()
    if start < len(s):
        out.append(s[start:])
    return out


def _is_ri(ch: str) -> bool:
    """True for a regional indicator (half of a flag emoji)."""
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _cut_ok(s: str, k: int) -> bool:
    """True when a cut between ``s[k-1]`` and ``s[k]`` keeps a character sequence together."""
    a, b = s[k - 1], s[k]
    oa, ob = ord(a), ord(b)
    if unicodedata.category(b).startswith("M") or ob == 0x200D or oa == 0x200D:
        return False
    if 0xFE00 <= ob <= 0xFE0F or 0x1F3FB <= ob <= 0x1F3FF or 0xE0020 <= ob <= 0xE01EF:
        return False
    if 0xD800 <= oa <= 0xDBFF and 0xDC00 <= ob <= 0xDFFF:
        return False
    if _is_ri(a) and _is_ri(b):
        run = 0
        while k - 1 - run >= 0 and _is_ri(s[k - 1 - run]):
            run += 1
        return run % 2 == 0
    return True


def _hard_split(s: str, limit: int) -> list[str]:
    """Cut ``s`` into pieces of at most ``limit`` bytes, at code point (and cluster) boundaries."""
    pieces: list[str] = []
    start = 0
    size = 0
    k = 0
    while k < len(s):
        b = _cp_len(s[k])
        if size + b > limit and k > start:
            cut = k
            back = 0
            while cut > start + 1 and not _cut_ok(s, cut) and back < 32:
                cut -= 1
                back += 1
            if not _cut_ok(s, cut):
                cut = k
            pieces.append(s[start:cut])
            start = cut
            size = utf8_len(s[start:k])
            continue
        size += b
        k += 1
    if start < len(s):
        pieces.append(s[start:])
    return pieces


def _split_levels(s: str, limit: int, level: int) -> list[str]:
    """Split ``s`` at the coarsest boundaries that fit (paragraph, line, sentence, space, cut)."""
    if utf8_len(s.rstrip()) <= limit:
        return [s]
    if level >= len(_LEVELS):
        return _hard_split(s, limit)
    toks = _tokens(s, _LEVELS[level])
    if len(toks) <= 1:
        return _split_levels(s, limit, level + 1)
    pieces: list[str] = []
    cur = ""
    for t in toks:
        if utf8_len((cur + t).rstrip()) <= limit:
            cur += t
        elif utf8_len(t.rstrip()) <= limit:
            if cur.strip():
                pieces.append(cur)
            cur = t
        else:  # t must be cut anyway: let its first piece fill up the current one
            sub = _split_levels(cur + t, limit, level + 1)
            pieces.extend(sub[:-1])
            cur = sub[-1] if sub else ""
    if cur.strip():
        pieces.append(cur)
    return pieces


def _tidy(part: str) -> str:
    """Drop leading blank lines and trailing whitespace of a part."""
    return _LEADING_BLANK_LINES.sub("", part).rstrip()


def _split_code(seg: _Segment, limit: int) -> list[str] | None:
    """Split an oversized fenced block by lines, re-opening the fence in every part."""
    opener = seg.raw.split("\n", 1)[0].strip()
    closer = seg.closer.strip() or seg.fence  # an unclosed block gets closed in every part
    budget = limit - utf8_len(opener) - utf8_len(closer) - 2
    if budget < MIN_LIMIT_BYTES:
        return None
    chunks: list[list[str]] = []
    cur: list[str] = []
    size = -1
    for line in seg.body.split("\n"):
        b = utf8_len(line)
        if b > budget:
            if cur:
                chunks.append(cur)
            cur, size = [], -1
            pieces = (p.rstrip() for p in _split_levels(line, budget, len(_LEVELS) - 1))
            chunks.extend([p] for p in pieces if p)
            continue
        if size + 1 + b > budget:
            chunks.append(cur)
            cur, size = [], -1
        cur.append(line)
        size += 1 + b
    if cur:
        chunks.append(cur)
    body_chunks = ("\n".join(c) for c in chunks)
    return [f"{opener}\n{body}\n{closer}" for body in body_chunks if body.strip()]


def split_text(text: str, limit_bytes: int = 2000) -> list[str]:
    """Split text into parts of at most ``limit_bytes`` UTF-8 bytes at the most natural breaks."""
    if limit_bytes < MIN_LIMIT_BYTES:
        raise ValueError(f"limit_bytes must be at least {MIN_LIMIT_BYTES}, got {limit_bytes}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return []
    segs = _segments(text)
    tokens: list[tuple[_Segment | None, str]] = []
    for k, segment in enumerate(segs):
        sep = "\n" if k < len(segs) - 1 else ""
        if segment.code:
            tokens.append((segment, segment.raw + sep))
        else:
            tokens.extend((None, t) for t in _tokens(segment.raw + sep, _PARA_RE))
    parts: list[str] = []

    def flush(piece: str) -> None:
        tidy = _tidy(piece)
        if tidy:
            parts.append(tidy)

    cur = ""
    for seg, tok in tokens:
        if utf8_len((cur + tok).rstrip()) <= limit_bytes:
            cur += tok
            continue
        if utf8_len(tok.rstrip()) <= limit_bytes:
            flush(cur)
            cur = tok
            continue
        chunks = _split_code(seg, limit_bytes) if seg is not None else None
        if chunks is not None:
            flush(cur)
            cur = ""
            parts.extend(chunks)
            continue
        # an oversized paragraph is cut anyway: its first piece fills up the current part
        pieces = _split_levels(cur + tok, limit_bytes, 1)
        for piece in pieces[:-1]:
            flush(piece)
        cur = pieces[-1] if pieces else ""
    flush(cur)
    return parts


def _prefix_len(count: int) -> int:
    """Bytes taken by the widest ``(i/n) `` prefix for ``count`` parts."""
    return utf8_len(f"({count}/{count}) ")


def _numbered(parts: list[str]) -> list[str]:
    """Prefix each part with ``(i/n) ``."""
    return [f"({i}/{len(parts)}) {p}" for i, p in enumerate(parts, 1)]


def _fit_numbered(text: str, parts: list[str], limit_bytes: int) -> list[str]:
    """Re-split ``text`` until the ``(i/n) `` prefixes fit, then number the parts."""
    count = len(parts)
    while True:
        reserve = _prefix_len(count)
        if limit_bytes - reserve < MIN_LIMIT_BYTES:
            raise ValueError(f"limit_bytes {limit_bytes} leaves no room after the part numbers")
        parts = split_text(text, limit_bytes - reserve)
        if _prefix_len(len(parts)) <= reserve:
            return _numbered(parts) if len(parts) > 1 else parts
        count = len(parts)


def number_parts(parts: list[str], limit_bytes: int) -> list[str]:
    """Prefix parts with ``(i/n) `` when there are several, re-splitting so each still fits."""
    # Parts that fit with their prefix stay as they are; otherwise they are joined with blank
    # lines and split again to the smaller limit, so a cut part's tail is not sent on its own.
    parts = [p for p in parts if p.strip()]
    if len(parts) <= 1:
        return parts
    reserve = _prefix_len(len(parts))
    if all(utf8_len(p) + reserve <= limit_bytes for p in parts):
        return _numbered(parts)
    return _fit_numbered("\n\n".join(parts), parts, limit_bytes)


def split_and_number(text: str, limit_bytes: int = 2000) -> list[str]:
    """Split text for sending and number the parts, packing the text to the numbered limit."""
    parts = split_text(text, limit_bytes)
    if len(parts) <= 1:
        return parts
    return _fit_numbered(text, parts, limit_bytes)
