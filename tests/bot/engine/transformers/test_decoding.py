"""Decoding passes: stop checks, stop reasons, and the engine's side of a batch.

`ScriptedBatcher` stands in for the batch manager where a test needs an exact token stream (a
`</think>` split over an update, a crash after some tokens); the real manager on the tiny model
is tested in test_batching.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from bot.engine.transformers.batching import BatchConfig, BatchCrashed, Update
from bot.engine.transformers.decoding import (
    Cancelled,
    StopCheck,
    closing_tokens,
    stop_reason,
    strip_eos,
)
from bot.engine.transformers.engine import FORCED_CLOSE, TransformersEngine
from tests.bot.engine.builders import request

# A toy vocabulary for the stop checks: token i is PIECES[i].
PIECES = ["Paris", "</", "think", ">", "</think>", "x", "<|im_end|>"]
EOS = [6]


def decode(ids: Sequence[int]) -> str:
    """The toy vocabulary's text for `ids`."""
    return "".join(PIECES[i] for i in ids)


@pytest.mark.parametrize(
    ("tail", "closers", "closed"),
    [
        ([0, 1, 2, 3], None, True),  # `</think>` in three pieces
        ([0, 4], None, True),  # `</think>` as one token
        ([0, 1, 2], None, False),  # not finished yet
        ([1, 2, 3], frozenset({3}), True),  # ends with a token that holds ">"
        ([4, 5], frozenset({3, 4}), False),  # the newest token cannot end the tag: not decoded
        ([], None, False),  # nothing new: only deadline and cancel are checked
    ],
)
def test_stop_check_sees_a_close_in_pieces(
    tail: list[int], closers: frozenset[int] | None, closed: bool
) -> None:
    check = StopCheck(decode, None, None, watch_close=True, closers=closers)
    assert check(tail) is closed
    assert check.closed is closed


def test_stop_check_ignores_a_close_while_answering() -> None:
    check = StopCheck(decode, None, None, watch_close=False)
    assert check([4]) is False


def test_stop_check_deadline_and_cancel() -> None:
    assert StopCheck(decode, time.time() - 1, None, watch_close=True)([]) is True
    cancel = threading.Event()
    check = StopCheck(decode, time.time() + 60, cancel, watch_close=True)
    assert check([]) is False
    cancel.set()
    assert check([]) is True and check.cancelled and not check.timed_out


@pytest.mark.parametrize(
    ("new_ids", "watch_close", "tail", "reason"),
    [
        ([0, 4], True, [0, 4], "close"),
        ([0, 6], False, [], "eos"),
        ([0, 5], False, [], "length"),
        ([], False, [], "length"),
    ],
)
def test_stop_reason(new_ids: list[int], watch_close: bool, tail: list[int], reason: str) -> None:
    check = StopCheck(decode, None, None, watch_close=watch_close)
    check(tail)
    assert stop_reason(check, new_ids, EOS, request()) == reason


def test_stop_reason_raises_for_deadline_and_cancel() -> None:
    late = StopCheck(decode, time.time() - 1, None, watch_close=True)
    late([])
    with pytest.raises(TimeoutError, match="r1"):
        stop_reason(late, [0], EOS, request())
    cancel = threading.Event()
    cancel.set()
    gone = StopCheck(decode, None, cancel, watch_close=True)
    gone([])
    with pytest.raises(Cancelled):
        stop_reason(gone, [0], EOS, request())


@pytest.mark.parametrize(
    ("ids", "stripped"),
    [([0, 5, 6], [0, 5]), ([0, 6, 6], [0]), ([6, 0], [6, 0]), ([6], []), ([], [])],
)
def test_strip_eos_only_at_the_end(ids: list[int], stripped: list[int]) -> None:
    assert strip_eos(ids, EOS) == stripped


