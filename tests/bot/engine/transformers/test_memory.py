"""The memory plan: KV cache per token, weight bytes, and what fits on a device."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config

from bot.core.settings import Settings
from bot.engine.transformers.engine import TransformersEngine
from bot.engine.transformers.memory import (
    ensure_fits,
    kv_bytes_per_token,
    plan_kv_cache,
    weight_bytes,
)

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
