"""Streaming text: whole characters only, from byte-level tokens of the tiny tokenizer.

The stream of a whole generation (tags split over tokens, cancel, deadline) is tested through
the engine in test_engine.py.
"""

from __future__ import annotations

import pytest

from bot.engine.transformers.engine import TransformersEngine
from bot.engine.transformers.streaming import Detokenizer


def byte_ids(engine: TransformersEngine, text: str) -> list[int]:
    """One token per UTF-8 byte of `text` (GPT-2's printable byte mapping)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = sorted(set(range(256)) - set(printable))

    def symbol(byte: int) -> str:
        return chr(byte) if byte in printable else chr(256 + others.index(byte))

    return [engine.tokenizer.convert_tokens_to_ids(symbol(b)) for b in text.encode()]


@pytest.mark.parametrize(
    ("text", "shown_after_each"),
    [
        ("北", ["", "", "北"]),  # three bytes: nothing until the character is whole
        ("a北", ["a", "a", "a", "a北"]),
        ("ab", ["a", "ab"]),
    ],
)
def test_text_is_committed_at_whole_characters(
    tiny_engine: TransformersEngine, text: str, shown_after_each: list[str]
) -> None:
    detokenizer = Detokenizer(tiny_engine._decode, "<think>")
    shown = [detokenizer.add([token]) for token in byte_ids(tiny_engine, text)]
    assert shown == ["<think>" + s for s in shown_after_each]


def test_flush_hands_over_what_was_held_back(tiny_engine: TransformersEngine) -> None:
    detokenizer = Detokenizer(tiny_engine._decode, "")
    first_byte = byte_ids(tiny_engine, "北")[0]
    assert detokenizer.add([first_byte]) == ""
    assert detokenizer.flush() == "\ufffd"
    assert detokenizer.pending == []
