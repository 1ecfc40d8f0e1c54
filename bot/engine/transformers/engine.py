"""MiMo-7B-RL (or any Qwen2-architecture checkpoint) run with Hugging Face transformers.

Reasoning is budget-forced: the model reasons until it writes `</think>` or spends
`thinking_budget` tokens; in the second case the engine closes the reasoning itself and lets the
model answer from there, so the user always gets an answer in bounded time.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import GenerationConfig, Qwen2ForCausalLM

from bot.core.settings import Settings
from bot.engine.base import Engine, Generation, GenerationRequest, StreamEvent
from bot.engine.reasoning import THINK_CLOSE, THINK_OPEN, split_reasoning
from bot.engine.transformers.batching import BatchConfig, Batcher
from bot.engine.transformers.decoding import (
    StopCheck,
    check_deadline,
    closing_tokens,
    run_alone,
    run_batched,
    stop_reason,
    strip_eos,
)
from bot.engine.transformers.download import resolve_model
from bot.engine.transformers.loading import (
    dtype_name,
    eos_ids,
    load_model,
    load_tokenizer,
    qwen2_config,
    read_model_config,
    resolve_device,
    resolve_dtype,
)
from bot.engine.transformers.memory import check_gpu_memory, kv_bytes_per_token, kv_cache_tokens
from bot.engine.transformers.sampling import Sampler
from bot.engine.transformers.streaming import stream_events
from bot.engine.transformers.tiny import TINY, quiet_progress

log = logging.getLogger(__name__)

FALLBACK_ANSWER = "Sorry, I could not put an answer together this time. Please ask again."
# What the engine writes after reasoning that ran out of budget, as MiMo itself closes it.
FORCED_CLOSE = "\n" + THINK_CLOSE + "\n\n"


class TransformersEngine(Engine):
    """One Qwen2/MiMo model in this process, shared by every task thread.

    With continuous batching (the default) concurrent requests decode together in one loop;
    without it they run one at a time under a lock. Budget forcing is the same in both.
    """

    name = "transformers"

    def __init__(self, settings: Settings, *, model: Any = None, tokenizer: Any = None) -> None:
        """Load the configured model, or wrap an already built `model` and `tokenizer` (bench)."""
        self.settings = settings
        self.model_name = settings.model.strip()
        self._lock = threading.Lock()
        started = time.perf_counter()
        if model is not None:
            if tokenizer is None:
                raise ValueError("a prebuilt model needs its tokenizer")
            self.source = "(in memory)"
            self.device = model.device
            self.dtype = model.dtype
            self.tokenizer = tokenizer
            model = model.eval()
        else:
            self.device = resolve_device(settings.device)
            self.dtype = resolve_dtype(settings.dtype, self.device)
            self.source = resolve_model(settings)
            config, local = read_model_config(self.source)
            qwen2 = qwen2_config(config)
            if self.device.type == "cuda":
                check_gpu_memory(qwen2, self.dtype, self.device, settings)
            # The tiny checkpoint loads in milliseconds; a progress bar there is only noise.
            quiet = quiet_progress() if self.model_name == TINY else contextlib.nullcontext()
            with quiet:
                self.tokenizer = load_tokenizer(self.source, qwen2, local)
                model = load_model(self.source, qwen2, local, self.device, self.dtype)
        self.model: Qwen2ForCausalLM | None = model  # None once closed
        self.load_seconds = time.perf_counter() - started
        model_limit = int(model.config.max_position_embeddings)
        self.context_length = (
            min(model_limit, settings.context_tokens)
            if settings.context_tokens > 0
            else model_limit
        )
        self.eos_ids = eos_ids(self.tokenizer, model, self.source)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_ids[0]
        # Only our sampler may sample: the checkpoint's defaults would otherwise be merged into
        # every call (and warn when a greedy request meets a default temperature).
        model.generation_config = GenerationConfig(
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id
        )
        self._close_ids = self._encode(FORCED_CLOSE)
        self._closers = closing_tokens(self.tokenizer)
        self.sampler = Sampler()
        self._batcher: Batcher | None = None
        if settings.continuous_batching:
            kv_tokens = kv_cache_tokens(
                settings, model.config, self.dtype, self.device, self.context_length
            )
            self._batcher = Batcher(
                model,
                self.eos_ids,
                self.pad_id,
                BatchConfig(
                    kv_cache_tokens=kv_tokens, max_batch_tokens=max(16, settings.max_batch_tokens)
                ),
                self.sampler,
            )
            self._batcher.start()
        log.info(
            "loaded %s on %s (%s) in %.1f s; %s",
            self.model_name,
            self.device,
            self.dtype,
            self.load_seconds,
            "continuous batching" if self._batcher else "one request at a time",
        )

    # Text helpers

    def _encode(self, text: str) -> list[int]:
        # verbose=False: an over-long prompt gets a clear ValueError below, not a log warning.
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _decode(self, ids: Sequence[int]) -> str:
        # Special tokens stay in: some tokenizers mark <think> special, and split_reasoning
        # removes ChatML tokens from what the user sees anyway.
        text: str = self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return text

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for a conversation: ChatML with an empty system turn, reasoning opened."""
        if not messages or messages[0].get("role") != "system":
            messages = [{"role": "system", "content": ""}, *messages]
        text: str = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        # MiMo always opens its reply with <think>; writing it into the prompt makes every
        # generated token reasoning until </think>, so the budget counts exactly that.
        if not text.rstrip().endswith(THINK_OPEN):
            text += THINK_OPEN
        return text

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the prompt this conversation becomes (chat template and `<think>` included)."""
        return len(self._encode(self.prompt(messages)))

    # Generation

    def generate(self, request: GenerationRequest) -> Generation:
        """Generate the whole answer for one conversation (blocking)."""
        return self._complete(request)

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        """Yield reasoning and answer text as it is generated, then `done` with the Generation."""
        check_deadline(request)

        def complete(on_ids: Callable[[list[int]], None], cancel: threading.Event) -> Generation:
            return self._complete(request, on_ids=on_ids, cancel=cancel)

        yield from stream_events(complete, self._decode, request.request_id)

    def _complete(
        self,
        request: GenerationRequest,
        on_ids: Callable[[list[int]], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Reason within budget, force the close if needed, answer: the whole request."""
        check_deadline(request)
        started = time.perf_counter()
        if self.model is None:
            raise RuntimeError("the engine is closed")
        prompt_ids = self._encode(self.prompt(request.messages))
        room = self.context_length - len(prompt_ids)
        if room <= len(self._close_ids) + 1:
            raise ValueError(
                f"the conversation ({len(prompt_ids)} tokens) does not fit the model's "
                f"context of {self.context_length} tokens; shorten the history"
            )
        # Batched requests run side by side; without batching one request holds the model.
        serial = self._lock if self._batcher is None else contextlib.nullcontext()
        with serial:
            if self.model is None:
                raise RuntimeError("the engine is closed")
            check_deadline(request)
            emit = on_ids or (lambda ids: None)
            completion: list[int] = []  # every token after the prompt, forced ones included

            def emitted(ids: list[int]) -> None:
                completion.extend(ids)
                emit(ids)

            budget = min(request.thinking_budget, room - len(self._close_ids) - 1)
            # What the first pass leaves for the second (alone: its KV cache; batched, the
            # batch's prefix cache does the same).
            carry: dict[str, Any] = {}
            reasoning_ids: list[int] = []
            why = "length"
            if budget > 0:
                reasoning_ids, why = self._run(
                    prompt_ids,
                    budget,
                    request,
                    watch_close=True,
                    on_ids=emitted,
                    cancel=cancel,
                    carry=carry,
                )
            forced = why != "close"
            context = prompt_ids + strip_eos(reasoning_ids, self.eos_ids)
            if forced:
                context += self._close_ids
                emitted(list(self._close_ids))
            answer_room = min(request.max_new_tokens, self.context_length - len(context))
            answer_ids: list[int] = []
            answer_why = "length"
            if answer_room > 0:
                answer_ids, answer_why = self._run(
                    context,
                    answer_room,
                    request,
                    watch_close=False,
                    on_ids=emitted,
                    cancel=cancel,
                    carry=carry,
                )
        reasoning, answer, _ = split_reasoning(THINK_OPEN + self._decode(completion))
        finish = "budget" if forced else ("stop" if answer_why == "eos" else "length")
        if not answer:
            answer, finish = FALLBACK_ANSWER, "empty"
        return Generation(
            answer=answer,
            reasoning=reasoning,
            prompt_tokens=len(prompt_ids),
            reasoning_tokens=len(strip_eos(reasoning_ids, self.eos_ids)),
            answer_tokens=len(strip_eos(answer_ids, self.eos_ids)),
            finish_reason=finish,
            seconds=round(time.perf_counter() - started, 3),
            extra={
                "engine": self.name,
                "model": self.model_name,
                "device": str(self.device),
                "dtype": dtype_name(self.dtype),
                "request_id": request.request_id,
                "batched": self._batcher is not None,
            },
        )

    def _run(
        self,
        input_ids: list[int],
        max_new_tokens: int,
        request: GenerationRequest,
        *,
        watch_close: bool,
        on_ids: Callable[[list[int]], None],
        cancel: threading.Event | None,
        carry: dict[str, Any],
    ) -> tuple[list[int], str]:
        """One decoding pass for one sequence: (new token ids, why it stopped: close|eos|length)."""
        check = StopCheck(self._decode, request.deadline, cancel, watch_close, self._closers)
        if self._batcher is not None:
            new_ids = run_batched(
                self._batcher, input_ids, max_new_tokens, request, check, on_ids=on_ids
            )
        else:
            assert self.model is not None
            new_ids = run_alone(
                self.model,
                input_ids,
                max_new_tokens,
                request,
                check,
                sampler=self.sampler,
                eos_ids=self.eos_ids,
                pad_id=self.pad_id,
                device=self.device,
                on_ids=on_ids,
                carry=carry,
            )
        return new_ids, stop_reason(check, new_ids, self.eos_ids, request)

    # Operations

    def info(self) -> dict[str, Any]:
        """Model, device, dtype, size in parameters and bytes, batching and GPU memory."""
        out: dict[str, Any] = {
            "engine": self.name,
            "model": self.model_name,
            "source": self.source,
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "context_length": self.context_length,
            "load_seconds": round(self.load_seconds, 2),
            "batching": self._batcher.stats() if self._batcher else "one request at a time",
        }
        model = self.model
        if model is None:
            out["closed"] = True
            return out
        params = list(model.parameters())
        out["parameters"] = sum(p.numel() for p in params)
        out["weight_bytes"] = sum(p.numel() * p.element_size() for p in params) + sum(
            b.numel() * b.element_size() for b in model.buffers()
        )
        out["kv_bytes_per_token"] = kv_bytes_per_token(model.config, self.dtype)
        if self.device.type == "cuda":
            index = self.device.index or 0
            props = torch.cuda.get_device_properties(index)
            out["cuda"] = {
                "name": props.name,
                "total_bytes": props.total_memory,
                "allocated_bytes": torch.cuda.memory_allocated(index),
                "reserved_bytes": torch.cuda.memory_reserved(index),
                "max_allocated_bytes": torch.cuda.max_memory_allocated(index),
            }
        return out

    def close(self) -> None:
        """Stop the batch loop, drop the model and give its GPU memory back."""
        if self._batcher is not None:
            self._batcher.close()
        with self._lock:
            self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