def test_closing_tokens_are_those_with_a_gt(tiny_engine: TransformersEngine) -> None:
    closers = closing_tokens(tiny_engine.tokenizer)
    assert closers is not None
    close = tiny_engine.tokenizer.convert_tokens_to_ids("</think>")
    assert close in closers
    assert not closers & set(tiny_engine._encode("Paris is the capital"))


# The engine's side of the batch, with a scripted token stream


class ScriptedHandle:
    def __init__(self, updates: list[Update]) -> None:
        self.updates = list(updates)
        self.cancelled = False
        self.done = False

    def get(self, timeout: float) -> Update | None:
        return self.updates.pop(0) if self.updates else None

    def cancel(self) -> None:
        self.cancelled = True


class ScriptedBatcher:
    """Stands in for Batcher: each submission gets the next script of updates."""

    def __init__(self, *scripts: list[Update]) -> None:
        self.scripts = list(scripts)
        self.config = BatchConfig(kv_cache_tokens=10**6)
        self.submitted: list[tuple[list[int], int]] = []
        self.handles: list[ScriptedHandle] = []

    def submit(self, input_ids: list[int], max_new_tokens: int, **sampling: Any) -> ScriptedHandle:
        self.submitted.append((list(input_ids), max_new_tokens))
        handle = ScriptedHandle(self.scripts.pop(0))
        self.handles.append(handle)
        return handle

    def close(self) -> None:
        pass


def ids(engine: TransformersEngine, *pieces: str) -> list[int]:
    return [i for piece in pieces for i in engine._encode(piece)]


def test_close_split_over_one_update_stops_there(
    tiny_batched: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    eos = tiny_batched.tokenizer.convert_tokens_to_ids("<|im_end|>")
    reasoning = ids(tiny_batched, "Paris", " is it.", "</", "think", ">")
    extra = ids(tiny_batched, "ignored")
    answer = ids(tiny_batched, "\n\n", "Paris.") + [eos]
    fake = ScriptedBatcher(
        [Update(reasoning[:2], False), Update(reasoning + extra, False)],
        [Update(answer, True)],
    )
    monkeypatch.setattr(tiny_batched, "_batcher", fake)
    generation = tiny_batched.generate(request(thinking_budget=100))
    assert (generation.reasoning, generation.answer) == ("Paris is it.", "Paris.")
    assert generation.finish_reason == "stop"
    assert generation.reasoning_tokens == len(reasoning)
    prompt = fake.submitted[0][0]
    assert fake.submitted[1][0] == prompt + reasoning  # tokens after the close are dropped
    assert fake.handles[0].cancelled  # the first pass gave its KV back at once


def test_crash_mid_request_resumes_from_where_it_was(
    tiny_batched: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    thinking = ids(tiny_batched, *["hmm "] * 6)
    fake = ScriptedBatcher(
        [Update(thinking[:3], False), Update([], True, BatchCrashed("simulated"))],
        [Update(thinking[3:4], False), Update(thinking[3:6], True)],
        [Update(ids(tiny_batched, "Paris"), True)],
    )
    monkeypatch.setattr(tiny_batched, "_batcher", fake)
    generation = tiny_batched.generate(request(thinking_budget=6, max_new_tokens=5))
    assert generation.finish_reason == "budget"
    assert generation.reasoning_tokens == 6
    first, resumed, answer = fake.submitted
    assert resumed == (first[0] + thinking[:3], 3)  # the rest of the budget, from where it was
    assert answer[0] == first[0] + thinking[:6] + tiny_batched._encode(FORCED_CLOSE)


def test_a_second_crash_is_not_retried(
    tiny_batched: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = ScriptedBatcher(
        [Update([], True, BatchCrashed("first"))],
        [Update([], True, BatchCrashed("second"))],
    )
    monkeypatch.setattr(tiny_batched, "_batcher", fake)
    with pytest.raises(BatchCrashed, match="second"):
        tiny_batched.generate(request())
    assert len(fake.submitted) == 2
