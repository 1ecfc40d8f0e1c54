"""bot.text.formatting: Markdown/LaTeX to WeChat text, XML cleaning, byte-limited splitting."""

from __future__ import annotations

import random
import re
import time
import unicodedata
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import pytest

from bot.text.formatting import (
    HR_LINE,
    _render_wechat,
    _Stash,
    clean_xml_text,
    number_parts,
    split_and_number,
    split_text,
    to_wechat_text,
    utf8_len,
)

# ------------------------------------------------------------------------- to_wechat_text

CASES = [
    # headings
    ("h1", "# Title", "【Title】"),
    ("h2 closing hashes", "## **Bold** heading ##", "【Bold heading】"),
    ("h3 plain", "### Step 1: factor", "Step 1: factor"),
    ("setext h1", "Title\n=====", "【Title】"),
    ("hashtag is not a heading", "#hashtag and C# code", "#hashtag and C# code"),
    # emphasis
    ("bold italic strike", "**bold**, *it*, __b__, _i_, ~~gone~~", "bold, it, b, i, gone"),
    ("nested emphasis", "***both*** and **a *b* c**", "both and a b c"),
    ("snake_case untouched", "set snake_case_name = max_len_2", "set snake_case_name = max_len_2"),
    ("arithmetic stars untouched", "2*3*4 and 5 * 6 and a*b", "2*3*4 and 5 * 6 and a*b"),
    ("chinese bold", "这是**加粗**文本，*斜体*也行", "这是加粗文本，斜体也行"),
    ("escaped markers", r"a \*literal\* and \_x\_", "a *literal* and _x_"),
    # code
    ("inline code", "run `pip install -U x_y` now", "run pip install -U x_y now"),
    ("inline code keeps markup", "`$x$ and **s**`", "$x$ and **s**"),
    ("double backtick code", "``a`b``", "a`b"),
    (
        "fenced code verbatim",
        "Code:\n```python\n# not a heading\ndef f(x):\n    return x**2 * _y_  \n```\nDone",
        "Code:\n[python]\n# not a heading\ndef f(x):\n    return x**2 * _y_  \nDone",
    ),
    (
        "fence keeps math and lists",
        "```\n- item\n$\\frac{a}{b}$\n\n\n\n> q\n```",
        "- item\n$\\frac{a}{b}$\n\n\n\n> q",
    ),
    ("tilde fence", "~~~\nx = 1\n~~~", "x = 1"),
    # lists
    ("nested bullets", "- a\n  - b\n    - c\n- d", "• a\n  • b\n    • c\n• d"),
    ("star and plus bullets", "* star\n+ plus", "• star\n• plus"),
    ("four-space nesting", "- a\n    - b\n        - c", "• a\n  • b\n    • c"),
    ("numbered list", "1. one\n2. **two**\n   - sub", "1. one\n2. two\n  • sub"),
    ("task list", "- [ ] todo\n- [x] done", "• ☐ todo\n• ☑ done"),
    # blocks
    ("table", "| a | b |\n|---|:-:|\n| 1 | **2** |", "a | b\n1 | 2"),
    ("table without outer pipes", "x | y\n--|--\n3 | 4", "x | y\n3 | 4"),
    ("blockquote", "> quote\n>> deeper\n> - item", "｜quote\n｜｜deeper\n｜• item"),
    ("horizontal rules", "a\n\n---\n\n* * *\n\nb", f"a\n\n{HR_LINE}\n\n{HR_LINE}\n\nb"),
    ("blank lines collapse", "line   \n\n\n\n\nnext\t", "line\n\nnext"),
    # links, images, html
    ("link", "see [the docs](https://x.com/a_b_c)", "see the docs (https://x.com/a_b_c)"),
    ("link text is url", "[https://a.com](https://a.com)", "https://a.com"),
    (
        "link with parens",
        "[wiki](https://en.wikipedia.org/wiki/Foo_(bar))",
        "wiki (https://en.wikipedia.org/wiki/Foo_(bar))",
    ),
    ("bare url kept", "go to https://a.com/__x__ now", "go to https://a.com/__x__ now"),
    ("image", "![a cat](http://x/c.png)", "[图片: a cat] http://x/c.png"),
    ("image without alt", "![](http://x/c.png)", "[图片] http://x/c.png"),
    ("html", "a<br>b <b>bold</b><br/>c &amp; d", "a\nb bold\nc & d"),
    # LaTeX
    ("frac", "$\\frac{a}{b}$", "a/b"),
    ("frac multi-char", "$\\frac{a+b}{c+d}$", "(a+b)/(c+d)"),
    ("nested frac sqrt", "$\\frac{\\sqrt{2}}{2}$", "√2/2"),
    ("frac of frac", "$\\frac{\\frac{1}{2}}{3}$", "(1/2)/3"),
    ("frac short args", "$\\frac12 + \\frac{-1}{2} + \\frac{1}{2x}$", "1/2 + -1/2 + 1/(2x)"),
    ("derivative", "$\\frac{dy}{dx}$", "dy/dx"),
    ("partial derivative", "$\\frac{\\partial f}{\\partial x}$", "∂f/∂x"),
    ("letter-like symbols eat a space", "$\\pi r^2 = \\alpha + \\beta$", "πr² = α + β"),
    ("sqrt", "$\\sqrt{x} + \\sqrt{x+1} + \\sqrt[3]{8}$", "√x + √(x+1) + ∛8"),
    ("superscripts", "$x^2 + x^{10} + 10^{-3} + x^{n+1}$", "x² + x¹⁰ + 10⁻³ + xⁿ⁺¹"),
    ("superscript fallback", "$e^{i\\pi} + a^b$", "e^(iπ) + a^b"),
    ("subscripts", "$a_1 + a_{n+1} + y_{ij} + x_{abc}$", "a₁ + aₙ₊₁ + yᵢⱼ + x_(abc)"),
    ("operators", "$2 \\times 3 \\cdot 4 \\div 5 \\pm 1$", "2 × 3 · 4 ÷ 5 ± 1"),
    ("relations", "$a \\leq b \\ge c \\neq d \\approx e$", "a ≤ b ≥ c ≠ d ≈ e"),
    ("greek", "$\\alpha + \\beta = \\Gamma(\\pi)$", "α + β = Γ(π)"),
    ("big operators", "$\\sum_{i=1}^{n} i$, $\\int_0^1$, $\\prod$", "∑ᵢ₌₁ⁿ i, ∫₀¹, ∏"),
    ("arrows and sets", "$x \\to \\infty \\Rightarrow y \\in A$", "x → ∞ ⇒ y ∈ A"),
    ("dots", "$1, 2, \\ldots, n$ and $a \\cdots b$", "1, 2, …, n and a … b"),
    ("boxed bare", "The answer is \\boxed{42}.", "The answer is 【42】."),
    ("boxed in math", "$\\boxed{\\frac{1}{2}}$", "【1/2】"),
    ("text and fonts", "$\\text{speed} = \\mathbf{v}, \\mathrm{d}x$", "speed = v, dx"),
    ("left right", "$\\left( \\frac{1}{2} \\right)^2$", "(1/2)²"),
    ("spacing commands", "$a\\,b\\;c\\quad d$", "a b c d"),
    ("degrees and functions", "$90^\\circ$, $\\sin\\theta$, $\\log_2 8$", "90°, sin θ, log₂ 8"),
    ("unknown command", "$\\foo{x} + \\baz$", "foo x + baz"),
    ("dollar math", "so $x = 2$ or $x = 3$.", "so x = 2 or x = 3."),
    ("display dollars", "$$\nx^2 - 5x + 6 = 0\n$$", "x² - 5x + 6 = 0"),
    ("bracket display", "\\[\n\\boxed{2 \\text{ 或 } 3}\n\\]", "【2 或 3】"),
    ("paren inline", "\\(\\alpha_1\\) 和 \\(\\beta\\)", "α₁ 和 β"),
    (
        "display newlines",
        "$$\\begin{aligned} a &= b + c \\\\ &= d \\end{aligned}$$",
        "a = b + c\n= d",
    ),
    ("math number", "the root is $5$", "the root is 5"),
    # currency
    ("currency", "It costs $5 and $10.", "It costs $5 and $10."),
    ("currency range", "价格 $5-$10，或 US$3", "价格 $5-$10，或 US$3"),
    ("currency then math", "pay $5, then solve $x^2$", "pay $5, then solve x²"),
    ("escaped dollar", "\\$5 is cheap", "$5 is cheap"),
    ("spaced dollars", "$ not math $", "$ not math $"),
    ("crlf", "# T\r\n\r\n- a\r\n", "【T】\n\n• a"),
    (
        "display math in a list keeps the indent",
        "1. Move:\n   \\[\n   2x = 4\n   \\]\n2. Solve: $x = 2$",
        "1. Move:\n   2x = 4\n2. Solve: x = 2",
    ),
    # a realistic MiMo answer
    (
        "mimo answer",
        "**解答：**\n\n设 $x$ 为所求。由题意：\n\n$$\nx^2 - 5x + 6 = 0\n$$\n\n"
        "解得 $x = 2$ 或 $x = 3$。\n\n**最终答案**\n\n\\[\n\\boxed{2 \\text{ 或 } 3}\n\\]",
        "解答：\n\n设 x 为所求。由题意：\n\nx² - 5x + 6 = 0\n\n解得 x = 2 或 x = 3。\n\n最终答案\n\n【2 或 3】",
    ),
]


