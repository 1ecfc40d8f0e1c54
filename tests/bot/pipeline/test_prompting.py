"""Token-based trimming: oldest whole turns first, the question never, its middle cut if need be."""

from __future__ import annotations

import pytest

from bot.pipeline.prompting import CUT_MARKER, prompt_budget, trim_history


def words(messages: list[dict[str, str]]) -> int:
    """A toy tokenizer: one token per word, plus 2 per message for the chat markup."""
    return sum(len(m["content"].split()) + 2 for m in messages)


def turn(i: int, size: int = 3) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": " ".join([f"q{i}"] * size)},
        {"role": "assistant", "content": " ".join([f"a{i}"] * size)},
    ]


QUESTION = {"role": "user", "content": "what now"}
HISTORY = [*turn(1), *turn(2), *turn(3)]  # 3 turns of 2 x (3 + 2) = 10 tokens each


@pytest.mark.parametrize(
    ("limit", "kept_turns"),
    [
        (34, [1, 2, 3]),  # 30 + 4: everything fits
        (33, [2, 3]),  # one token short: the oldest turn goes, whole
        (24, [2, 3]),
        (23, [3]),
        (14, [3]),
        (13, []),
        (4, []),  # the question alone, exactly
    ],
)
def test_oldest_turns_go_first(limit: int, kept_turns: list[int]) -> None:
    window = trim_history([*HISTORY, QUESTION], words, limit)
    expected = [m for i in kept_turns for m in turn(i)] + [QUESTION]
    assert window.messages == expected
    assert window.dropped_turns == 3 - len(kept_turns)
    assert window.tokens == words(expected) <= limit
    assert window.cut_chars == 0


def test_a_system_message_is_kept() -> None:
    system = {"role": "system", "content": "be brief"}
    window = trim_history([system, *HISTORY, QUESTION], words, 18)
    assert window.messages == [system, *turn(3), QUESTION]


def test_history_that_starts_with_an_answer_is_one_turn() -> None:
    history = [{"role": "assistant", "content": "a0 a0"}, *turn(1)]
    window = trim_history([*history, QUESTION], words, 15)
    assert window.messages == [*turn(1), QUESTION]


def test_a_question_too_long_alone_is_cut_in_the_middle() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    question = {"role": "user", "content": text}
    window = trim_history([*HISTORY, question], words, 30)
    assert window.dropped_turns == 3
    [kept] = window.messages
    assert CUT_MARKER in kept["content"]
    head, tail = kept["content"].split(CUT_MARKER)
    assert text.startswith(head) and text.endswith(tail)
    assert window.tokens <= 30
    assert window.tokens >= 28  # as much of the question as fits is kept
    assert window.cut_chars == len(text) - len(head) - len(tail)


def test_a_question_that_cannot_fit_at_all() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        trim_history([QUESTION], words, 2)


def test_must_end_with_the_question() -> None:
    with pytest.raises(ValueError, match="end with the user's question"):
        trim_history(turn(1), words, 100)


def test_few_token_counts_for_a_long_history() -> None:
    calls: list[int] = []

    def counting(messages: list[dict[str, str]]) -> int:
        calls.append(1)
        return words(messages)

    history = [m for i in range(64) for m in turn(i)]
    window = trim_history([*history, QUESTION], counting, 54)
    assert window.dropped_turns == 59
    assert len(calls) <= 10  # bisected, not one count per turn


@pytest.mark.parametrize(
    ("context", "budget", "answer", "expected"),
    [
        (32768, 2048, 1024, 32768 - 2048 - 1024 - 16),
        (4096, 24, 12, 4096 - 24 - 12 - 16),
        (4096, 8000, 1024, 1024),  # budgets larger than the window: a quarter stays for the prompt
    ],
)
def test_prompt_budget(context: int, budget: int, answer: int, expected: int) -> None:
    assert prompt_budget(context, budget, answer) == expected
