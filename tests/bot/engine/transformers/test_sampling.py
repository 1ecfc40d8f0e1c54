"""The sampler: exact temperature + top-p, greedy at temperature 0, per-request seeds."""

from __future__ import annotations

import pytest
import torch

from bot.engine.transformers.sampling import GREEDY, BatchSamplingProcessor, RowParams, Sampler

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, -5.0])


def nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The reference distribution: softmax(logits / T), cut to the top-p nucleus, renormalised."""
    probs = torch.softmax(logits / temperature, dim=-1)
    ordered, order = torch.sort(probs, descending=True)
    keep = (torch.cumsum(ordered, 0) - ordered) < top_p
    out = torch.zeros_like(probs)
    out[order[keep]] = ordered[keep]
    return out / out.sum()


@pytest.mark.parametrize(
    ("temperature", "top_p"), [(0.7, 0.8), (1.0, 1.0), (0.6, 0.95), (2.0, 0.5)]
)
def test_draws_follow_the_nucleus_distribution(temperature: float, top_p: float) -> None:
    n = 20000
    rows = [RowParams(temperature, top_p)] * n
    chosen = Sampler(seed=1).choose(LOGITS.expand(n, -1), rows)
    frequency = torch.bincount(chosen, minlength=len(LOGITS)).float() / n
    expected = nucleus(LOGITS, temperature, top_p)
    assert torch.allclose(frequency, expected, atol=0.015), (frequency, expected)
    assert frequency[expected == 0].sum() == 0  # nothing outside the nucleus, ever


def test_temperature_zero_is_greedy() -> None:
    scores = torch.randn(5, 50)
    chosen = Sampler().choose(scores, [GREEDY] * 5)
    assert torch.equal(chosen, scores.argmax(dim=-1))


def test_seed_and_position_fix_the_draw() -> None:
    scores = torch.zeros(1, 1000)  # uniform: every draw depends on the noise alone
    sampler = Sampler()
    draw = [
        int(sampler.choose(scores, [RowParams(1.0, 1.0, seed, pos)])[0])
        for seed, pos in [(5, 10), (5, 10), (5, 11), (6, 10)]
    ]
    assert draw[0] == draw[1]
    assert len({draw[0], draw[2], draw[3]}) == 3
    # The same seeded row gives the same token alone or among other rows.
    mixed = sampler.choose(
        scores.expand(3, -1), [RowParams(1.0, 1.0, None, 0), RowParams(1.0, 1.0, 5, 10), GREEDY]
    )
    assert int(mixed[1]) == draw[0]


def test_unseeded_rows_leave_the_global_rng_alone() -> None:
    scores = torch.randn(4, 100)
    state = torch.random.get_rng_state()
    Sampler().choose(scores, [RowParams(0.6, 0.95)] * 4)
    assert torch.equal(state, torch.random.get_rng_state())


def test_as_scores_makes_the_choice_the_argmax() -> None:
    scores = torch.randn(3, 20)
    out = Sampler(seed=2).as_scores(scores, [RowParams(0.6, 0.95, 1, 0)] * 3)
    assert torch.isinf(out).sum(dim=-1).tolist() == [19, 19, 19]
    assert (out.max(dim=-1).values == 0).all()


class _State:
    def __init__(self, kwargs: dict, initial: int, generated: int) -> None:
        self.logit_processor_kwargs = kwargs
        self.initial_tokens = [0] * initial
        self.generated_tokens = [0] * generated


class _Future:
    def __init__(self, state: _State) -> None:
        self.state = state


def test_batch_processor_reads_each_requests_settings_and_pads() -> None:
    processor = BatchSamplingProcessor(Sampler(seed=3))
    futures = [
        _Future(_State({"temperature": 0.0}, 4, 0)),
        _Future(_State({"temperature": 1.0, "top_p": 1.0, "seed": 9}, 4, 2)),
    ]
    args = processor.prepare_tensor_args(futures)
    assert args.shape == (2,) and args.dtype == torch.int32
    scores = torch.randn(3, 30)  # a third row: a request still prefilling, not sampled
    out = processor(scores, args)
    chosen = out.argmax(dim=-1)
    assert int(chosen[0]) == int(scores[0].argmax())
    alone = Sampler().choose(scores[1:2], [RowParams(1.0, 1.0, 9, 6)])
    assert int(chosen[1]) == int(alone[0])
    assert int(chosen[2]) == int(scores[2].argmax())