@pytest.mark.parametrize(("source", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_to_wechat_text(source: str, expected: str) -> None:
    assert to_wechat_text(source) == expected


def test_case_table_is_large() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    "plain",
    [
        "Hello world.",
        "你好，世界！今天天气不错。",
        "Line one\nLine two (with parens) and 3 - 2 = 1\n\nNew paragraph: a, b; c?",
        "    indented text stays\nsnake_case and CONSTANT_NAME and 5 * 3",
        "email me at a_b@example.com, price 5 dollars",
    ],
)
def test_plain_text_unchanged(plain: str) -> None:
    assert to_wechat_text(plain) == plain
    assert to_wechat_text(plain + "  \n\n") == plain


def test_plain_text_unchanged_random() -> None:
    rng = random.Random(7)
    words = ["alpha", "beta", "中文", "句子", "x1", "snake_case", "3.14", "(a)", "a-b", "ok!"]
    punct = ["", "", ",", ".", "，", "。", "?", ";", ":"]
    for _ in range(300):
        lines = []
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.2:
                lines.append("")
                continue
            n = rng.randint(1, 8)
            line = " ".join(rng.choice(words) + rng.choice(punct) for _ in range(n))
            lines.append(line)
        text = "\n".join(lines).strip("\n")
        text = re.sub(r"\n{3,}", "\n\n", text)
        assert to_wechat_text(text) == text


FUZZ_TOKENS = [
    "*", "**", "_", "__", "~~", "`", "```", "```python", "$", "$$", "\\", "\\\\", "{", "}", "[",
    "]", "(", ")", "\\(", "\\)", "\\[", "\\]", "#", "## ", "> ", "- ", "1. ", "|", "|---|",
    "<br>", "<b>", "&amp;", "^", "_", "&", "\\frac", "\\sqrt", "\\sqrt[3]", "\\boxed{",
    "\\left", "\\right", "\\text{", "\\begin{", "\\end{", "\\not", "\\mathbb", "\\hat",
    "![", "](", "http://a.b/", "x", "42", "中文", "😀", "e\u0301", " ", "\n", "\n\n", "\t",
    "\x00", "\ud800", "\uffff", "\ue000", "\ue0010\ue001",
]  # fmt: skip


def test_never_raises_on_random_input() -> None:
    rng = random.Random(1234)
    for _ in range(2000):
        text = "".join(rng.choice(FUZZ_TOKENS) for _ in range(rng.randint(0, 60)))
        out = _render_wechat(text)  # the unguarded implementation must not raise either
        assert isinstance(out, str)
        stash = _Stash(text)  # the placeholder characters it would pick never leak out
        assert stash.open not in out and stash.close not in out
        assert to_wechat_text(text) == out


@pytest.mark.parametrize(
    "text",
    [
        "{" * 5000,
        "$" + "{" * 3000 + "$",
        "$" + "\\frac{" * 2000 + "$",
        "$" + "x^{" * 2000 + "$",
        "\\boxed{" * 3000,
        "\\(" * 20000,
        "\\[" * 20000,
        "$$" * 20000,
        "`" * 20000,
        "` `` ```` " * 3000,
        "**a " * 5000,
        "$a" * 20000,
        "[x](" * 10000,
        "- " * 10000,
        "> " * 10000,
        "|" * 10000 + "\n" + "|-" * 5000,
    ],
    ids=lambda t: repr(t[:12]),
)
def test_pathological_input_is_fast(text: str) -> None:
    start = time.perf_counter()
    out = _render_wechat(text)
    assert isinstance(out, str)
    assert time.perf_counter() - start < 5


def test_unclosed_fence_is_code_to_the_end() -> None:
    assert to_wechat_text("before\n```js\nlet a = **1**;\n") == "before\n[js]\nlet a = **1**;"


# ------------------------------------------------------------------------ clean_xml_text


def test_clean_xml_text_removes_illegal_characters() -> None:
    dirty = "a\x00b\x08c\x0bd\x1fe\ud800f\udfffg\ufffeh\uffffi"
    assert clean_xml_text(dirty) == "abcdefghi"


def test_clean_xml_text_keeps_legal_characters() -> None:
    legal = "tab\tnl\ncr\r 中文 😀 \ue000 \U0010fffd ]]> <&>"
    assert clean_xml_text(legal) == legal


def test_clean_xml_text_output_parses() -> None:
    rng = random.Random(5)
    for _ in range(200):
        text = "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(50))
        cleaned = clean_xml_text(text)
        root = ET.fromstring(f"<a>{escape(cleaned)}</a>".encode("utf-8", "surrogatepass"))
        assert root.tag == "a"


# ------------------------------------------------------------------------------ utf8_len


@pytest.mark.parametrize(
    ("s", "n"), [("", 0), ("a", 1), ("é", 2), ("中", 3), ("😀", 4), ("\ud800", 3), ("a中😀", 8)]
)
def test_utf8_len(s: str, n: int) -> None:
    assert utf8_len(s) == n


# ---------------------------------------------------------------------------- split_text


def squash(text: str) -> str:
    """Text with all whitespace removed."""
    return re.sub(r"\s+", "", text)


def check_parts(parts: list[str], limit: int) -> None:
    """Every part fits, is non-empty and has no leading/trailing blank lines."""
    for p in parts:
        assert p.strip()
        assert utf8_len(p) <= limit, (utf8_len(p), limit)
        assert p == p.rstrip()
        assert not p.startswith("\n")


def test_split_empty() -> None:
    assert split_text("") == []
    assert split_text(" \n\n \t") == []


def test_split_short_text_is_one_part() -> None:
    assert split_text("\n\nhello\nworld  \n\n") == ["hello\nworld"]


def test_split_rejects_tiny_limit() -> None:
    with pytest.raises(ValueError):
        split_text("abc", 3)


def test_split_chinese_never_cuts_a_character() -> None:
    text = "中文字符" * 1000  # 12000 bytes, no break opportunities at all
    parts = split_text(text, 2000)
    check_parts(parts, 2000)
    assert "".join(parts) == text
    assert all(utf8_len(p) % 3 == 0 for p in parts)
    assert utf8_len(parts[0]) == 1998


def test_split_emoji() -> None:
    text = "😀" * 1000
    parts = split_text(text, 2001)
    check_parts(parts, 2001)
    assert "".join(parts) == text
    assert all(utf8_len(p) % 4 == 0 for p in parts)


def test_split_single_long_line() -> None:
    text = "a" * 5000
    parts = split_text(text, 2000)
    assert [len(p) for p in parts] == [2000, 2000, 1000]


def test_split_prefers_paragraphs() -> None:
    paras = [f"{i}" + "x" * 799 for i in range(3)]
    parts = split_text("\n\n".join(paras), 2000)
    assert parts == [paras[0] + "\n\n" + paras[1], paras[2]]


def test_split_prefers_lines_over_sentences() -> None:
    lines = ["First. " + "a" * 900, "Second. " + "b" * 900, "Third. " + "c" * 900]
    parts = split_text("\n".join(lines), 2000)
    assert parts == [lines[0] + "\n" + lines[1], lines[2]]


def test_split_prefers_sentences_over_spaces() -> None:
    sentence = "这是一个句子，" * 30 + "结束。"  # 639 bytes
    parts = split_text(sentence * 5, 2000)
    check_parts(parts, 2000)
    assert all(p.endswith("。") for p in parts)
    assert "".join(parts) == sentence * 5


def test_split_english_sentences() -> None:
    text = " ".join(f"Sentence number {i} ends here." for i in range(200))
    parts = split_text(text, 300)
    check_parts(parts, 300)
    assert all(p.endswith(".") for p in parts)
    assert " ".join(parts) == text


def test_split_falls_back_to_spaces_and_commas() -> None:
    text = " ".join(["word"] * 1000)
    parts = split_text(text, 100)
    check_parts(parts, 100)
    assert all(set(p) <= set("word ") and not p.startswith(" ") for p in parts)
    assert " ".join(parts) == text
    cn = "、".join(["项目"] * 500)
    parts = split_text(cn, 100)
    check_parts(parts, 100)
    assert all(p.endswith("、") for p in parts[:-1])


def test_split_keeps_combining_sequences_together() -> None:
    text = "e\u0301" * 1000
    for limit in (4, 5, 7, 100):
        parts = split_text(text, limit)
        check_parts(parts, limit)
        assert "".join(parts) == text
        assert not any(unicodedata.combining(p[0]) for p in parts)


def test_split_keeps_emoji_sequences_together() -> None:
    family = "👨\u200d👩\u200d👧"  # 18 bytes
    flags = "🇨🇳🇯🇵"
    text = (family + flags) * 200
    parts = split_text(text, 40)
    check_parts(parts, 40)
    assert "".join(parts) == text
    for p in parts:
        assert not p.startswith("\u200d") and not p.endswith("\u200d")
        ri = len(p) - len(p.lstrip("🇦🇧🇨🇩🇪🇫🇬🇭🇮🇯🇰🇱🇲🇳🇴🇵🇶🇷🇸🇹🇺🇻🇼🇽🇾🇿"))
        assert ri % 2 == 0


def test_split_keeps_code_block_whole() -> None:
    intro = "Intro paragraph. " * 80  # 1360 bytes
    code = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(100)) + "\n```"
    parts = split_text(intro + "\n\n" + code + "\n\nAfter.", 2000)
    check_parts(parts, 2000)
    assert len(parts) == 2
    assert parts[0] == intro.rstrip()
    assert parts[1] == code + "\n\nAfter."


