"""Temperature + top-p sampling with per-request seeds, shared by batched and one-at-a-time decoding.

Why not transformers' own warpers: in a continuous batch every request carries its own
temperature, top_p and seed, and transformers' batch sampler draws from one global RNG after a
full vocabulary sort per row. Here each row is sampled exactly (top-p included) by rejection:

1. draw a token from softmax(logits / T) with the exponential race (argmax p_i / E_i, E_i ~
   Exp(1), which picks i with probability p_i), from the request's own generator;
2. accept it if the probability mass of the tokens strictly more likely than it is below top_p,
   which is exactly "it lies in the nucleus"; otherwise draw again.

Acceptance is at least top_p per draw (0.95 for MiMo), so a row needs ~1.05 O(vocab) passes
instead of a sort. After `MAX_DRAWS` rejections (probability < 1e-10) the most likely token,
which is always in the nucleus, is taken. Noise for a seeded request depends only on
(seed, position, draw), so the same seed gives the same text in a batch or alone (as far as the
logits agree: different batch shapes may round differently).

Temperature <= 0 means greedy. The result is returned as scores with 0 at the chosen token and
-inf elsewhere, so the caller's greedy argmax (generate's or the batch loop's) picks it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
)

MAX_DRAWS = 8
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class RowParams:
    """How to pick the next token of one sequence: sampling settings and where it stands."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    position: int = 0  # tokens before the one being chosen (prompt + generated so far)


GREEDY = RowParams()


def _mix(*values: int) -> int:
    """A well-spread 63-bit seed from a few integers (splitmix64 finalizer over each)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h & ((1 << 63) - 1)


class Sampler:
    """Picks one token per row; holds the generator of unseeded requests (never the global RNG)."""

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self._shared: dict[torch.device, torch.Generator] = {}
        self._lock = threading.Lock()

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        with self._lock:
            gen = self._shared.get(device)
            if gen is None:
                gen = torch.Generator(device=device)
                gen.manual_seed(self._seed)
                self._shared[device] = gen
            return gen

    def _noise(self, probs: torch.Tensor, rows: Sequence[RowParams], draw: int) -> torch.Tensor:
        noise = torch.empty_like(probs)
        seeded = [i for i, r in enumerate(rows) if r.seed is not None]
        if len(seeded) < len(rows):
            noise.exponential_(generator=self._shared_generator(probs.device))
        for i in seeded:
            gen = torch.Generator(device=probs.device)
            gen.manual_seed(_mix(rows[i].seed or 0, rows[i].position, draw))
            noise[i].exponential_(generator=gen)
        # A zero draw would divide by zero; its probability is ~2^-24 per token and the clamp
        # only makes that token win the race, as it would have anyway.
        return noise.clamp_min_(1e-30)

    @torch.no_grad()
    def choose(self, scores: torch.Tensor, rows: Sequence[RowParams]) -> torch.Tensor:
        """The chosen token id of each row of `scores` ([rows, vocab] logits), as a long tensor."""
        chosen = scores.argmax(dim=-1)
        picked = [i for i, r in enumerate(rows) if r.temperature > 0]
        if not picked:
            return chosen
        index = torch.tensor(picked, device=scores.device)
        params = [rows[i] for i in picked]
        temps = torch.tensor([r.temperature for r in params], device=scores.device)
        top_p = torch.tensor([r.top_p for r in params], device=scores.device)
        probs = torch.softmax(scores.index_select(0, index).float() / temps[:, None], dim=-1)
        result = probs.argmax(dim=-1)  # the fallback: the top token is always in the nucleus
        pending = list(range(len(params)))
        for draw in range(MAX_DRAWS):
            if not pending:
                break
            at = torch.tensor(pending, device=scores.device)
            p = probs.index_select(0, at)
            candidate = (p / self._noise(p, [params[i] for i in pending], draw)).argmax(dim=-1)
            p_candidate = p.gather(1, candidate[:, None])
            above = torch.where(p > p_candidate, p, torch.zeros_like(p)).sum(dim=-1)
            accepted = (above < top_p.index_select(0, at)) | (top_p.index_select(0, at) >= 1.0)
            result[at[accepted]] = candidate[accepted]
            pending = [i for i, ok in zip(pending, accepted.tolist(), strict=True) if not ok]
        chosen[index] = result
        return chosen

    def as_scores(self, scores: torch.Tensor, rows: Sequence[RowParams]) -> torch.Tensor:
        """Scores whose argmax is the chosen token: 0 there, -inf elsewhere."""
        chosen = self.choose(scores, rows)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen[:, None], 0.0)
        return out


class SamplingProcessor(LogitsProcessor):
    """`generate()` hook for one request: pass with do_sample=False, it does the sampling."""

    def __init__(self, sampler: Sampler, temperature: float, top_p: float, seed: int | None):
        self.sampler = sampler
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        position = int(input_ids.shape[-1])
        row = RowParams(self.temperature, self.top_p, self.seed, position)
        return cast(torch.FloatTensor, self.sampler.as_scores(scores, [row] * scores.shape[0]))


def sampling_kwargs(temperature: float, top_p: float, seed: int | None) -> dict[str, Any]:
    """Per-request keyword arguments the batch loop hands to `BatchSamplingProcessor`."""
    kwargs: dict[str, Any] = {"temperature": float(temperature), "top_p": float(top_p)}
    if seed is not None:
        kwargs["seed"] = int(seed)
    return kwargs


class BatchSamplingProcessor(ContinuousBatchingLogitsProcessor):
    """The continuous-batching form: one row per request that gets a token in this step.

    The batch loop calls `prepare_tensor_args` then `__call__` on its own thread, in that order,
    for each step (synchronous batching, no CUDA graphs), so the rows are kept on the object.
    """

    supported_kwargs: dict[str, type] = {"temperature": float, "top_p": float, "seed": int}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self._rows: list[RowParams] = []

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        """No tensor defaults: the rows travel on the object."""
        int32_tensor.zero_()

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        """Remember each row's sampling settings and position for the coming `__call__`."""
        rows = []
        for future in requests_with_new_token:
            state = future.state
            kw = state.logit_processor_kwargs
            rows.append(
                RowParams(
                    temperature=kw.get("temperature", 0.0),
                    top_p=kw.get("top_p", 1.0),
                    seed=kw.get("seed"),
                    position=len(state.initial_tokens) + len(state.generated_tokens),
                )
            )
        self._rows = rows
        return torch.zeros(len(rows), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        """Sample the rows; rows past the requests with a new token are padding, decoded greedily."""
        rows = self._rows[: scores.shape[0]]
        rows += [GREEDY] * (scores.shape[0] - len(rows))
        return self.sampler.as_scores(scores, rows)


class BatchSamplingList(ContinuousBatchingLogitsProcessorList):
    """The processor list a batch manager runs: our sampler alone, with one argument row."""

    def __init__(self, sampler: Sampler) -> None:
        super().__init__(LogitsProcessorList([BatchSamplingProcessor(sampler)]))
        # The base class only counts argument rows for warpers it converts itself.
        self.tensors_required = 1
