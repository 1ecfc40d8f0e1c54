"""TransformersEngine on the tiny checkpoint: prompts, budget forcing, streaming, errors.

Loading and refused checkpoints are in test_loading.py, memory sizing in test_memory.py.

The tiny model's weights are random, so its text is noise; tests that need a particular shape of
output (a `</think>` written by the model, an early end of turn) script the token stream by
replacing `model.generate` with a fake that honours the same stopping criteria and streamer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from bot.core.settings import Settings
from bot.engine.base import Generation
from bot.engine.transformers.engine import FALLBACK_ANSWER, FORCED_CLOSE, TransformersEngine
from tests.bot.engine.builders import QUESTION, request

FINISH_REASONS = {"stop", "length", "budget", "empty"}


class ScriptedGenerate:
    """Stands in for model.generate: emits scripted token ids, one call per script."""

    def __init__(self, engine: TransformersEngine, scripts: list[list[int]], delay: float = 0.0):
        self.engine = engine
        self.scripts = list(scripts)
        self.delay = delay
        self.inputs: list[list[int]] = []

    def __call__(
        self,
        input_ids: torch.Tensor,
        generation_config: Any,
        stopping_criteria: Any,
        streamer: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        self.inputs.append(input_ids[0].tolist())
        script = self.scripts.pop(0)
        sequence = input_ids
        streamer.put(sequence)
        for token in script[: generation_config.max_new_tokens]:
            time.sleep(self.delay)
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
            streamer.put(torch.tensor([token]))
            if token in generation_config.eos_token_id or stopping_criteria(sequence, None).all():
                break
        streamer.end()
        return sequence


@pytest.fixture
def script(
    tiny_engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., ScriptedGenerate]:
    """Install a ScriptedGenerate on the shared engine for one test."""

    def install(*scripts: list[int], delay: float = 0.0) -> ScriptedGenerate:
        fake = ScriptedGenerate(tiny_engine, list(scripts), delay)
        monkeypatch.setattr(tiny_engine.model, "generate", fake)
        return fake

    return install


def byte_token(byte: int) -> str:
    """The byte-level BPE symbol for one raw byte (GPT-2's printable mapping)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if byte in printable:
        return chr(byte)
    return chr(256 + sorted(set(range(256)) - set(printable)).index(byte))


def ids(engine: TransformersEngine, *pieces: str) -> list[int]:
    """Token ids of the pieces, each encoded on its own (so `</` + `think>` stays two tokens)."""
    return [i for piece in pieces for i in engine._encode(piece)]


# Prompt and info


def test_prompt_has_empty_system_turn_and_opens_reasoning(tiny_engine: TransformersEngine) -> None:
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>greet</think>\n\nHello!"},
        {"role": "user", "content": "2+2?"},
    ]
    assert tiny_engine.prompt(history) == (
        "<|im_start|>system\n<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>"
    )


def test_prompt_keeps_a_given_system_turn(tiny_engine: TransformersEngine) -> None:
    text = tiny_engine.prompt([{"role": "system", "content": "Be brief."}, *QUESTION])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert text.count("<|im_start|>system") == 1


def test_info(tiny_engine: TransformersEngine) -> None:
    info = tiny_engine.info()
    assert info["engine"] == "transformers"
    assert info["model"] == "tiny"
    assert (info["device"], info["dtype"]) == ("cpu", "float32")
    assert 100_000 < info["parameters"] < 1_000_000
    assert info["weight_bytes"] >= info["parameters"] * 4
    assert info["context_length"] == 4096
    assert "cuda" not in info
    json.dumps(info)


# Generation on the real (random) tiny model


def test_generate_returns_an_answer_with_sane_counts(tiny_engine: TransformersEngine) -> None:
    generation = tiny_engine.generate(request())
    assert isinstance(generation, Generation)
    assert generation.answer.strip()
    assert generation.finish_reason in FINISH_REASONS
    assert generation.prompt_tokens == len(tiny_engine._encode(tiny_engine.prompt(QUESTION)))
    assert 0 < generation.reasoning_tokens <= 24
    assert 0 <= generation.answer_tokens <= 12
    assert generation.seconds >= 0
    assert generation.extra["model"] == "tiny"
    assert generation.extra["device"] == "cpu"
    assert generation.extra["request_id"] == "r1"
    for text in (generation.answer, generation.reasoning):
        assert "<think>" not in text and "</think>" not in text and "<|im_end|>" not in text


def test_tiny_budget_forces_the_answer(tiny_engine: TransformersEngine) -> None:
    generation = tiny_engine.generate(request(thinking_budget=4, max_new_tokens=8))
    assert generation.finish_reason == "budget"
    assert generation.reasoning_tokens <= 4
    assert generation.answer
    assert generation.answer != FALLBACK_ANSWER


