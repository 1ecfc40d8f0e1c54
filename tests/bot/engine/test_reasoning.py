"""split_reasoning: MiMo's `<think> … </think>` reasoning apart from the answer."""

from __future__ import annotations

import pytest

from bot.engine.reasoning import THINK_CLOSE, THINK_OPEN, clean, split_reasoning, unsafe_tail


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "<think>\nLet me add 2 and 2.\n</think>\n\nIt is 4.",
            ("Let me add 2 and 2.", "It is 4.", True),
            id="full",
        ),
        pytest.param(
            "\nLet me add.\n</think>\n\nIt is 4.",
            ("Let me add.", "It is 4.", True),
            id="opening-tag-in-prompt",
        ),
        pytest.param(
            "  \n<think>\nStill thinking about it",
            ("Still thinking about it", "", False),
            id="budget-ran-out",
        ),
        pytest.param("Just an answer.", ("", "Just an answer.", True), id="no-tags"),
        pytest.param("", ("", "", True), id="empty"),
        pytest.param("<think>", ("", "", False), id="only-open"),
        pytest.param("<think></think>", ("", "", True), id="empty-reasoning-and-answer"),
        pytest.param(
            "<think>hmm</think>Answer.<|im_end|>",
            ("hmm", "Answer.", True),
            id="im-end-stripped",
        ),
        pytest.param(
            "<think>hmm</think>\n\nAnswer.<|im_end|><|endoftext|>",
            ("hmm", "Answer.", True),
            id="several-special-tokens",
        ),
        pytest.param(
            "<think>a</think>b</think>c<think>d",
            ("a", "bcd", True),
            id="stray-tags-in-answer",
        ),
        pytest.param(
            "<think><think>twice</think>x",
            ("twice", "x", True),
            id="doubled-open",
        ),
        pytest.param(
            "<think>\n想一想。\n</think>\n\n北京今天晴。",
            ("想一想。", "北京今天晴。", True),
            id="chinese",
        ),
        pytest.param(
            "Use a <b>bold</b> tag.",
            ("", "Use a <b>bold</b> tag.", True),
            id="html-is-kept",
        ),
        pytest.param(
            "<think>r</think>\n\n<|im_end|>",
            ("r", "", True),
            id="answer-only-special-tokens",
        ),
    ],
)
def test_split_reasoning(text: str, expected: tuple[str, str, bool]) -> None:
    assert split_reasoning(text) == expected


def test_tags() -> None:
    assert (THINK_OPEN, THINK_CLOSE) == ("<think>", "</think>")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  <|im_start|>assistant\nHi<|im_end|>\n", "assistant\nHi"),
        ("<think>x</think>", "x"),
        ("a < b and c > d", "a < b and c > d"),
    ],
)
def test_clean(text: str, expected: str) -> None:
    assert clean(text) == expected


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("abc", 0),
        ("abc<", 1),
        ("abc</th", 4),
        ("abc<thin", 5),
        ("abc</think>", 0),
        ("abc<|im_e", 6),
        ("abc<|im_end|", 9),
        ("abc<|im_end|>", 0),
        ("a < b", 0),
        ("a <b", 0),
    ],
)
def test_unsafe_tail(text: str, held: int) -> None:
    assert unsafe_tail(text) == held
