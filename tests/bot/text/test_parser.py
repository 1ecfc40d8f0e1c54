"""bot.text.parser: the token stream the renderers walk (math, bare URLs, chat emphasis rules)."""

from __future__ import annotations

import pytest

from bot.text.parser import parse


def inline(text: str) -> list[tuple[str, str]]:
    """(type, content) of the inline tokens of the first block of ``text``."""
    block = next(t for t in parse(text) if t.type == "inline")
    return [(t.type, t.content) for t in block.children or []]


def math(text: str) -> list[tuple[str, bool]]:
    """(LaTeX source, display) of every math token in ``text``."""
    found = []
    for block in parse(text):
        for tok in block.children or []:
            if tok.type == "math":
                found.append((tok.content, bool(tok.meta["display"])))
    return found


MATH = [
    ("dollars", "so $x = 2$.", [("x = 2", False)]),
    ("double dollars", "$$\nx^2\n$$", [("\nx^2\n", True)]),
    ("parens", "\\(a_1\\) and \\(b\\)", [("a_1", False), ("b", False)]),
    ("brackets", "\\[ y \\]", [(" y ", True)]),
    ("bare boxed", "is \\boxed{\\frac{1}{2}}.", [("\\boxed{\\frac{1}{2}}", False)]),
    ("currency", "costs $5 and $10", []),
    ("currency range", "$5-$10", []),
    ("spaced dollars", "$ a $", []),
    ("closing dollar before a digit", "$a$1", []),
    ("escaped dollar", "\\$x$", []),
    ("empty double dollars", "$$ $$", []),
    ("math in code span", "`$x$`", []),
    ("math in a code block", "```\n$x$\n```", []),
    ("no math across paragraphs", "$$a\n\nb$$", []),
    ("no inline math across lines", "$a\nb$", []),
    ("markup inside math", "$a_1 * b_2 * c$", [("a_1 * b_2 * c", False)]),
    ("math in emphasis", "**$x$**", [("x", False)]),
    ("unbalanced boxed", "\\boxed{x", []),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in MATH], ids=[c[0] for c in MATH])
def test_math_tokens(text: str, expected: list[tuple[str, bool]]) -> None:
    assert math(text) == expected


EMPHASIS = [
    ("plain bold", "**a** b", True),
    ("arithmetic", "2*3*4", False),
    ("powers", "x**2 + y**2", False),
    ("product of names", "a*b*c", False),
    ("spaced stars", "a * b * c", False),
    ("snake case", "snake_case_name", False),
    ("underscore words", "_a_ and __b__", True),
    ("cjk bold", "这是**加粗**文本", True),
    ("cjk bold ending in punctuation", "**注意：**这里", True),
    ("cjk bold around quotes", "这是**“加粗”**文本", True),
    ("bold then cjk", "**中文**text", True),
    ("bold glued to latin", "**bold**text", False),
    ("url", "https://a.com/__x__ and ftp://b/*c*", False),
]


@pytest.mark.parametrize(
    ("text", "emphasised"), [c[1:] for c in EMPHASIS], ids=[c[0] for c in EMPHASIS]
)
def test_emphasis(text: str, emphasised: bool) -> None:
    kinds = {kind for kind, _ in inline(text)}
    assert bool(kinds & {"em_open", "strong_open"}) is emphasised


def test_bare_url_stays_one_text_run() -> None:
    assert inline("go to https://a.com/__x__ now") == [("text", "go to https://a.com/__x__ now")]


def test_url_stops_at_cjk_punctuation_and_trailing_marks() -> None:
    assert inline("见 **https://a.com/a_b_**，好") == [
        ("text", "见 "),
        ("strong_open", ""),
        ("text", "https://a.com/a_b_"),
        ("strong_close", ""),
        ("text", "，好"),
    ]


def test_link_inside_label_still_parses() -> None:
    kinds = [kind for kind, _ in inline("[see https://a.com](https://b.com)")]
    assert kinds == ["link_open", "text", "link_close"]


@pytest.mark.parametrize(
    "href", ["https://baike.baidu.com/item/中文", "https://x.com/a b", "javascript:alert(1)"]
)
def test_link_destination_kept_as_written(href: str) -> None:
    block = next(t for t in parse(f"[x](<{href}>)") if t.type == "inline")
    link = next(t for t in block.children or [] if t.type == "link_open")
    assert link.attrGet("href") == href


def test_tables_and_strikethrough_enabled() -> None:
    kinds = [t.type for t in parse("| a |\n|---|\n| ~~b~~ |")]
    assert "table_open" in kinds
    cell = [t for t in parse("| a |\n|---|\n| ~~b~~ |") if t.type == "inline"][-1]
    assert [t.type for t in cell.children or []] == ["s_open", "text", "s_close"]
