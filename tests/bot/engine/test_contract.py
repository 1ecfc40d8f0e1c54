"""The Engine contract, one set of tests run against every backend.

- transformers, batched: the tiny model under continuous batching (the production default);
- transformers, one at a time: the same model with batching off (the benchmark's baseline);
- openai, parser / think tags: the OpenAI backend against a local HTTP server that streams
  chat completions as SSE from the same tiny model, with a reasoning parser
  (`delta.reasoning_content`) and without one (`<think>` tags in `content`).

The tiny model's weights are random, so these tests check what must hold whatever the text is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot.core.settings import Settings
from bot.engine.base import Engine, Generation, GenerationRequest
from bot.engine.factory import build_engine
from bot.engine.openai_backend import FALLBACK_ANSWER, OpenAIEngine
from bot.engine.transformers.engine import TransformersEngine
from tests.bot.engine.builders import QUESTION, request
from tests.fake_openai import FakeOpenAI

FINISH_REASONS = {"stop", "length", "budget", "empty"}
BACKENDS = ["transformers-batched", "transformers-one-at-a-time", "openai-parser", "openai-tags"]


@pytest.fixture(params=BACKENDS)
def engine(
    request: pytest.FixtureRequest,
    tiny_batched: TransformersEngine,
    tiny_engine: TransformersEngine,
    tiny_settings: Settings,
    openai_server: FakeOpenAI,
) -> Iterator[Engine]:
    """Each backend in turn, behind the same interface."""
    if request.param == "transformers-batched":
        yield tiny_batched
        return
    if request.param == "transformers-one-at-a-time":
        yield tiny_engine
        return
    openai_server.reset()
    openai_server.reasoning_parser = request.param == "openai-parser"
    settings = tiny_settings.replace(
        backend="openai",
        openai_base_url=openai_server.url,
        openai_model=openai_server.model_name,
    )
    built = build_engine(settings)
    assert isinstance(built, OpenAIEngine)
    yield built
    built.close()
    openai_server.reset()


def slack(engine: Engine) -> int:
    """Tokens a budget may be overrun by: a server's stream chunk may carry a few tokens (a
    character split over tokens, speculative decoding); the transformers engine counts exactly."""
    return 0 if isinstance(engine, TransformersEngine) else 3


def collect(engine: Engine, req: GenerationRequest) -> tuple[list[Any], Generation]:
    events = list(engine.stream(req))
    done = events[-1]
    assert done.kind == "done" and done.generation is not None
    return events, done.generation


def test_answer_with_sane_counts(engine: Engine) -> None:
    generation = engine.generate(request())
    assert generation.answer.strip()
    assert generation.finish_reason in FINISH_REASONS
    assert generation.prompt_tokens > 0
    assert 0 <= generation.reasoning_tokens <= 24 + slack(engine)
    assert 0 <= generation.answer_tokens <= 12 + slack(engine)
    assert generation.extra["request_id"] == "r1"
    for text in (generation.answer, generation.reasoning):
        assert "<think>" not in text and "</think>" not in text and "<|im_end|>" not in text


def test_budget_forces_an_answer(engine: Engine) -> None:
    generation = engine.generate(request(thinking_budget=4, max_new_tokens=8))
    assert generation.finish_reason == "budget"
    assert 0 < generation.reasoning_tokens <= 4 + slack(engine)
    assert generation.reasoning
    assert generation.answer and generation.answer != FALLBACK_ANSWER


def test_zero_budget_skips_reasoning(engine: Engine) -> None:
    generation = engine.generate(request(thinking_budget=0, max_new_tokens=6))
    assert generation.finish_reason in {"budget", "empty"}
    assert (generation.reasoning, generation.reasoning_tokens) == ("", 0)
    assert generation.answer


@pytest.mark.parametrize("seed", [1, 2])
def test_stream_pieces_add_up_to_the_generation(engine: Engine, seed: int) -> None:
    events, generation = collect(engine, request(seed=seed, thinking_budget=30, max_new_tokens=20))
    assert [e.kind for e in events].count("done") == 1
    assert "".join(e.text for e in events if e.kind == "reasoning") == generation.reasoning
    assert "".join(e.text for e in events if e.kind == "answer") == generation.answer
    kinds = [e.kind for e in events[:-1]]
    assert kinds == sorted(kinds, key=lambda kind: kind != "reasoning")  # reasoning first
    assert all(e.text for e in events[:-1])


def test_seed_makes_generation_reproducible(engine: Engine) -> None:
    first = engine.generate(request(seed=123))
    second = engine.generate(request(seed=123))
    other = engine.generate(request(seed=124))
    assert (first.reasoning, first.answer) == (second.reasoning, second.answer)
    assert (first.reasoning, first.answer) != (other.reasoning, other.answer)


def test_deadline_in_the_past(engine: Engine) -> None:
    with pytest.raises(TimeoutError):
        engine.generate(request(deadline=time.time() - 1))
    with pytest.raises(TimeoutError):
        list(engine.stream(request(deadline=time.time() - 1)))


def test_deadline_stops_a_long_generation(engine: Engine) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        engine.generate(request(temperature=0.0, thinking_budget=3000, deadline=time.time() + 0.3))
    assert time.monotonic() - started < 10


def test_conversation_too_long_for_the_context(engine: Engine) -> None:
    long = [{"role": "user", "content": "water boils " * 3000}]
    with pytest.raises(ValueError, match="context"):
        engine.generate(request(messages=long))


def test_counts_tokens_of_the_whole_prompt(engine: Engine) -> None:
    assert engine.context_length == 4096
    one = engine.count_tokens(QUESTION)
    longer = engine.count_tokens(
        [*QUESTION, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Why?"}]
    )
    assert 0 < one < longer < 200
    # The count is the prompt the engine really sends, as the generation reports it.
    assert engine.generate(request(thinking_budget=2, max_new_tokens=2)).prompt_tokens <= one


def test_concurrent_conversations_one_of_which_fails(engine: Engine) -> None:
    """A request past its deadline fails alone; the others, running at the same time, finish."""
    results: dict[int, Generation] = {}
    errors: dict[int, BaseException] = {}

    def run(i: int) -> None:
        overrides: dict[str, Any] = {"seed": i, "request_id": f"c{i}"}
        if i == 0:  # reasons "forever" and passes its deadline mid-batch
            overrides.update(temperature=0.0, thinking_budget=3000, deadline=time.time() + 0.5)
        try:
            results[i] = engine.generate(request(**overrides))
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert list(errors) == [0] and isinstance(errors[0], TimeoutError)
    assert sorted(results) == [1, 2, 3, 4]
    assert all(g.answer and g.finish_reason in FINISH_REASONS for g in results.values())
    # And the engine goes on serving.
    assert engine.generate(request(seed=99)).answer
