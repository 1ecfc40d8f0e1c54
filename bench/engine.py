"""Engine throughput: continuous batching against one-at-a-time generate, side by side in one run.

    .venv/bin/python bench/engine.py [--quick] [--device auto|cpu|cuda] [--profile]

Both modes are the real `TransformersEngine` (budget forcing, streaming checks, sampler and all)
over the same in-memory model, driven the way the worker drives it: N threads, one conversation
each, calling `generate()` at the same time. "one at a time" is the engine with
MIMOCHAT_CONTINUOUS_BATCHING=0 (each request holds the model for its whole `generate()`);
"continuous batching" is the default. Every conversation has its own seed, so both modes sample
the same tokens and generate the same number of them.

- CPU: a random-weight Qwen2 of a few tens of millions of parameters (MiMo's proportions: GQA
  4:1, FFN ~2.7x hidden) with the tiny ChatML tokenizer, float32.
- CUDA: MiMo-7B-RL's exact shapes (36 layers, hidden 4096, 32/8 heads, FFN 11008, vocab 151680)
  in bf16 with random weights (nothing is downloaded). Also single-stream tokens/s against the
  memory-bandwidth bound (weight bytes / measured device copy bandwidth).

The table gives aggregate generated tokens/s (reasoning + answer) per concurrency level; the
last line is `speedup@16: <ratio>x`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import platform
import pstats
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The worker's setting (bot.engine.transformers sets it too, but torch is imported here first):
# OpenMP threads that sleep between parallel regions instead of spinning, see bench/RESULTS.md.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import Qwen2Config  # noqa: E402

from bot.core.settings import Settings  # noqa: E402
from bot.engine.base import GenerationRequest  # noqa: E402
from bot.engine.transformers.engine import TransformersEngine  # noqa: E402
from bot.engine.transformers.memory import weight_bytes  # noqa: E402
from bot.engine.transformers.model import MiMoQwen2ForCausalLM  # noqa: E402
from bot.engine.transformers.tiny import build_tokenizer  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "法国的首都是哪里？",
    "The train to Shanghai leaves at half past eight in the morning. When should I leave home?",
    "Can you recommend a good book to read on the weekend?",
    "First, we add the two numbers. Then we divide the result by three. What do we get?",
    "如果订单七天内没有送达，请联系客服。我应该怎么做？",
    "How do I install the package and restart the service?",
    "Water boils at 100 degrees Celsius at sea level. Why is it lower on a mountain?",
]


@dataclass
class Shape:
    """Model shape of the benchmark model."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int | None  # None: the tokenizer's size


CPU_SHAPE = Shape(hidden=1024, layers=4, heads=16, kv_heads=4, ffn=2816, vocab=None)
MIMO_SHAPE = Shape(hidden=4096, layers=36, heads=32, kv_heads=8, ffn=11008, vocab=151680)


def build_model(shape: Shape, vocab: int, device: torch.device, dtype: torch.dtype) -> Any:
    """A random-weight Qwen2 of `shape` directly on `device` (seeded: the same every run)."""
    config = Qwen2Config(
        vocab_size=shape.vocab or vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=32768,
        rope_theta=640000.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with device:
        model = MiMoQwen2ForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def copy_bandwidth(device: torch.device, mib: int) -> float:
    """Bytes per second moved by a device-to-device copy (read + write), best of a few."""
    n = mib * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        started = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * n * 4 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_level(engine: TransformersEngine, n: int, reasoning: int, answer: int) -> tuple[float, int]:
    """n conversations at once, one thread each: (aggregate generated tokens/s, tokens)."""
    tokens = [0] * n
    errors: list[BaseException] = []

    def one(i: int) -> None:
        req = GenerationRequest(
            messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            thinking_budget=reasoning,
            max_new_tokens=answer,
            temperature=0.6,
            top_p=0.95,
            seed=1000 + i,
            request_id=f"bench-{n}-{i}",
        )
        try:
            g = engine.generate(req)
            tokens[i] = g.reasoning_tokens + g.answer_tokens
        except BaseException as exc:  # reported below; a benchmark must not hide failures
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} conversations failed: {errors[0]!r}")
    return sum(tokens) / wall, sum(tokens)


