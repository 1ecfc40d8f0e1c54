"""TransformersEngine on the tiny checkpoint: prompts, budget forcing, streaming, errors.

The tiny model's weights are random, so its text is noise; tests that need a particular shape of
output (a `</think>` written by the model, an early end of turn) script the token stream by
replacing `model.generate` with a fake that honours the same stopping criteria and streamer.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config

from bot.core.settings import Settings
from bot.engine import build_engine
from bot.engine.base import Generation
from bot.engine.transformers.engine import (
    FALLBACK_ANSWER,
    FORCED_CLOSE,
    TransformersEngine,
    ensure_fits,
    kv_bytes_per_token,
    plan_kv_cache,
    resolve_device,
    resolve_dtype,
    weight_bytes,
)
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


# Prompt and loading


def test_build_engine_names_this_backend(tiny_settings: Settings) -> None:
    engine = build_engine(tiny_settings)
    try:
        assert isinstance(engine, TransformersEngine)
    finally:
        engine.close()


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


# Settings and checkpoints the engine refuses or accepts


def test_missing_directory(tiny_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        TransformersEngine(tiny_settings.replace(model=str(tmp_path / "nowhere")))


def test_hub_id_that_cannot_be_fetched(
    tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def offline(repo_id: str, filename: str, **kwargs: Any) -> str:
        raise OSError("no connection to huggingface.co")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="mimochat download"):
        TransformersEngine(tiny_settings.replace(model="XiaomiMiMo/MiMo-7B-RL"))


def test_neither_directory_nor_hub_id(tiny_settings: Settings) -> None:
    with pytest.raises(ValueError, match="neither an existing directory nor a valid hub id"):
        TransformersEngine(tiny_settings.replace(model="no such model!"))


def test_directory_without_config_or_weights(tiny_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no config.json"):
        TransformersEngine(tiny_settings.replace(model=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ValueError, match="no weights"):
        TransformersEngine(tiny_settings.replace(model=str(tmp_path)))


def test_other_architecture_is_refused(tiny_settings: Settings, tmp_path: Path) -> None:
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="'llama' model.*Qwen2"):
        TransformersEngine(tiny_settings.replace(model=str(tmp_path)))


def test_mimo_checkpoint_loads_as_qwen2(
    tiny_settings: Settings,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
    capfd: pytest.CaptureFixture,
) -> None:
    mimo = tmp_path / "MiMo-tiny"
    shutil.copytree(tiny_model_dir, mimo)
    config = json.loads((mimo / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config.update(
        model_type="mimo",
        architectures=["MiMoForCausalLM"],
        auto_map={"AutoModelForCausalLM": "modeling_mimo.MiMoForCausalLM"},
        num_nextn_predict_layers=1,
        rope_theta=rope["rope_theta"],
        rope_scaling=None,
    )
    (mimo / "config.json").write_text(json.dumps(config))
    weights = load_file(mimo / "model.safetensors")
    weights["model.mtp_layers.0.input_layernorm.weight"] = torch.ones(64)
    weights["model.mtp_layers.0.input_proj.weight"] = torch.zeros(64, 128)
    save_file(weights, mimo / "model.safetensors", metadata={"format": "pt"})
    capfd.readouterr()

    engine = TransformersEngine(tiny_settings.replace(model=str(mimo)))
    try:
        generation = engine.generate(request(thinking_budget=3, max_new_tokens=3))
        assert generation.answer
        assert engine.info()["parameters"] == tiny_engine.info()["parameters"]
    finally:
        engine.close()
    # The MTP weights are skipped without a load report full of UNEXPECTED keys.
    assert "mtp_layers" not in "".join(capfd.readouterr())


def test_closed_engine_refuses_work(tiny_settings: Settings) -> None:
    engine = TransformersEngine(tiny_settings)
    engine.close()
    assert engine.info()["closed"] is True
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(request())


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [("tpu", ValueError, "MIMOCHAT_DEVICE"), ("nonsense!", ValueError, "MIMOCHAT_DEVICE")],
)
def test_bad_device(name: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu() -> None:
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu")


def test_dtypes() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match="MIMOCHAT_DTYPE"):
        resolve_dtype("int4", cpu)


# Memory: KV cache per token, weights, and what fits on a device

MIMO = Qwen2Config(
    vocab_size=151680,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=32768,
    tie_word_embeddings=False,
)


def test_mimo_kv_and_weight_bytes() -> None:
    # 2 (K and V) x 36 layers x 8 KV heads x 128 head dim x 2 bytes (bf16)
    assert kv_bytes_per_token(MIMO, torch.bfloat16) == 147_456
    assert kv_bytes_per_token(MIMO, torch.float32) == 2 * 147_456
    # 7.6 B parameters without the MTP layer: ~15.2 GB in bf16.
    assert 15.1e9 < weight_bytes(MIMO, torch.bfloat16) < 15.3e9


def test_weight_bytes_match_a_real_model(tiny_engine: TransformersEngine) -> None:
    assert tiny_engine.model is not None
    parameters = tiny_engine.info()["parameters"]
    assert weight_bytes(tiny_engine.model.config, torch.float32) == parameters * 4


@pytest.mark.parametrize(
    ("wanted", "free_gib", "expected"),
    [
        (8 * 32768, 80, 8 * 32768),  # an 80 GB GPU after the weights: all 8 full conversations
        (8 * 32768, 20, int(20 * 2**30 * 0.85) // 147_456),  # cut to what fits
    ],
)
def test_kv_cache_plan(wanted: int, free_gib: int, expected: int) -> None:
    assert plan_kv_cache(wanted, 147_456, free_gib * 2**30, 0.85, 32768, "cuda:0") == expected


def test_kv_cache_that_cannot_hold_one_conversation() -> None:
    with pytest.raises(RuntimeError, match=r"one conversation of 32768 tokens needs 4\.5 GiB"):
        plan_kv_cache(8 * 32768, 147_456, 4 * 2**30, 0.85, 32768, "cuda:0")


def test_too_little_gpu_memory_says_how_much_is_needed() -> None:
    weights = weight_bytes(MIMO, torch.bfloat16)
    needed = weights + 32768 * 147_456
    with pytest.raises(
        RuntimeError, match=r"needs 18\.7 GiB \(14\.2 GiB of weights.*12\.0 GiB is free"
    ):
        ensure_fits(needed, 12 * 2**30, "cuda:0", weights)
    ensure_fits(needed, 24 * 2**30, "cuda:0", weights)  # a 24 GB GPU is enough


def test_context_tokens_caps_the_window(tiny_settings: Settings) -> None:
    engine = TransformersEngine(tiny_settings.replace(context_tokens=512))
    try:
        assert engine.context_length == 512
        assert engine.info()["batching"]["kv_cache_tokens"] == tiny_settings.gpu_concurrency * 512
    finally:
        engine.close()