def test_split_oversized_code_block_reopens_fences() -> None:
    lines = [f"    print('line {i}')  # 中文注释" for i in range(200)]
    code = "```python\n" + "\n".join(lines) + "\n```"
    parts = split_text("Look:\n\n" + code + "\n\nEnd.", 500)
    check_parts(parts, 500)
    code_parts = [p for p in parts if p.startswith("```")]
    assert len(code_parts) > 5
    for p in code_parts:
        assert p.startswith("```python\n") and p.endswith("\n```")
    inner = [ln for p in code_parts for ln in p.split("\n")[1:-1]]
    assert inner == lines
    assert parts[0] == "Look:" and parts[-1] == "End."


def test_split_code_block_with_a_huge_line() -> None:
    code = "```\nshort\n" + "y" * 1000 + "\n```"
    parts = split_text(code, 100)
    check_parts(parts, 100)
    assert all(p.startswith("```\n") and p.endswith("\n```") for p in parts)
    assert squash("".join(p[4:-4] for p in parts)) == squash("short" + "y" * 1000)


def random_text(rng: random.Random, size: int) -> str:
    """Random text with every kind of break opportunity (and none)."""
    pieces = ["word", "中文", "😀", "é", "e\u0301", ". ", "。", "！", "，", "、", ", ", " ", "\n",
              "\n\n", "\n\n\n", "  ", "…", "x" * 50, "长" * 40, "```", "```py\n", "\t"]  # fmt: skip
    return "".join(rng.choice(pieces) for _ in range(size))


