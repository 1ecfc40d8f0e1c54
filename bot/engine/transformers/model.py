"""The model class: Qwen2 that skips MiMo's multi-token-prediction weights and batches well."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen2ForCausalLM


class MiMoQwen2ForCausalLM(Qwen2ForCausalLM):
    """Qwen2ForCausalLM that skips MiMo's multi-token-prediction weights and batches well."""

    # MiMo-7B ships one MTP layer (model.mtp_layers.*) that plain next-token decoding never uses.
    _keys_to_ignore_on_load_unexpected = [r"mtp_layers\."]

    def forward(self, *args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        """The usual forward; a batch mask sliced out of a larger buffer is copied out first.

        Continuous batching hands sdpa a view into its preallocated [max_tokens, cache] mask;
        PyTorch's CPU sdpa is ~1000x slower on a mask whose storage is that whole buffer than on
        a compact copy (3-11 ms against 7 us per call for one decode step), and one small copy
        per forward pass is cheap.
        """
        if isinstance(attention_mask, dict):
            attention_mask = {k: compact_mask(v) for k, v in attention_mask.items()}
        else:
            attention_mask = compact_mask(attention_mask)
        return super().forward(*args, attention_mask=attention_mask, **kwargs)


def compact_mask(mask: Any) -> Any:
    """`mask` with storage of its own size (a copy only when it views a larger buffer)."""
    if not isinstance(mask, torch.Tensor):
        return mask
    if mask.untyped_storage().nbytes() > mask.numel() * mask.element_size():
        return mask.clone()
    return mask
