"""The memory plan: bytes of weights and KV cache, what is free, and how much KV cache to allocate."""

from __future__ import annotations

import logging
from typing import Any

import psutil
import torch

from bot.core.settings import Settings

log = logging.getLogger(__name__)


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes: keys and values of every layer."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(2 * config.num_hidden_layers * heads * head_dim * itemsize)


def weight_bytes(config: Any, dtype: torch.dtype) -> int:
    """Bytes of a Qwen2 model's weights in `dtype`, from its config (MTP layers not loaded)."""
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * (
        getattr(config, "head_dim", None) or hidden // heads
    )
    attention = 2 * hidden * hidden + hidden + 2 * (hidden * kv + kv)  # q, o, q bias; k, v + bias
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    embeddings = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2)
    params = embeddings + layers * per_layer + hidden
    return int(params * torch.empty((), dtype=dtype).element_size())


def free_memory_bytes(device: torch.device) -> int:
    """Memory this process could still allocate on `device` (GPU free memory, or available RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


def plan_kv_cache(
    wanted_tokens: int,
    bytes_per_token: int,
    free_bytes: int,
    memory_fraction: float,
    context_length: int,
    device: str,
) -> int:
    """KV cache tokens to allocate: what is wanted, cut to what fits; an error if not one context.

    One full-length conversation must fit, or a long conversation could never be scheduled.
    """
    affordable = int(free_bytes * memory_fraction) // max(1, bytes_per_token)
    if affordable < context_length:
        raise RuntimeError(
            f"too little memory on {device} for the KV cache: one conversation of "
            f"{context_length} tokens needs {_gib(context_length * bytes_per_token)} "
            f"({bytes_per_token} bytes per token) but {_gib(free_bytes)} is free and "
            f"MIMOCHAT_KV_CACHE_MEMORY={memory_fraction} of it may be used; lower "
            "MIMOCHAT_CONTEXT_TOKENS, raise MIMOCHAT_KV_CACHE_MEMORY or use a larger GPU"
        )
    if affordable < wanted_tokens:
        log.warning(
            "KV cache cut to %d tokens (%.1f full conversations) to fit %s; wanted %d",
            affordable,
            affordable / context_length,
            _gib(int(free_bytes * memory_fraction)),
            wanted_tokens,
        )
    return min(wanted_tokens, affordable)


def kv_cache_tokens(
    settings: Settings, config: Any, dtype: torch.dtype, device: torch.device, context_length: int
) -> int:
    """Tokens of paged KV cache for a loaded model: the setting, or one context per task."""
    wanted = settings.kv_cache_tokens or (max(1, settings.gpu_concurrency) * context_length)
    return plan_kv_cache(
        wanted,
        kv_bytes_per_token(config, dtype),
        free_memory_bytes(device),
        settings.kv_cache_memory,
        context_length,
        str(device),
    )


def check_gpu_memory(
    config: Any, dtype: torch.dtype, device: torch.device, settings: Settings
) -> None:
    """Refuse to load when the weights and one conversation's KV cache cannot fit on the GPU."""
    free = free_memory_bytes(device)
    context = int(config.max_position_embeddings)
    if settings.context_tokens > 0:
        context = min(context, settings.context_tokens)
    needed = weight_bytes(config, dtype) + context * kv_bytes_per_token(config, dtype)
    ensure_fits(needed, free, str(device), weight_bytes(config, dtype))


def ensure_fits(needed: int, free: int, device: str, weights: int) -> None:
    """Raise a RuntimeError that says how much memory is needed when `needed` exceeds `free`."""
    if needed > free:
        raise RuntimeError(
            f"too little GPU memory on {device}: the model needs {_gib(needed)} "
            f"({_gib(weights)} of weights plus the KV cache of one full conversation) "
            f"but {_gib(free)} is free; free the GPU, lower MIMOCHAT_CONTEXT_TOKENS, "
            "or use a GPU with more memory"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
