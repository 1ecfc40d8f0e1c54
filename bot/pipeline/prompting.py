"""Fit a conversation into the model's window by tokens: oldest turns go first, the question stays.

The window must leave room for the reasoning budget and the answer, so the prompt may take
`context - thinking_budget - max_new_tokens` tokens at most. Whole question/answer pairs are
dropped from the oldest on; a system message at the start is kept. The current question is
never dropped: if it alone is too long, its middle is cut (the beginning usually says what is
asked, the end often holds the actual question) and a marker shows where.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Messages = list[dict[str, str]]
CountTokens = Callable[[Messages], int]

CUT_MARKER = "\n[…]\n"
# Tokens kept free for the forced `</think>` and the chat markup around the answer.
RESERVED_TOKENS = 16
# The prompt always gets at least this share of the window, whatever the budgets say.
MIN_PROMPT_SHARE = 0.25


@dataclass
class Window:
    """The messages that fit and what was given up to fit them."""

    messages: Messages
    tokens: int
    dropped_turns: int = 0
    cut_chars: int = 0  # characters removed from the middle of the question
    kept: list[int] = field(default_factory=list)  # indices of the input messages kept


def prompt_budget(context_length: int, thinking_budget: int, max_new_tokens: int) -> int:
    """Most prompt tokens that still leave room for the reasoning budget and the answer."""
    room = context_length - max(0, thinking_budget) - max(0, max_new_tokens) - RESERVED_TOKENS
    return max(room, int(context_length * MIN_PROMPT_SHARE))


def trim_history(messages: Messages, count_tokens: CountTokens, max_prompt_tokens: int) -> Window:
    """The newest part of `messages` whose prompt fits `max_prompt_tokens` tokens.

    `messages` ends with the current question (role `user`); everything before it is history.
    Raises ValueError when even a question cut to a few characters does not fit.
    """
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("the conversation must end with the user's question")
    tokens = count_tokens(messages)
    if tokens <= max_prompt_tokens:
        return Window(list(messages), tokens, kept=list(range(len(messages))))

    system = [0] if messages[0].get("role") == "system" and len(messages) > 1 else []
    question = len(messages) - 1
    starts = _turn_starts(messages, len(system), question)

    def keep_from(turn: int) -> list[int]:
        first = starts[turn] if turn < len(starts) else question
        return [*system, *range(first, question + 1)]

    # Fewest dropped turns that fit; counts only grow with more turns kept, so bisect.
    lo, hi = 1, len(starts)  # dropping `hi` turns leaves the question alone (plus system)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens([messages[i] for i in keep_from(mid)]) <= max_prompt_tokens:
            hi = mid
        else:
            lo = mid + 1
    kept = keep_from(hi)
    trimmed = [messages[i] for i in kept]
    tokens = count_tokens(trimmed)
    if tokens <= max_prompt_tokens:
        return Window(trimmed, tokens, dropped_turns=hi, kept=kept)
    return _cut_question(trimmed, kept, count_tokens, max_prompt_tokens, hi)


def _turn_starts(messages: Messages, first: int, question: int) -> list[int]:
    """Index where each history turn begins: a user message (or the history's first message)."""
    starts = []
    for i in range(first, question):
        if i == first or messages[i].get("role") == "user":
            starts.append(i)
    return starts


def _cut_question(
    messages: Messages, kept: list[int], count_tokens: CountTokens, limit: int, dropped: int
) -> Window:
    text = messages[-1]["content"]

    def with_question(keep_chars: int) -> Messages:
        head = (keep_chars + 1) // 2
        tail = keep_chars - head
        cut = text[:head] + CUT_MARKER + (text[len(text) - tail :] if tail else "")
        return [*messages[:-1], {**messages[-1], "content": cut}]

    # Most characters kept that fit (token counts grow with the characters kept).
    lo, hi = 0, len(text) - 1
    if count_tokens(with_question(lo)) > limit:
        raise ValueError(
            f"the question does not fit the model's window even cut down: the prompt may take "
            f"{limit} tokens; raise MIMOCHAT_CONTEXT_TOKENS or lower the reasoning budget"
        )
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(with_question(mid)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    final = with_question(lo)
    return Window(
        final, count_tokens(final), dropped_turns=dropped, cut_chars=len(text) - lo, kept=kept
    )
