"""Continuous batching: shared forward passes, cancellation that frees KV, failures kept local.

Most tests run the real transformers batch manager on the tiny model (CPU, sdpa). The loop crash
is simulated by a forward pass that raises, standing for a CUDA out-of-memory, which cannot
happen on this machine. The engine's side of a batch with an exact token stream is in
test_decoding.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot.core.settings import Settings
from bot.engine.base import Generation, GenerationRequest
from bot.engine.transformers.batching import BatchCrashed, RequestFailed, Update
from bot.engine.transformers.engine import TransformersEngine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "messages": QUESTION,
        "max_new_tokens": 12,
        "thinking_budget": 24,
        "seed": 7,
        "request_id": "b1",
    }
    values.update(overrides)
    return GenerationRequest(**values)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def run_all(engine: TransformersEngine, requests: list[GenerationRequest]) -> list[Any]:
    """Generate the requests from one thread each; each slot holds a Generation or an error."""
    out: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        try:
            out[i] = engine.generate(requests[i])
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return out


@pytest.fixture
def fresh_batched(tiny_settings: Settings) -> Iterator[TransformersEngine]:
    """A batched engine of its own, for tests that break its loop."""
    engine = TransformersEngine(tiny_settings.replace(continuous_batching=True))
    yield engine
    engine.close()


@pytest.fixture
def forward_calls(tiny_batched: TransformersEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the forward passes of the shared batched engine's model."""
    calls: list[int] = []
    model = tiny_batched.model
    assert model is not None
    real = model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return calls


def test_concurrent_requests_share_forward_passes(
    tiny_batched: TransformersEngine, forward_calls: list[int]
) -> None:
    results = run_all(
        tiny_batched,
        [request(seed=i, request_id=f"s{i}", temperature=0.0) for i in range(6)],
    )
    assert all(isinstance(r, Generation) for r in results), results
    generated = sum(r.reasoning_tokens + r.answer_tokens for r in results)
    assert generated > 60
    # One at a time would take a forward pass per token; together they share them.
    assert len(forward_calls) < generated / 2


def test_deadline_mid_batch_frees_its_kv_memory(tiny_batched: TransformersEngine) -> None:
    assert tiny_batched._batcher is not None
    seen_holding: list[bool] = []

    def watch() -> None:
        for _ in range(50):
            seen_holding.append(bool(tiny_batched._batcher.stats().get("kv_requests")))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with pytest.raises(TimeoutError):
        tiny_batched.generate(
            request(temperature=0.0, thinking_budget=3000, deadline=time.time() + 0.4)
        )
    watcher.join()
    assert any(seen_holding)  # it did hold KV blocks while it ran
    assert wait_until(lambda: tiny_batched._batcher.stats()["kv_requests"] == [])
    assert tiny_batched._batcher.stats()["requests"] == 0


def test_abandoned_stream_cancels_and_frees_kv(tiny_batched: TransformersEngine) -> None:
    assert tiny_batched._batcher is not None
    stream = tiny_batched.stream(request(seed=3, thinking_budget=3000))
    first = next(stream)
    assert first.kind == "reasoning"
    assert tiny_batched._batcher.stats()["kv_requests"]
    stream.close()
    assert wait_until(lambda: tiny_batched._batcher.stats()["kv_requests"] == [])
    assert wait_until(lambda: tiny_batched._batcher.stats()["requests"] == 0)


def test_the_manager_refuses_one_request_and_serves_the_others(
    tiny_batched: TransformersEngine,
) -> None:
    batcher = tiny_batched._batcher
    assert batcher is not None
    prompt = tiny_batched._encode(tiny_batched.prompt(QUESTION))
    good = [batcher.submit(prompt, 8, temperature=0.6, top_p=0.95, seed=i) for i in range(3)]
    bad = batcher.submit(prompt, 8, temperature="hot", top_p=0.95)  # a type the batch rejects
    good.append(batcher.submit(prompt, 8, temperature=0.6, top_p=0.95, seed=9))

    def final(handle: Any) -> Update:
        while True:
            update = handle.get(10)
            assert update is not None, "no update within 10 s"
            if update.finished or update.error:
                return update

    failed = final(bad)
    assert isinstance(failed.error, RequestFailed)
    assert "temperature" in str(failed.error)
    for handle in good:
        update = final(handle)
        assert update.error is None and len(update.tokens) >= 1
    assert batcher.stats()["restarts"] == 0


