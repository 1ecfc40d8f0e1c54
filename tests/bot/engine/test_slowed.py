"""SlowedEngine, the sandbox's hook: wait `fixed + extra()` seconds, then the wrapped engine.

`Recorder` is an Engine written for these tests: the wrapper's job is timing and delegation,
which needs an engine that answers at once and remembers what it was asked, not a model. The
factory's choice of the wrapper (and the sandbox's delay read from Redis) is in test_factory.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot.engine.base import Engine, Generation, GenerationRequest, StreamEvent
from bot.engine.slowed import SlowedEngine
from tests.bot.engine.builders import QUESTION, request


class Recorder(Engine):
    """Answers every request at once with the same Generation; records each call."""

    name = "recorder"
    context_length = 1234

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closed = False

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Seven per message, so the test can tell it from the default estimate."""
        self.calls.append("count_tokens")
        return 7 * len(messages)

    def generate(self, request: GenerationRequest) -> Generation:
        """The fixed answer, stamped with the request id."""
        self.calls.append("generate")
        return Generation("Paris.", "thinking", 3, 2, 1, "stop", extra={"id": request.request_id})

    def info(self) -> dict[str, Any]:
        """Marked so the test sees it came from here."""
        return {"engine": self.name, "marker": 1}

    def close(self) -> None:
        """Remember the close."""
        self.closed = True


def raising() -> float:
    """An extra-delay source that fails (Redis down in the sandbox)."""
    raise ConnectionError("redis is down")


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    """What `action` returns and how long it took."""
    started = time.monotonic()
    out = action()
    return out, time.monotonic() - started


@pytest.mark.parametrize(
    ("fixed", "extra", "at_least", "below"),
    [
        (0.0, lambda: 0.0, 0.0, 0.1),  # no delay: no sleep at all
        (0.15, lambda: 0.0, 0.15, 1.0),  # MIMOCHAT_GENERATION_DELAY alone
        (0.0, lambda: 0.15, 0.15, 1.0),  # the console's delay alone
        (0.1, lambda: 0.1, 0.2, 1.0),  # both add up
        (0.1, raising, 0.1, 1.0),  # a failing knob never fails the answer
        (0.0, lambda: -5.0, 0.0, 0.1),  # a negative total is no delay
    ],
)
def test_generate_waits_then_delegates(
    fixed: float, extra: Callable[[], float], at_least: float, below: float
) -> None:
    inner = Recorder()
    slowed = SlowedEngine(inner, fixed, extra)
    generation, took = timed(lambda: slowed.generate(request()))
    assert at_least <= took < below
    assert generation.answer == "Paris." and generation.extra == {"id": "r1"}
    assert inner.calls == ["generate"]


def test_stream_waits_before_the_first_event() -> None:
    inner = Recorder()
    stream: Iterator[StreamEvent] = SlowedEngine(inner, 0.15, lambda: 0.0).stream(request())
    assert inner.calls == []  # nothing happens until the stream is read
    first, took = timed(lambda: next(stream))
    assert took >= 0.15
    events = [first, *stream]
    assert [e.kind for e in events] == ["reasoning", "answer", "done"]
    assert events[-1].generation is not None and events[-1].generation.answer == "Paris."


def test_the_rest_is_the_wrapped_engine() -> None:
    inner = Recorder()
    slowed = SlowedEngine(inner, 5.0, lambda: 5.0)
    assert (slowed.name, slowed.context_length) == ("recorder", 1234)
    # Only generation waits: counting tokens, info and close are immediate.
    counted, took = timed(lambda: slowed.count_tokens(QUESTION))
    assert counted == 7 and took < 0.1
    assert slowed.info() == {"engine": "recorder", "marker": 1}
    slowed.close()
    assert inner.closed
    assert inner.calls == ["count_tokens"]
