"""A test hook kept out of the domain: an engine that waits before answering (sandbox, tests).

`build_engine` wraps the real engine in it only when the sandbox is on or a fixed delay is
set, so production code paths never read the sandbox's delay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from bot.engine.base import Engine, Generation, GenerationRequest, StreamEvent


class SlowedEngine(Engine):
    """Delegates to an engine after sleeping `fixed + extra()` seconds per request."""

    def __init__(self, inner: Engine, fixed: float, extra: Callable[[], float]) -> None:
        self.inner = inner
        self.fixed = fixed
        self.extra = extra
        self.name = inner.name
        self.context_length = inner.context_length

    def _wait(self) -> None:
        try:
            extra = self.extra()
        except Exception:  # the sandbox's knob must never fail a real answer
            extra = 0.0
        delay = self.fixed + extra
        if delay > 0:
            time.sleep(delay)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """The wrapped engine's count."""
        return self.inner.count_tokens(messages)

    def generate(self, request: GenerationRequest) -> Generation:
        """Wait, then generate with the wrapped engine."""
        self._wait()
        return self.inner.generate(request)

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        """Wait, then stream from the wrapped engine."""
        self._wait()
        yield from self.inner.stream(request)

    def info(self) -> dict[str, Any]:
        """The wrapped engine's info."""
        return self.inner.info()

    def close(self) -> None:
        """Close the wrapped engine."""
        self.inner.close()