def test_a_crashed_loop_is_restarted_and_its_requests_retried(
    fresh_batched: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fresh_batched.model
    assert model is not None and fresh_batched._batcher is not None
    real = model.forward
    calls: list[int] = []

    def out_of_memory_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", out_of_memory_once)
    results = run_all(
        fresh_batched, [request(seed=i, request_id=f"k{i}", temperature=0.0) for i in range(3)]
    )
    assert all(isinstance(r, Generation) and r.answer for r in results), results
    assert fresh_batched._batcher.stats()["restarts"] == 1
    # Greedy decoding from where each request was gives what an undisturbed run gives.
    monkeypatch.setattr(model, "forward", real)
    again = run_all(
        fresh_batched, [request(seed=i, request_id=f"k{i}", temperature=0.0) for i in range(3)]
    )
    assert [r.reasoning for r in again] == [r.reasoning for r in results]


def test_a_loop_that_keeps_crashing_fails_its_requests_not_the_worker(
    fresh_batched: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fresh_batched.model
    assert model is not None
    real = model.forward

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(BatchCrashed, match="out of memory"):
        fresh_batched.generate(request())
    monkeypatch.setattr(model, "forward", real)
    assert fresh_batched.generate(request()).answer


def test_closing_fails_waiting_requests(fresh_batched: TransformersEngine) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fresh_batched.generate(request(temperature=0.0, thinking_budget=3000))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert fresh_batched._batcher is not None
    assert wait_until(lambda: fresh_batched._batcher.stats()["requests"] == 1)
    fresh_batched.close()
    thread.join(timeout=10)
    assert errors and "closed" in str(errors[0])


def test_info_reports_the_batch(tiny_batched: TransformersEngine) -> None:
    tiny_batched.generate(request(thinking_budget=2, max_new_tokens=2))
    batching = tiny_batched.info()["batching"]
    assert batching["running"] is True
    assert batching["kv_cache_tokens"] >= tiny_batched.context_length
    assert 0 < batching["kv_free"] <= 1
    json.dumps(tiny_batched.info())


def test_batched_text_is_the_one_at_a_time_text(
    tiny_batched: TransformersEngine, tiny_engine: TransformersEngine
) -> None:
    """Same seed, same tokens: batching (8 at once), the prefix cache after a forced close, the
    per-sequence attention and the sampler change how tokens are computed, not which."""
    requests = [
        request(seed=i, request_id=f"m{i}", thinking_budget=40, max_new_tokens=20) for i in range(8)
    ]
    batched = run_all(tiny_batched, requests)
    alone = [tiny_engine.generate(r) for r in requests]
    assert [(g.reasoning, g.answer, g.finish_reason) for g in batched] == [
        (g.reasoning, g.answer, g.finish_reason) for g in alone
    ]
    assert {g.finish_reason for g in alone} >= {"budget"}


@pytest.mark.parametrize(
    ("q_lengths", "k_lengths"),
    [
        ([1, 3, 1, 2, 1], [5, 3, 7, 6, 2]),  # short decodes share one padded call
        ([1, 1, 4], [300, 9, 4]),  # a long decode: one call per sequence
        ([5], [5]),  # one fresh prefill
    ],
)
def test_per_sequence_attention_equals_the_batch_mask(
    q_lengths: list[int], k_lengths: list[int]
) -> None:
    """varlen_sdpa gives what sdpa gives over the packed batch with its block-diagonal mask."""
    from itertools import accumulate

    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from bot.engine.transformers.batching import varlen_sdpa

    class Attention(torch.nn.Module):
        num_key_value_groups = 4
        is_causal = True

    heads, kv_heads, dim = 8, 2, 16
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, sum(q_lengths), dim, generator=generator)
    k = torch.randn(1, kv_heads, sum(k_lengths), dim, generator=generator)
    v = torch.randn(1, kv_heads, sum(k_lengths), dim, generator=generator)
    mask = torch.full((sum(q_lengths), sum(k_lengths)), float("-inf"))
    q0 = k0 = 0
    for lq, lk in zip(q_lengths, k_lengths, strict=True):
        for i in range(lq):
            mask[q0 + i, k0 : k0 + lk - lq + i + 1] = 0  # causal, aligned to the last key
        q0, k0 = q0 + lq, k0 + lk
    cu_q = torch.tensor([0, *accumulate(q_lengths)], dtype=torch.int32)
    cu_k = torch.tensor([0, *accumulate(k_lengths)], dtype=torch.int32)
    expected, _ = sdpa_attention_forward(Attention(), q, k, v, mask[None, None], scaling=dim**-0.5)
    got, _ = varlen_sdpa(
        Attention(),
        q,
        k,
        v,
        mask[None, None],
        scaling=dim**-0.5,
        cu_seq_lens_q=cu_q,
        cu_seq_lens_k=cu_k,
    )
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_process_that_never_closes_its_engine_still_exits(tiny_data_dir: Any) -> None:
    """The batch loop's thread must not keep a worker alive at shutdown."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "from bot.engine.factory import get_engine\n"
        "from bot.engine.base import GenerationRequest\n"
        "from bot.core.settings import Settings\n"
        f"engine = get_engine(Settings(model='tiny', data_dir={str(tiny_data_dir)!r}, device='cpu'))\n"
        "request = GenerationRequest([{'role': 'user', 'content': 'hi'}], 4, 4)\n"
        "print(engine.generate(request).finish_reason)\n"
    )
    root = Path(__file__).resolve().parents[4]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {"stop", "length", "budget", "empty"}
