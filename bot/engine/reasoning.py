"""Separate MiMo's `<think> … </think>` reasoning from the answer the user sees.

MiMo always reasons first. The opening tag may be missing from the generated text (the chat
template or the engine may have put it in the prompt), and `</think>` is matched as text because
a tokenizer may spell it in several tokens. Output with no `</think>` ran out of budget while
still reasoning.
"""

from __future__ import annotations

import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# ChatML and Qwen control tokens (`<|im_end|>`, `<|endoftext|>`, `<|im_start|>` …) leak into the
# text when it is decoded without skipping special tokens; users must never see them.
_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")
_THINK_TAG = re.compile(r"</?think>")


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """(reasoning, answer, closed) of one model output; closed is False if reasoning never ended."""
    head, sep, tail = text.partition(THINK_CLOSE)
    if sep:
        return clean(head), clean(tail), True
    if text.lstrip().startswith(THINK_OPEN):
        return clean(text), "", False
    return "", clean(text), True


def clean(text: str) -> str:
    """`text` without think tags, ChatML special tokens and surrounding whitespace."""
    return _THINK_TAG.sub("", _SPECIAL_TOKEN.sub("", text)).strip()


def unsafe_tail(text: str) -> int:
    """Length of a suffix of `text` that may still grow into a tag or special token.

    A streamer holds this much back so it never shows half of `</think>` or `<|im_end|>` that a
    later chunk would turn into something to strip.
    """
    start = text.rfind("<")
    if start < 0:
        return 0
    tail = text[start:]
    for tag in (THINK_OPEN, THINK_CLOSE):
        if tag.startswith(tail) and tail != tag:
            return len(tail)
    if re.fullmatch(r"<\|[A-Za-z0-9_]*\|?", tail):
        return len(tail)
    return 0