def test_zero_budget_skips_reasoning(tiny_engine: TransformersEngine) -> None:
    generation = tiny_engine.generate(request(thinking_budget=0, max_new_tokens=6))
    assert generation.finish_reason in {"budget", "empty"}
    assert (generation.reasoning, generation.reasoning_tokens) == ("", 0)
    assert generation.answer


def test_seed_makes_generation_reproducible(tiny_engine: TransformersEngine) -> None:
    first = tiny_engine.generate(request(seed=123))
    second = tiny_engine.generate(request(seed=123))
    other = tiny_engine.generate(request(seed=124))
    assert (first.reasoning, first.answer) == (second.reasoning, second.answer)
    assert (first.reasoning, first.answer) != (other.reasoning, other.answer)


def test_seed_leaves_the_global_rng_alone(tiny_engine: TransformersEngine) -> None:
    state = torch.random.get_rng_state()
    tiny_engine.generate(request(seed=5, thinking_budget=2, max_new_tokens=2))
    assert torch.equal(state, torch.random.get_rng_state())


def test_greedy_is_deterministic_without_a_seed(tiny_engine: TransformersEngine) -> None:
    a = tiny_engine.generate(request(seed=None, temperature=0.0))
    b = tiny_engine.generate(request(seed=None, temperature=0.0))
    assert a.to_dict() | {"seconds": 0} == b.to_dict() | {"seconds": 0}
    assert a.answer  # the fallback when the random model says nothing useful


def test_stream_pieces_add_up_to_the_generation(tiny_engine: TransformersEngine) -> None:
    for seed in (1, 2, 3):
        events = list(tiny_engine.stream(request(seed=seed, thinking_budget=30, max_new_tokens=20)))
        assert [e.kind for e in events].count("done") == 1
        done = events[-1]
        assert done.kind == "done" and done.generation is not None
        reasoning = "".join(e.text for e in events if e.kind == "reasoning")
        answer = "".join(e.text for e in events if e.kind == "answer")
        assert reasoning == done.generation.reasoning
        assert answer == done.generation.answer
        kinds = [e.kind for e in events[:-1]]
        # Reasoning first, then the answer, never interleaved.
        assert kinds == sorted(kinds, key=lambda kind: kind != "reasoning")
        assert all(e.text for e in events[:-1])
        blocking = tiny_engine.generate(request(seed=seed, thinking_budget=30, max_new_tokens=20))
        assert (blocking.reasoning, blocking.answer) == (
            done.generation.reasoning,
            done.generation.answer,
        )


def test_deadline_in_the_past_raises(tiny_engine: TransformersEngine) -> None:
    with pytest.raises(TimeoutError):
        tiny_engine.generate(request(deadline=time.time() - 1))
    with pytest.raises(TimeoutError):
        list(tiny_engine.stream(request(deadline=time.time() - 1)))


def test_deadline_stops_a_long_generation(tiny_engine: TransformersEngine) -> None:
    # Greedy decoding of the random model repeats one token and never ends the turn by itself.
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        tiny_engine.generate(
            request(temperature=0.0, thinking_budget=3000, deadline=time.time() + 0.2)
        )
    assert time.monotonic() - started < 10


