"""The question and request builder the engine tests share."""

from __future__ import annotations

from typing import Any

from bot.engine.base import GenerationRequest

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def request(**overrides: Any) -> GenerationRequest:
    """A small seeded request; keyword arguments override its fields."""
    values: dict[str, Any] = {
        "messages": QUESTION,
        "max_new_tokens": 12,
        "thinking_budget": 24,
        "seed": 7,
        "request_id": "r1",
    }
    values.update(overrides)
    return GenerationRequest(**values)
