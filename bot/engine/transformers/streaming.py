"""Streaming: a generation run on a helper thread, its text handed out in whole characters."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bot.engine.base import Generation, StreamEvent
from bot.engine.reasoning import THINK_OPEN, split_reasoning, unsafe_tail

# Runs one whole generation: called with where to send each new token's ids and with the event
# that asks it to stop early.
Complete = Callable[[Callable[[list[int]], None], threading.Event], Generation]


class Detokenizer:
    """Incremental decode that only commits text at whole characters."""

    def __init__(self, decode: Callable[[Sequence[int]], str], prefix: str) -> None:
        self.decode = decode
        self.text = prefix
        self.pending: list[int] = []

    def add(self, ids: Sequence[int]) -> str:
        """Take new token ids; the text so far, up to the last whole character."""
        self.pending.extend(ids)
        piece = self.decode(self.pending)
        # A byte-level token may end inside a multi-byte character; wait for the rest of it.
        if not piece.endswith("\ufffd"):
            self.text += piece
            self.pending = []
        return self.text

    def flush(self) -> str:
        """The whole text, with whatever was held back decoded as it is."""
        if self.pending:
            self.text += self.decode(self.pending)
            self.pending = []
        return self.text


def stream_events(
    complete: Complete, decode: Callable[[Sequence[int]], str], request_id: str
) -> Iterator[StreamEvent]:
    """Run `complete` on a thread; yield reasoning and answer text as it comes, then `done`.

    Text that may still become a tag (`<thi…`) is held back until the next tokens say what it
    is. Stopping the iteration early cancels the generation.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    cancel = threading.Event()

    def work() -> None:
        try:
            events.put(("done", complete(lambda ids: events.put(("ids", ids)), cancel)))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            events.put(("error", exc))

    worker = threading.Thread(
        target=work, name=f"mimochat-stream-{request_id or 'anon'}", daemon=True
    )
    worker.start()
    text = Detokenizer(decode, THINK_OPEN)
    shown = {"reasoning": "", "answer": ""}

    def deltas(reasoning: str, answer: str) -> Iterator[StreamEvent]:
        for kind, full in (("reasoning", reasoning), ("answer", answer)):
            if len(full) > len(shown[kind]) and full.startswith(shown[kind]):
                yield StreamEvent(kind, full[len(shown[kind]) :])
                shown[kind] = full

    try:
        while True:
            kind, value = events.get()
            if kind == "ids":
                so_far = text.add(value)
                safe = so_far[: len(so_far) - unsafe_tail(so_far)]
                reasoning, answer, _ = split_reasoning(safe)
                yield from deltas(reasoning, answer)
            elif kind == "done":
                yield from deltas(value.reasoning, value.answer)
                yield StreamEvent("done", generation=value)
                return
            else:
                raise value
    finally:
        # Reached early when the consumer stops iterating: stop generating for it.
        cancel.set()
