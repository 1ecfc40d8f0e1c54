"""Content safety: operators' word lists, matched with Aho-Corasick after normalising tricks.

Lists come from `MIMOCHAT_SAFETY_LISTS` (`action:path,...`; one term a line, `#` comments) and
are reloaded when a file changes (its mtime or size, looked at once a second at most). Text and
terms are normalised alike, character by character: NFKC (full width to half width), case
folded, accents dropped, and everything that is not a letter or digit removed — so "ｂＡＤ",
"b a d", "b.a.d" and "b\u200bad" all read "bad". A term that starts or ends with an ASCII
letter or digit must also start or end a word in the original text ("bad" is not in "badge");
terms in scripts without spaces (Chinese) match anywhere.

Actions: `refuse` lists check questions (and withhold answers that carry them); `mask` lists
replace the term in answers with ＊; `withhold` lists replace the whole answer with a notice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

import ahocorasick

log = logging.getLogger(__name__)

MASK = "＊"
RELOAD_EVERY = 1.0  # seconds between looks at the lists' files
# The strongest action wins when one term is on several lists.
_RANK = {"mask": 1, "withhold": 2, "refuse": 3}


@lru_cache(maxsize=65536)
def fold(ch: str) -> str:
    """One character as matching sees it: NFKC, case folded, accents off, letters/digits only."""
    wide = unicodedata.normalize("NFKC", ch).casefold()
    return "".join(c for c in unicodedata.normalize("NFKD", wide) if c.isalnum())


def normalise(text: str) -> tuple[str, list[int]]:
    """The folded text and, for each of its characters, the index it came from in `text`."""
    chars: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        folded = fold(ch)
        if folded:
            chars.append(folded)
            origin.extend([i] * len(folded))
    return "".join(chars), origin


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


@dataclass(frozen=True)
class Hit:
    """One listed term found in a text: where (original indices, inclusive) and which rule."""

    start: int
    end: int
    term: str
    action: str
    source: str  # the list's file name

    @property
    def rule(self) -> str:
        """The rule that fired, for metrics-free logs and the console: action:list:term."""
        return f"{self.action}:{self.source}:{self.term}"


@dataclass
class Lists:
    """The loaded terms: one automaton for questions (refuse), one for answers (every list)."""

    questions: ahocorasick.Automaton | None = None
    answers: ahocorasick.Automaton | None = None
    prefixes: frozenset[str] = frozenset()  # proper prefixes of answer terms (stream hold-back)
    longest: int = 0
    count: int = 0
    signature: tuple[tuple[str, float, int], ...] = ()
    terms: dict[str, tuple[str, str, str]] = field(default_factory=dict)


def parse_spec(spec: str) -> list[tuple[str, str]]:
    """(action, path) pairs of MIMOCHAT_SAFETY_LISTS."""
    pairs = []
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        action, _, path = pair.partition(":")
        pairs.append((action.strip(), path.strip()))
    return pairs


def _signature(pairs: list[tuple[str, str]]) -> tuple[tuple[str, float, int], ...]:
    out = []
    for _action, path in pairs:
        try:
            st = os.stat(path)
            out.append((path, st.st_mtime, st.st_size))
        except OSError:
            out.append((path, -1.0, -1))
    return tuple(out)


def build(pairs: list[tuple[str, str]], previous: Lists | None = None) -> Lists:
    """Read the files and build the automatons; an unreadable file keeps its previous terms."""
    terms: dict[str, tuple[str, str, str]] = {}  # folded term -> (action, source, term)
    for action, path in pairs:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            log.error("safety list %s unreadable (%s): its previous terms stay", path, exc)
            name = os.path.basename(path) or path
            kept = previous.terms.values() if previous else []
            lines = [term for _action, source, term in kept if source == name]
        for line in lines:
            term = line.strip()
            folded = "".join(fold(c) for c in term)
            if not folded or term.startswith("#"):
                continue
            known = terms.get(folded)
            if known is None or _RANK[action] > _RANK[known[0]]:
                terms[folded] = (action, os.path.basename(path) or path, term)
    lists = Lists(signature=_signature(pairs), count=len(terms), terms=terms)
    questions = [(k, v) for k, v in terms.items() if v[0] == "refuse"]
    lists.questions = _automaton(questions)
    lists.answers = _automaton(list(terms.items()))
    lists.prefixes = frozenset(k[:n] for k in terms for n in range(1, len(k)))
    lists.longest = max((len(k) for k in terms), default=0)
    return lists


def _automaton(entries: list[tuple[str, tuple[str, str, str]]]) -> ahocorasick.Automaton | None:
    if not entries:
        return None
    automaton = ahocorasick.Automaton()
    for folded, value in entries:
        automaton.add_word(folded, (folded, *value))
    automaton.make_automaton()
    return automaton


class Registry:
    """The lists of one MIMOCHAT_SAFETY_LISTS value, rebuilt when a file changes."""

    def __init__(self, spec: str) -> None:
        self.pairs = parse_spec(spec)
        self.lists = build(self.pairs)
        self.checked = time.monotonic()
        self._lock = threading.Lock()

    def current(self) -> Lists:
        """The lists now, re-read first if a file changed since the last look."""
        if not self.pairs or time.monotonic() - self.checked < RELOAD_EVERY:
            return self.lists
        with self._lock:
            self.checked = time.monotonic()
            if _signature(self.pairs) != self.lists.signature:
                self.lists = build(self.pairs, self.lists)
                log.info("safety lists reloaded: %d terms", self.lists.count)
        return self.lists


_registries: dict[str, Registry] = {}


def lists_for(spec: str) -> Lists:
    """The current lists of a MIMOCHAT_SAFETY_LISTS value (built once per process)."""
    registry = _registries.get(spec)
    if registry is None:
        registry = _registries[spec] = Registry(spec)
    return registry.current()


def find(text: str, automaton: ahocorasick.Automaton | None) -> list[Hit]:
    """Every listed term in `text`, spacing and width tricks included."""
    if automaton is None or not text:
        return []
    folded, origin = normalise(text)
    hits = []
    for end, (term_folded, action, source, term) in automaton.iter(folded):
        begin = end - len(term_folded) + 1
        start, stop = origin[begin], origin[end]
        if _inside_word(text, start, stop, term_folded):
            continue  # "bad" in "isbad" or "badge"
        hits.append(Hit(start, stop, term, action, source))
    return hits


def _inside_word(text: str, start: int, stop: int, term: str) -> bool:
    """True when a term's ASCII letter/digit end runs on into the text's word."""
    before = fold(text[start - 1])[-1:] if start > 0 else ""
    after = fold(text[stop + 1])[:1] if stop + 1 < len(text) else ""
    return (_ascii_alnum(term[0]) and _ascii_alnum(before)) or (
        _ascii_alnum(term[-1]) and _ascii_alnum(after)
    )


def mask(text: str, hits: list[Hit]) -> str:
    """`text` with each hit's characters replaced by ＊."""
    chars = list(text)
    for hit in hits:
        for i in range(hit.start, hit.end + 1):
            chars[i] = MASK
    return "".join(chars)


def held_back(text: str, lists: Lists) -> int:
    """Where the text's end could still grow into a listed term (len(text) when it cannot).

    A streamed frame shows only `text[:held_back(text)]`: "…b" is held while "bad" is listed.
    """
    if not lists.prefixes or not text:
        return len(text)
    folded, origin = normalise(text[-4 * lists.longest :])
    offset = max(0, len(text) - 4 * lists.longest)
    for size in range(min(lists.longest - 1, len(folded)), 0, -1):
        if folded[-size:] in lists.prefixes:
            return offset + origin[len(folded) - size]
    return len(text)
