"""bot.text.split: UTF-8 sizes, byte-limited splitting at natural breaks, part numbers."""

from __future__ import annotations

import random
import re
import unicodedata

import pytest

from bot.text.split import number_parts, split_and_number, split_text, utf8_len

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
