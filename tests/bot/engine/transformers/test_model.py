"""The model class's mask compaction: a copy only for a view into a larger buffer."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bot.engine.transformers.model import compact_mask

BUFFER = torch.zeros(64, 128, dtype=torch.bool)


@pytest.mark.parametrize(
    ("mask", "copied"),
    [
        (BUFFER[:4, :32], True),  # a batch's slice of the preallocated mask
        (BUFFER, False),  # the whole buffer is already compact
        (torch.zeros(4, 32, dtype=torch.bool), False),
        (None, False),  # no mask at all
    ],
)
def test_compact_mask(mask: Any, copied: bool) -> None:
    out = compact_mask(mask)
    assert (out is not mask) is copied
    if isinstance(mask, torch.Tensor):
        assert torch.equal(out, mask)
        assert out.untyped_storage().nbytes() == out.numel() * out.element_size()
