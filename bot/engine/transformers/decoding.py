"""One decoding pass of one sequence, alone (`model.generate`) or in the running batch.

A pass stops at the deadline, when its consumer cancels, at the end of the turn, at its token
limit, or (while reasoning) when the model writes `</think>`; `stop_reason` says which.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from bot.engine.base import GenerationRequest
from bot.engine.reasoning import THINK_CLOSE
from bot.engine.transformers.batching import BatchCrashed, Batcher, Handle
from bot.engine.transformers.sampling import Sampler, SamplingProcessor, sampling_kwargs

log = logging.getLogger(__name__)

# Enough trailing tokens to see a `</think>` spelled in several pieces.
CLOSE_WINDOW = 16
# Seconds a batched request waits for its next token before it checks deadline and cancel.
_WAIT = 0.1


class Cancelled(Exception):
    """The consumer of a stream went away; stop generating for it."""


class StopCheck:
    """Per-token stop test shared by one generation pass: deadline, cancel and `</think>`."""

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        deadline: float | None,
        cancel: threading.Event | None,
        watch_close: bool,
        closers: frozenset[int] | None = None,
    ) -> None:
        self.decode = decode
        self.deadline = deadline
        self.cancel = cancel
        self.watch_close = watch_close
        # Tokens that can end `</think>` (their text holds ">"); None: any token might.
        self.closers = closers
        self.timed_out = False
        self.cancelled = False
        self.closed = False

    def __call__(self, tail: Sequence[int]) -> bool:
        """Whether to stop, given the newest tokens (`[]` checks only deadline and cancel)."""
        if self.deadline is not None and time.time() >= self.deadline:
            self.timed_out = True
        elif self.cancel is not None and self.cancel.is_set():
            self.cancelled = True
        elif (
            self.watch_close
            and tail
            and (self.closers is None or tail[-1] in self.closers)
            and THINK_CLOSE in self.decode(tail)
        ):
            self.closed = True
        return self.timed_out or self.cancelled or self.closed


class _Criteria(StoppingCriteria):
    def __init__(self, check: StopCheck, prompt_len: int) -> None:
        self.check = check
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        # Copying the tail to the host is only worth it while a </think> may still come.
        tail = (
            input_ids[0, self.prompt_len :][-CLOSE_WINDOW:].tolist()
            if self.check.watch_close
            else []
        )
        done = self.check(tail)
        mask = torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, mask)


class _Sink(BaseStreamer):
    """Passes each new token id to a callback; generate() first hands over the prompt, skipped."""

    def __init__(self, on_ids: Callable[[list[int]], None]) -> None:
        self.on_ids = on_ids
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_ids(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def check_deadline(request: GenerationRequest) -> None:
    """Raise TimeoutError when the request is already past its deadline."""
    if request.deadline is not None and time.time() >= request.deadline:
        raise TimeoutError(f"request {request.request_id or '(no id)'} passed its deadline")


def closing_tokens(tokenizer: Any) -> frozenset[int] | None:
    """Ids of the tokens whose text contains ">": only they can complete a `</think>`.

    Decoding the tail after every token costs the batch loop's waiting threads GIL time;
    after most tokens it cannot find the tag. None when the vocabulary cannot be listed.
    """
    try:
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    except Exception:  # noqa: BLE001 - an odd tokenizer only costs us the shortcut
        return None
    ids = frozenset(i for i, piece in enumerate(pieces) if piece and ">" in piece)
    return ids or None


def strip_eos(ids: list[int], eos_ids: Sequence[int]) -> list[int]:
    """`ids` without the end-of-turn tokens at its end."""
    end = len(ids)
    while end and ids[end - 1] in eos_ids:
        end -= 1
    return ids[:end]


def stop_reason(
    check: StopCheck, new_ids: list[int], eos_ids: Sequence[int], request: GenerationRequest
) -> str:
    """Why a pass stopped (close | eos | length); raises for a deadline or a cancel."""
    if check.timed_out:
        raise TimeoutError(
            f"request {request.request_id or '(no id)'} passed its deadline while generating"
        )
    if check.cancelled:
        raise Cancelled()
    if check.closed:
        return "close"
    if new_ids and new_ids[-1] in eos_ids:
        return "eos"
    return "length"


def run_alone(
    model: Any,
    input_ids: list[int],
    max_new_tokens: int,
    request: GenerationRequest,
    check: StopCheck,
    *,
    sampler: Sampler,
    eos_ids: list[int],
    pad_id: int,
    device: torch.device,
    on_ids: Callable[[list[int]], None],
    carry: dict[str, Any],
) -> list[int]:
    """The one-at-a-time pass: `model.generate` for this sequence alone; its new token ids.

    The second pass of a request continues from the first one's KV cache, cut back to what
    both passes share, so the prompt and the reasoning are not computed twice.
    """
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    sampling = SamplingProcessor(sampler, request.temperature, request.top_p, request.seed)
    cache = carry.pop("cache", None)
    if cache is not None:
        shared = _common_prefix(carry.pop("ids", []), input_ids)
        # At least the last input token must run, to give the logits of the next one.
        surplus = cache.get_seq_length() - min(shared, len(input_ids) - 1)
        if surplus > 0:
            cache.crop(-surplus)
    output = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        generation_config=GenerationConfig(
            do_sample=False,  # the sampling processor picks the token; generate takes it
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
            return_dict_in_generate=True,
        ),
        logits_processor=LogitsProcessorList([sampling]),
        stopping_criteria=StoppingCriteriaList([_Criteria(check, len(input_ids))]),
        streamer=_Sink(on_ids),
        cache=cache,
    )
    sequences = getattr(output, "sequences", output)
    new_ids: list[int] = sequences[0, len(input_ids) :].tolist()
    kept = getattr(output, "cache", None)
    if kept is not None:
        # The cache holds every token but the last one generated.
        carry["cache"], carry["ids"] = kept, (input_ids + new_ids)[: kept.get_seq_length()]
    return new_ids


def run_batched(
    batcher: Batcher,
    input_ids: list[int],
    max_new_tokens: int,
    request: GenerationRequest,
    check: StopCheck,
    *,
    on_ids: Callable[[list[int]], None],
) -> list[int]:
    """The batched pass: join the running batch and follow this sequence's tokens."""
    capacity = batcher.config.kv_cache_tokens
    if len(input_ids) + max_new_tokens > capacity:
        raise ValueError(
            f"the conversation needs {len(input_ids) + max_new_tokens} tokens of KV cache but "
            f"the cache holds {capacity} (MIMOCHAT_KV_CACHE_TOKENS); shorten the history"
        )
    sampling = sampling_kwargs(request.temperature, request.top_p, request.seed)
    got: list[int] = []
    offset = 0  # tokens of `got` that the current submission had in its prompt
    retried = False
    handle = _submit(batcher, input_ids, max_new_tokens, sampling)
    try:
        while True:
            wait = _WAIT
            if request.deadline is not None:
                wait = min(wait, request.deadline - time.time())
            update = handle.get(wait)
            if update is None:
                if check([]):
                    break
                continue
            if update.error is not None:
                # A crashed loop takes every request in it down; ours gets one more try,
                # from where it was, on a fresh loop.
                if isinstance(update.error, BatchCrashed) and not retried and not check([]):
                    if len(got) >= max_new_tokens:
                        break  # it had every token it asked for
                    retried = True
                    log.warning("request %s resubmitted: %s", request.request_id, update.error)
                    offset = len(got)
                    handle = _submit(batcher, input_ids + got, max_new_tokens - len(got), sampling)
                    continue
                raise update.error
            new = update.tokens[len(got) - offset :]
            fresh: list[int] = []
            for token in new:
                got.append(token)
                fresh.append(token)
                if check.watch_close and check(got[-CLOSE_WINDOW:]):
                    break
            if fresh:
                on_ids(fresh)
            if check.closed or check([]):
                break
            if update.finished:
                handle.done = True
                break
    finally:
        handle.cancel()
    return got


def _submit(
    batcher: Batcher, input_ids: list[int], max_new_tokens: int, sampling: dict[str, Any]
) -> Handle:
    try:
        return batcher.submit(input_ids, max_new_tokens, **sampling)
    except BatchCrashed:
        # The loop died between two requests; the next submission starts a new one.
        return batcher.submit(input_ids, max_new_tokens, **sampling)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
