"""The engine interface: a conversation in, an answer with its reasoning and token counts out."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GenerationRequest:
    """What one conversation asks of the engine.

    `messages` is the chat so far, oldest first, ending with the user's question; roles are
    `user` and `assistant` only (the engine adds MiMo's recommended empty system prompt).
    """

    messages: list[dict[str, str]]
    max_new_tokens: int = 1024
    thinking_budget: int = 2048
    temperature: float = 0.6
    top_p: float = 0.95
    request_id: str = ""
    deadline: float | None = None  # time.time() after which the request is abandoned
    seed: int | None = None


@dataclass
class Generation:
    """The outcome of one request: the answer the user sees and the reasoning kept for operators.

    Token counts are generated tokens: `reasoning_tokens` includes `</think>`; neither count
    includes end-of-sequence tokens or a forced `</think>` inserted by budget forcing.
    """

    answer: str
    reasoning: str
    prompt_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    # stop | length | budget (reasoning cut, never closed or disabled: answer forced)
    # | empty (nothing usable came out: the answer is a fallback text)
    finish_reason: str
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


@dataclass
class StreamEvent:
    """One step of a streamed generation: text added to the reasoning or to the answer."""

    kind: str  # reasoning | answer | done
    text: str = ""
    generation: Generation | None = None


class Engine(abc.ABC):
    """A text generator shared by every task of one worker process; thread-safe."""

    name: str = "engine"
    # Most tokens of one conversation: prompt, reasoning and answer together.
    context_length: int = 32768

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens the conversation's prompt takes; engines with a tokenizer count exactly.

        This default over-counts on purpose (one token per two UTF-8 bytes, plus a few per
        message for the chat markup), so history trimmed by it always fits.
        """
        return sum(len(m.get("content", "").encode()) // 2 + 8 for m in messages) + 8

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> Generation:
        """Generate the whole answer for one conversation (blocking)."""

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        """Yield text as it is generated; the last event is `done` with the full Generation."""
        generation = self.generate(request)
        if generation.reasoning:
            yield StreamEvent("reasoning", generation.reasoning)
        if generation.answer:
            yield StreamEvent("answer", generation.answer)
        yield StreamEvent("done", generation=generation)

    def info(self) -> dict[str, Any]:
        """What the operator wants to know: model, device, dtype, memory."""
        return {"engine": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for engines holding nothing
        """Free the model and its memory."""