def profile_batched(engine: TransformersEngine, n: int, reasoning: int, answer: int) -> str:
    """Where the decode loop's time goes at n conversations (cProfile of the loop thread)."""
    from transformers.generation.continuous_batching import continuous_api

    profiler = cProfile.Profile()
    cls = continuous_api.ContinuousBatchingManager
    real = cls._generation_loop_body

    def body(self: Any, *args: Any, **kwargs: Any) -> Any:
        profiler.enable()
        try:
            return real(self, *args, **kwargs)
        finally:
            profiler.disable()

    cls._generation_loop_body = body  # only for this measurement; restored below
    try:
        started = time.perf_counter()
        run_level(engine, n, reasoning, answer)
        wall = time.perf_counter() - started
    finally:
        cls._generation_loop_body = real
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())  # tottime over every function
    groups = {
        "matmuls (linear)": ("linear",),
        "attention (sdpa, repeat_kv, cache read/write)": (
            "scaled_dot_product_attention",
            "reshape",
            "index_select",
            "index_copy",
            "repeat_kv",
        ),
        "sampling (softmax, noise, top-p test)": ("sampling.py", "exponential_", "softmax"),
        "norms, rotary, activations": ("pow", "mean", "rsqrt", "silu", "rotate_half", "cat", "mul"),
    }
    sums = dict.fromkeys(groups, 0.0)
    for (filename, _line, name), value in stats.stats.items():
        label = f"{filename}:{name}"
        for group, keys in groups.items():
            if any(k in label for k in keys):
                sums[group] += value[2]
                break
    lines = [f"decode loop busy {total:.2f} s of {wall:.2f} s wall ({n} conversations):"]
    for group, seconds in sums.items():
        lines.append(f"  {group:48s} {seconds:6.2f} s  {100 * seconds / total:5.1f}%")
    rest = total - sum(sums.values())
    lines.append(
        f"  {'Python: scheduling, batch tensors, bookkeeping':48s} {rest:6.2f} s  {100 * rest / total:5.1f}%"
    )
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(15)
    return "\n".join(lines) + "\n" + out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; the last line is `speedup@16: <ratio>x`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short generations, one round")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--levels", default="1,4,16", help="concurrent conversations per level")
    parser.add_argument("--reasoning", type=int, default=None, help="reasoning budget (tokens)")
    parser.add_argument("--answer", type=int, default=None, help="answer tokens")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per cell (median)")
    parser.add_argument("--profile", action="store_true", help="profile the decode loop at 16")
    parser.add_argument(
        "--shape",
        default=None,
        help="hidden,layers,heads,kv_heads,ffn of the CPU model (default: %(prog)s's CPU_SHAPE)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = MIMO_SHAPE if cuda else CPU_SHAPE
    if args.shape:
        hidden, layers, heads, kv_heads, ffn = (int(x) for x in args.shape.split(","))
        shape = Shape(hidden, layers, heads, kv_heads, ffn, shape.vocab)
    levels = [int(x) for x in args.levels.split(",")]
    reasoning = args.reasoning or (64 if args.quick else 256) * (4 if cuda else 1)
    answer = args.answer or (32 if args.quick else 64) * (4 if cuda else 1)
    rounds = args.rounds or (2 if args.quick else 3)

    tokenizer = build_tokenizer()
    started = time.perf_counter()
    model = build_model(shape, len(tokenizer), device, dtype)
    params = sum(p.numel() for p in model.parameters())
    weights = weight_bytes(model.config, dtype)
    settings = Settings(
        model="bench",
        device=str(device),
        context_tokens=reasoning + answer + 256,
        gpu_concurrency=max(levels),
        max_batch_tokens=2048 if cuda else 512,
    )
    one_at_a_time = TransformersEngine(
        settings.replace(continuous_batching=False), model=model, tokenizer=tokenizer
    )
    batched = TransformersEngine(
        settings.replace(continuous_batching=True), model=model, tokenizer=tokenizer
    )
    for engine in (one_at_a_time, batched):  # warm up: first kernels, the batch loop's cache
        run_level(engine, 2, 8, 4)
    setup = time.perf_counter() - started

    if cuda:
        name = torch.cuda.get_device_name(device)
        where = f"{name}, bf16, MiMo-7B-RL shapes with random weights"
    else:
        where = (
            f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, "
            "float32, random-weight Qwen2"
        )
    print(f"# mimochat engine benchmark ({'quick' if args.quick else 'full'})")
    print(
        f"device: {where}; {params / 1e6:.1f}M parameters (hidden {shape.hidden}, "
        f"{shape.layers} layers, {shape.heads}/{shape.kv_heads} heads, FFN {shape.ffn}, "
        f"vocab {model.config.vocab_size}); torch {torch.__version__}; {os.cpu_count()} CPUs"
    )
    print(
        f"workload: each conversation = one question (~30 prompt tokens), reasoning budget "
        f"{reasoning} + answer {answer} tokens (budget forcing), T=0.6 top_p=0.95; "
        f"median of {rounds} round(s); setup {setup:.1f} s"
    )

    rows = []
    for n in levels:
        seq_runs, cb_runs = [], []
        for _ in range(rounds):  # interleaved, so background load hits both modes alike
            seq_runs.append(run_level(one_at_a_time, n, reasoning, answer))
            cb_runs.append(run_level(batched, n, reasoning, answer))
        seq = statistics.median(r[0] for r in seq_runs)
        cb = statistics.median(r[0] for r in cb_runs)
        rows.append((n, seq, cb, seq_runs[0][1], cb_runs[0][1]))
        print(
            f"  {n:>2} conversations: one at a time {seq:8.1f} tok/s, batched {cb:8.1f} tok/s",
            flush=True,
        )

    bandwidth = copy_bandwidth(device, 1024 if cuda else 256)
    bound = bandwidth / weights
    single = rows[0][1] if rows[0][0] == 1 else float("nan")
    print(
        f"memory: weights {weights / 1e6:.0f} MB, copy bandwidth {bandwidth / 1e9:.1f} GB/s -> "
        f"single-stream bound {bound:.1f} tok/s; measured single stream {single:.1f} tok/s "
        f"({100 * single / bound:.0f}% of the bound)"
    )
    if args.profile:
        print(profile_batched(batched, max(levels), reasoning, answer))
    print()
    print("| conversations | one at a time (tok/s) | continuous batching (tok/s) | ratio |")
    print("|---:|---:|---:|---:|")
    for n, seq, cb, seq_tokens, cb_tokens in rows:
        print(f"| {n} | {seq:.1f} | {cb:.1f} | {cb / seq:.2f}x |")
        if seq_tokens != cb_tokens:
            print(f"|   | ({seq_tokens} tokens) | ({cb_tokens} tokens) | |")
    batched.close()
    one_at_a_time.close()
    top = [r for r in rows if r[0] == 16] or rows[-1:]
    print(f"speedup@16: {top[0][2] / top[0][1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