def is_subsequence(small: str, big: str) -> bool:
    """True when ``small`` can be read out of ``big`` by skipping characters."""
    it = iter(big)
    return all(ch in it for ch in small)


@pytest.mark.parametrize("limit", [4, 5, 9, 30, 101, 500, 2000])
def test_split_property_fits_and_preserves_content(limit: int) -> None:
    rng = random.Random(limit)
    for _ in range(150):
        text = random_text(rng, rng.randint(0, 300))
        parts = split_text(text, limit)
        check_parts(parts, limit)
        if "```" not in text:
            assert squash("".join(parts)) == squash(text)
        else:  # re-opened fences add text, nothing is lost
            assert is_subsequence(squash(text), squash("".join(parts)))


def test_split_property_on_rendered_markdown() -> None:
    rng = random.Random(99)
    for _ in range(200):
        text = to_wechat_text("".join(rng.choice(FUZZ_TOKENS) for _ in range(200)))
        for limit in (16, 200):
            parts = split_text(text, limit)
            check_parts(parts, limit)
            if "```" not in text and "~~~" not in text:
                assert squash("".join(parts)) == squash(text)


# ---------------------------------------------------------------------------- numbering


def test_number_parts_single_part_unchanged() -> None:
    assert number_parts(["only"], 2000) == ["only"]
    assert number_parts([], 2000) == []