def test_concurrent_requests_are_served_one_at_a_time(tiny_engine: TransformersEngine) -> None:
    results: list[Generation] = []
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            results.append(tiny_engine.generate(request(seed=seed)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(results) == 4 and all(r.answer for r in results)


def test_conversation_too_long_for_the_context(tiny_engine: TransformersEngine) -> None:
    long = [{"role": "user", "content": "water boils " * 3000}]
    with pytest.raises(ValueError, match="context"):
        tiny_engine.generate(request(messages=long))


# Budget forcing with a scripted token stream


def test_reasoning_closed_by_the_model(tiny_engine: TransformersEngine, script: Callable) -> None:
    eos = tiny_engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    reasoning = ids(tiny_engine, "\nThe capital", " is Paris.\n", "</", "think", ">")
    fake = script(
        reasoning + ids(tiny_engine, "never reached"),
        ids(tiny_engine, "\n\n", "Paris.") + [eos],
    )
    generation = tiny_engine.generate(request(thinking_budget=100, max_new_tokens=20))
    assert (generation.reasoning, generation.answer) == ("The capital is Paris.", "Paris.")
    assert generation.finish_reason == "stop"
    assert generation.reasoning_tokens == len(reasoning)
    assert generation.answer_tokens == len(ids(tiny_engine, "\n\n", "Paris."))
    # The answer pass continues right after the model's own </think>, with nothing forced.
    assert fake.inputs[1] == fake.inputs[0] + reasoning


def test_budget_spent_forces_the_close(tiny_engine: TransformersEngine, script: Callable) -> None:
    thinking = ids(tiny_engine, *["hmm "] * 6)
    fake = script(thinking, ids(tiny_engine, "Paris", "."))
    generation = tiny_engine.generate(request(thinking_budget=4, max_new_tokens=5))
    assert generation.finish_reason == "budget"
    assert generation.reasoning_tokens == 4
    assert generation.reasoning == tiny_engine._decode(thinking[:4]).strip()
    assert generation.answer == "Paris."
    assert fake.inputs[1] == fake.inputs[0] + thinking[:4] + tiny_engine._encode(FORCED_CLOSE)


def test_answer_that_hits_max_new_tokens(tiny_engine: TransformersEngine, script: Callable) -> None:
    answer = ids(tiny_engine, "one two three four")
    script(ids(tiny_engine, "ok", "</think>"), answer)
    generation = tiny_engine.generate(request(max_new_tokens=2))
    assert generation.finish_reason == "length"
    assert generation.answer_tokens == 2
    assert generation.answer == tiny_engine._decode(answer[:2]).strip()


def test_end_of_turn_while_reasoning_still_gets_an_answer(
    tiny_engine: TransformersEngine, script: Callable
) -> None:
    eos = tiny_engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    thinking = ids(tiny_engine, "thinking")
    fake = script(thinking + [eos], ids(tiny_engine, "Answer."))
    generation = tiny_engine.generate(request())
    assert (generation.reasoning, generation.answer) == ("thinking", "Answer.")
    assert generation.finish_reason == "budget"
    assert generation.reasoning_tokens == len(thinking)
    # The end-of-turn token is dropped from the context; the engine closes the reasoning.
    assert fake.inputs[1] == fake.inputs[0] + thinking + tiny_engine._encode(FORCED_CLOSE)


def test_empty_answer_falls_back(tiny_engine: TransformersEngine, script: Callable) -> None:
    eos = tiny_engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    script(ids(tiny_engine, "hmm", "</think>"), ids(tiny_engine, "\n\n") + [eos])
    generation = tiny_engine.generate(request())
    assert generation.answer == FALLBACK_ANSWER
    assert generation.finish_reason == "empty"


def test_stream_with_split_tags_and_forced_close(
    tiny_engine: TransformersEngine, script: Callable
) -> None:
    eos = tiny_engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    # "北" as three one-byte tokens: no piece may show half a character.
    beijing = [tiny_engine.tokenizer.convert_tokens_to_ids(byte_token(b)) for b in "北".encode()]
    assert len(set(beijing)) == 3 and tiny_engine.tokenizer.unk_token_id not in beijing
    thinking = ids(tiny_engine, "Think", " <", "|im") + beijing + ids(tiny_engine, " more")
    script(thinking, ids(tiny_engine, "Done", " <", "thi", "nk>", " here") + [eos])
    events = list(tiny_engine.stream(request(thinking_budget=len(thinking), max_new_tokens=20)))
    generation = events[-1].generation
    assert generation is not None
    assert generation.reasoning == "Think <|im北 more"
    assert generation.answer == "Done  here"
    assert generation.finish_reason == "budget"
    pieces = [e.text for e in events[:-1]]
    assert not any("\ufffd" in p or p.endswith("<") for p in pieces)
    assert "".join(e.text for e in events if e.kind == "reasoning") == generation.reasoning
    assert "".join(e.text for e in events if e.kind == "answer") == generation.answer


def test_deadline_during_a_scripted_stream(
    tiny_engine: TransformersEngine, script: Callable
) -> None:
    script(ids(tiny_engine, *["word "] * 50), delay=0.02)
    with pytest.raises(TimeoutError):
        list(tiny_engine.stream(request(thinking_budget=50, deadline=time.time() + 0.1)))


def test_abandoned_stream_frees_the_engine(
    tiny_engine: TransformersEngine, script: Callable
) -> None:
    fake = script(ids(tiny_engine, *["word "] * 200), ids(tiny_engine, "x"), delay=0.01)
    stream = tiny_engine.stream(request(thinking_budget=200))
    first = next(stream)
    assert first.kind == "reasoning"
    stream.close()
    started = time.monotonic()
    assert tiny_engine._lock.acquire(timeout=5)
    tiny_engine._lock.release()
    assert time.monotonic() - started < 1
    assert len(fake.inputs) == 1  # the cancelled request never went on to its answer


def test_closed_engine_refuses_work(tiny_settings: Settings) -> None:
    engine = TransformersEngine(tiny_settings)
    engine.close()
    assert engine.info()["closed"] is True
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(request())
