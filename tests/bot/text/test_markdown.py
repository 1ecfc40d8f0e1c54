"""bot.text.markdown: Markdown model output as WeChat plain text (table-driven)."""

from __future__ import annotations

import random
import re
import time

import pytest

from bot.text.markdown import HR_LINE, _render_wechat, to_wechat_text
from bot.text.split import split_text, utf8_len

# ------------------------------------------------------------------------- to_wechat_text

# The regex renderer's table (its LaTeX rows are in test_latex.py): a WeChat user sees the same.
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

# CommonMark structures the regex renderer did not know, and chat-specific parser rules.
COMMONMARK_CASES = [
    # nested and loose lists
    (
        "bullets around a numbered list",
        "- a\n  1. b\n     - c\n  2. d\n- e",
        "• a\n  1. b\n    • c\n  2. d\n• e",
    ),
    ("second paragraph in an item", "- a\n\n  para\n- b", "• a\n\n  para\n• b"),
    ("loose list keeps its blank line", "- a\n- b\n\n- c", "• a\n• b\n\n• c"),
    ("numbers as written", "1) a\n1) b", "1) a\n1) b"),
    ("code in an item is not padded", "- a\n  ```py\n  x  \n  ```\n- b", "• a\n[py]\nx  \n• b"),
    ("lazy continuation line", "- a\nb", "• a\n  b"),
    # emphasis inside links, code in links
    ("emphasis inside a link", "[**bold** and *it*](https://x.com)", "bold and it (https://x.com)"),
    ("code inside a link", "[`code`](u)", "code (u)"),
    ("math inside a link", "[a $x_1$ b](u)", "a x₁ b (u)"),
    ("image alt with emphasis", '![a *b*](u.png "t")', "[图片: a b] u.png"),
    ("reference link", "[ref]\n\n[ref]: https://r.com", "ref (https://r.com)"),
    ("footnotes stay as written", "Note[^1].\n\n[^1]: Source.", "Note[^1].\n\n[^1]: Source."),
    ("autolinks", "<https://a.com> and <a@b.com>", "https://a.com and a@b.com"),
    (
        "url as written",
        "[百科](https://baike.baidu.com/item/中文)",
        "百科 (https://baike.baidu.com/item/中文)",
    ),
    ("any scheme", "[x](javascript:alert(1))", "x (javascript:alert(1))"),
    # code spans holding backticks
    ("code span holding a backtick pair", "`` `a` ``", "`a`"),
    ("code span holding a fence", "```` ``` ````", "```"),
    ("code span holding a double backtick", "`a``b`", "a``b"),
    # HTML blocks
    ("html block", "<div>\n<p>Hi <b>there</b></p>\n</div>\n\nnext", "Hi there\n\nnext"),
    ("comment block", "<!-- hidden -->\ntext", "text"),
    ("markdown inside an html block", "<div>\n# h\n- **a**\n</div>", "【h】\n• a"),
    ("unknown tag block", "<think>\n**r**\n</think>\n\nAnswer", "<think>\nr\n</think>\n\nAnswer"),
    ("pre block as written", "<pre>\n*a*  &amp;\n\nb\n</pre>\nafter", "*a*  &\n\nb\nafter"),
    ("empty pre block", "a\n\n<pre></pre>\n\nb", "a\n\nb"),
    (
        "details block around markdown",
        "<details>\n<summary>提示</summary>\n\n用 $x$。\n\n</details>",
        "提示\n\n用 x。",
    ),
    ("generics are not tags", "Vec<T> and List<String>", "Vec<T> and List<String>"),
    ("inline span dropped", 'text <span style="color:red">red</span>', "text red"),
    ("entities", "&copy; &#65;", "© A"),
    # setext headings
    ("setext h2", "Title\n---", "【Title】"),
    ("setext h1 then text", "Sub\n===\ntext", "【Sub】\ntext"),
    ("rule right under text", "a\n***\nb", f"a\n{HR_LINE}\nb"),
    # tables
    ("table escaped pipe", "| a \\| b | c |\n|---|---|\n| 1 | 2 |", "a | b | c\n1 | 2"),
    (
        "table short and long rows",
        "| a | b |\n|---|---|\n| 1 |\n| x | y | z |",
        "a | b\n1\nx | y",
    ),
    (
        "table with code and link, then text",
        "| k | v |\n|---|---|\n| `x` | [d](u) |\nafter",
        "k | v\nx | d (u)\nafter",
    ),
    # containers
    ("quote with a blank line", "> a\n>\n> b", "｜a\n｜\n｜b"),
    ("quote with heading", "> # Q\n> text", "｜【Q】\n｜text"),
    ("fence in a quote", "> ```py\n> x = 1\n> ```", "｜[py]\n｜x = 1"),
    ("hard breaks", "a  \nb\\\nc", "a\nb\nc"),
    ("strikethrough needs two tildes", "~~del~~ ~x~", "del ~x~"),
    # chat rules on top of CommonMark
    ("bold ending in CJK punctuation", "**注意：**这里", "注意：这里"),
    ("bold around CJK quotes", "这是**“加粗”**文本", "这是“加粗”文本"),
    ("powers are arithmetic", "x**2 + y**2 = 2*x*y", "x**2 + y**2 = 2*x*y"),
    ("bold before CJK then latin", "**中文**text", "中文text"),
    ("url with markers kept", "see https://a.com/x_(y)_z. ok", "see https://a.com/x_(y)_z. ok"),
    ("url inside bold", "**https://a.com/a_b_**", "https://a.com/a_b_"),
]


@pytest.mark.parametrize(
    ("source", "expected"),
    [c[1:] for c in CASES + COMMONMARK_CASES],
    ids=[c[0] for c in CASES + COMMONMARK_CASES],
)
def test_to_wechat_text(source: str, expected: str) -> None:
    assert to_wechat_text(source) == expected


def test_case_table_is_large() -> None:
    assert len(CASES) >= 30
    assert len(COMMONMARK_CASES) >= 30


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
        out = _render_wechat(text.replace("\x00", ""))  # the unguarded renderer never raises
        assert isinstance(out, str)
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
        "<!--" * 10000,
        "a <!--" * 5000,
        "\\boxed {" * 3000,
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


def test_undecodable_bytes_marker_dropped() -> None:
    assert to_wechat_text("caf\ufffd ok") == "caf ok"


def test_non_string_input() -> None:
    assert to_wechat_text(None) == ""  # type: ignore[arg-type]
    assert to_wechat_text(42) == "42"  # type: ignore[arg-type]


# ------------------------------------------------------------------- rendered, then split


def squash(text: str) -> str:
    """Text with all whitespace removed."""
    return re.sub(r"\s+", "", text)


def test_split_property_on_rendered_markdown() -> None:
    rng = random.Random(99)
    for _ in range(200):
        text = to_wechat_text("".join(rng.choice(FUZZ_TOKENS) for _ in range(200)))
        for limit in (16, 200):
            parts = split_text(text, limit)
            assert all(p.strip() and utf8_len(p) <= limit for p in parts)
            if "```" not in text and "~~~" not in text:
                assert squash("".join(parts)) == squash(text)