def test_number_parts_prefixes_and_fits() -> None:
    parts = split_text("x" * 5000, 2000)
    numbered = number_parts(parts, 2000)
    check_parts(numbered, 2000)
    assert [p[:6] for p in numbered] == ["(1/3) ", "(2/3) ", "(3/3) "]
    assert squash("".join(re.sub(r"^\(\d+/\d+\) ", "", p) for p in numbered)) == "x" * 5000


def test_number_parts_keeps_parts_that_fit() -> None:
    assert number_parts(["a\n\nb", "c", " \n"], 20) == ["(1/2) a\n\nb", "(2/2) c"]


def test_number_parts_resplits_when_digits_grow() -> None:
    text = "中" * 2997  # 8991 bytes: exactly 9 parts of 999 bytes
    parts = split_text(text, 1000)
    assert len(parts) == 9
    numbered = number_parts(parts, 1000)
    check_parts(numbered, 1000)
    n = len(numbered)
    assert n >= 10
    assert numbered[0].startswith(f"(1/{n}) ") and numbered[-1].startswith(f"({n}/{n}) ")
    assert squash("".join(re.sub(r"^\(\d+/\d+\) ", "", p) for p in numbered)) == text


def test_number_parts_rejects_limit_without_room() -> None:
    with pytest.raises(ValueError):
        number_parts(["a", "b"], 6)


def test_split_and_number() -> None:
    text = "\n\n".join("段落" * 200 for _ in range(10))  # 10 × 1200 bytes
    numbered = split_and_number(text, 2000)
    check_parts(numbered, 2000)
    assert len(numbered) == 10
    assert numbered[3].startswith("(4/10) ")
    assert split_and_number("short", 2000) == ["short"]


def test_undecodable_bytes_marker_dropped() -> None:
    assert to_wechat_text("caf\ufffd ok") == "caf ok"
