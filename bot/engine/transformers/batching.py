"""Continuous batching for one model, shared by every thread of the worker process.

transformers' `ContinuousBatchingManager` runs the decode loop on its own thread over a paged KV
cache: requests join the running batch at the next step and leave it when they finish, so N
conversations cost about one forward pass per token instead of N. This module owns one manager
and adds what a chat worker needs around it:

- a router thread that takes every output of the manager and hands it to the request it belongs
  to, so each caller waits on its own queue (the manager's `get_result` shares one queue);
- cancellation that frees the request's KV blocks (deadline passed, stream abandoned,
  `</think>` seen);
- a crash of the decode loop (an out-of-memory in one forward pass, say) fails only the
  requests then in flight, each of which the engine may resubmit once; the next submission
  starts a fresh loop, so the worker keeps serving.

Sampling runs in `bot.engine.transformers.sampling` (per-request temperature, top_p and seed).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from bot.engine.transformers.sampling import BatchSamplingList, Sampler

log = logging.getLogger(__name__)

_POLL = 0.05  # seconds the router waits for an output before it checks on the loop


# The attention the batch loop runs (see `varlen_sdpa`); registered under its own name, so no
# other model in the process changes.
VARLEN_SDPA = "mimochat_varlen_sdpa"
# Decoding sequences with at most this many keys share one padded sdpa call; longer ones get
# a call each, since padding copies every key once more (measured on CPU: the copy costs more
# than the extra calls beyond ~128 keys per sequence).
PAD_DECODE_KEYS = 128


def varlen_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """sdpa over a continuous batch sequence by sequence, instead of through one batch mask.

    The batch loop packs every sequence of a step into one row and gives sdpa a block-diagonal
    mask over all of the step's keys, so each query scores every other sequence's keys too: 16
    conversations of L tokens cost 16x the attention they need. Here each sequence attends to
    its own keys only (`cu_seq_lens_q/k` delimit them): short sequences adding one token in
    one padded call, others one by one (prefill chunks causally aligned to their last key).
    Anything else (a sliding window, a batch dimension) is plain sdpa.
    """
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if (
        not isinstance(cu_q, torch.Tensor)
        or not isinstance(cu_k, torch.Tensor)
        or query.shape[0] != 1
        or kwargs.get("sliding_window")
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
    heads, total_q, dim = query.shape[1], query.shape[2], query.shape[3]
    out = query.new_empty(1, heads, total_q, value.shape[-1])
    decoding: list[tuple[int, int, int]] = []  # (query row, first key, key count)
    for i in range(len(starts_q) - 1):
        q0, q1, k0, k1 = starts_q[i], starts_q[i + 1], starts_k[i], starts_k[i + 1]
        lq, lk = q1 - q0, k1 - k0
        if lq == 0:
            continue  # a padding slot
        if lq == 1:
            decoding.append((q0, k0, lk))
            continue
        mask = None
        if lq < lk:  # a prefill chunk after cached tokens: causal, aligned to the last key
            mask = torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril(lk - lq)
        out[:, :, q0:q1] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, q0:q1],
            key[:, :, k0:k1],
            value[:, :, k0:k1],
            attn_mask=mask,
            is_causal=lq == lk,
            scale=scaling,
            enable_gqa=True,
        )
    if decoding and max(d[2] for d in decoding) > PAD_DECODE_KEYS:
        for q0, k0, lk in decoding:
            out[:, :, q0 : q0 + 1] = torch.nn.functional.scaled_dot_product_attention(
                query[:, :, q0 : q0 + 1],
                key[:, :, k0 : k0 + lk],
                value[:, :, k0 : k0 + lk],
                scale=scaling,
                enable_gqa=True,
            )
    elif decoding:
        # One call for every sequence that adds a single token: its keys padded to the longest.
        rows = torch.tensor([d[0] for d in decoding], device=query.device)
        firsts = torch.tensor([d[1] for d in decoding], device=query.device)
        counts = torch.tensor([d[2] for d in decoding], device=query.device)
        span = torch.arange(int(counts.max()), device=query.device)
        valid = span[None, :] < counts[:, None]  # [B, K]
        index = torch.where(valid, firsts[:, None] + span[None, :], 0).flatten()
        b, k = valid.shape
        keys = key[0].index_select(1, index).view(key.shape[1], b, k, dim).transpose(0, 1)
        values = value[0].index_select(1, index).view(value.shape[1], b, k, -1).transpose(0, 1)
        queries = query[0].index_select(1, rows).transpose(0, 1).unsqueeze(2)  # [B, H, 1, D]
        attended = torch.nn.functional.scaled_dot_product_attention(
            queries,
            keys,
            values,
            attn_mask=valid[:, None, None, :],
            scale=scaling,
            enable_gqa=True,
        )
        out[0, :, rows] = attended.squeeze(2).transpose(0, 1)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa)
AttentionMaskInterface.register(VARLEN_SDPA, sdpa_mask)


class BatchCrashed(RuntimeError):
    """The decode loop died while this request was in it; the request itself may be fine."""


class RequestFailed(RuntimeError):
    """The batch manager refused or failed this one request; the others go on."""


@dataclass
class Update:
    """What a waiting request learns: all tokens so far, and whether it is over (and why not)."""

    tokens: list[int]
    finished: bool
    error: Exception | None = None


@dataclass(frozen=True)
class BatchConfig:
    """Sizing of the paged KV cache and of each forward pass."""

    kv_cache_tokens: int
    max_batch_tokens: int = 512
    page_size: int = 16
    max_requests: int | None = None  # per forward pass; None: as many as fit


class Handle:
    """One submitted request: its updates arrive on its own queue; cancel frees its KV blocks."""

    def __init__(self, batcher: Batcher, request_id: str, generation: int) -> None:
        self.batcher = batcher
        self.request_id = request_id
        self.generation = generation
        self.updates: queue.Queue[Update] = queue.Queue()
        self.done = False

    def get(self, timeout: float) -> Update | None:
        """The next update, or None after `timeout` seconds without one."""
        try:
            return self.updates.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def cancel(self) -> None:
        """Stop generating for this request and give its KV memory back (idempotent)."""
        if not self.done:
            self.done = True
            self.batcher._cancel(self)


class Batcher:
    """One continuous-batching manager over `model`, started on first use, restarted after a crash."""

    def __init__(
        self,
        model: Any,
        eos_ids: list[int],
        pad_id: int,
        config: BatchConfig,
        sampler: Sampler,
    ) -> None:
        self.model = model
        self.eos_ids = list(eos_ids)
        self.pad_id = pad_id
        self.config = config
        self.sampler = sampler
        self._lock = threading.Lock()
        self._manager: Any = None
        self._generation = 0  # bumped for each manager started
        self._handles: dict[str, Handle] = {}
        self._ids = itertools.count()
        self._router: threading.Thread | None = None
        self._closed = False
        self.restarts = 0  # loops replaced after they died

    def start(self) -> None:
        """Start the loop now (the worker does, so that memory problems show at startup)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._running_manager()

    # Submitting

    def submit(self, input_ids: list[int], max_new_tokens: int, **sampling: Any) -> Handle:
        """Queue one sequence for up to `max_new_tokens` tokens; updates stream to its handle."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            manager = self._running_manager()
            request_id = f"mc{next(self._ids)}"
            handle = Handle(self, request_id, self._generation)
            self._handles[request_id] = handle
        added = manager.add_request(
            input_ids=list(input_ids),
            request_id=request_id,
            max_new_tokens=max_new_tokens,
            streaming=True,
            eos_token_id=self.eos_ids,
            **sampling,
        )
        if added is None:  # the loop is stopping: it died between our check and the add
            with self._lock:
                self._handles.pop(request_id, None)
            raise BatchCrashed("the decode loop stopped before it took the request")
        return handle

    def _running_manager(self) -> Any:
        """The live manager, starting a fresh one if there is none or the last one died."""
        manager = self._manager
        if manager is not None and manager.is_running() and not _fatal(manager):
            return manager
        if manager is not None:
            log.warning(
                "continuous batching loop is gone (%s); starting a new one", _fatal(manager)
            )
            self._stop_manager(manager)
            self.restarts += 1
            # Requests whose failure the router has not read yet learn it now.
            for h in [h for h in self._handles.values() if h.generation == self._generation]:
                self._handles.pop(h.request_id, None)
                h.updates.put(
                    Update([], True, BatchCrashed(f"the decode loop stopped: {_fatal(manager)}"))
                )
        self._manager = self._start_manager()
        self._generation += 1
        if self._router is None or not self._router.is_alive():
            self._router = threading.Thread(
                target=self._route, name="mimochat-cb-router", daemon=True
            )
            self._router.start()
        return self._manager

    def _start_manager(self) -> Any:
        cfg = self.config
        generation_config = GenerationConfig(
            do_sample=False,  # the sampling processor picks the token; the loop takes the argmax
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            max_new_tokens=256,
        )
        cb_config = ContinuousBatchingConfig(
            page_size=cfg.page_size,
            num_blocks=max(2, -(-cfg.kv_cache_tokens // cfg.page_size)),
            max_batch_tokens=cfg.max_batch_tokens,
            max_requests_per_batch=cfg.max_requests,
            # Our sampler keeps per-step rows on the Python side: synchronous steps, no graphs.
            use_cuda_graph=False,
            use_async_batching=False,
            # With flash-attn installed (CUDA) the loop switches to it: varlen kernels, no mask.
            auto_switch_to_flash=self.model.device.type == "cuda",
            allow_block_sharing=True,
        )
        # The manager accepts sdpa (or flash) only; once it is built, sdpa becomes our
        # per-sequence sdpa, which the manager's loop then calls through the model.
        if self.model.config._attn_implementation == VARLEN_SDPA:
            self.model.set_attn_implementation("sdpa")
        manager = self.model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=cb_config
        )
        if self.model.config._attn_implementation == "sdpa":
            self.model.set_attn_implementation(VARLEN_SDPA)
        manager.logit_processor = BatchSamplingList(self.sampler)
        try:
            # Allocates the paged cache here, so a cache that does not fit fails now, loudly,
            # instead of inside the loop's thread.
            manager.warmup()
        except MemoryError as exc:
            raise RuntimeError(
                f"the KV cache of {cfg.kv_cache_tokens} tokens does not fit: {exc}; lower "
                "MIMOCHAT_KV_CACHE_TOKENS or MIMOCHAT_KV_CACHE_MEMORY"
            ) from exc
        _start_as_daemon(manager)
        log.info(
            "continuous batching started: %d KV tokens, %d tokens per step",
            cfg.kv_cache_tokens,
            cfg.max_batch_tokens,
        )
        return manager

    @staticmethod
    def _stop_manager(manager: Any) -> None:
        # A hard stop fails what is still in the loop instead of finishing it first.
        with contextlib.suppress(Exception):
            manager.stop(block=True, timeout=10, hard_stop=True)
        with contextlib.suppress(Exception):
            manager.destroy()

    # Routing

    def _route(self) -> None:
        """Hand each output of the manager to its request; notice a dead loop."""
        while True:
            with self._lock:
                manager, closed = self._manager, self._closed
            if closed or manager is None:
                return
            try:
                output = manager.get_result(timeout=_POLL)
            except Exception:  # noqa: BLE001 - the router must outlive any one bad output
                log.exception("continuous batching router failed to read an output")
                output = None
            if output is not None:
                self._deliver(output)
                continue
            if not manager.is_running() or _fatal(manager) is not None:
                # get_result returns at once when the loop is gone: fail what it still held.
                self._fail_generation(manager)
                time.sleep(_POLL)

    def _deliver(self, output: Any) -> None:
        with self._lock:
            handle = self._handles.get(output.request_id)
            if handle is None:
                return  # cancelled: its late outputs are dropped
            finished = bool(output.is_finished())
            if finished:
                self._handles.pop(output.request_id, None)
        error: Exception | None = None
        if output.error is not None:
            if self._crashed(handle.generation):
                error = BatchCrashed(f"the decode loop crashed: {output.error}")
            else:
                error = RequestFailed(f"the batch refused this request: {output.error}")
        # generated_tokens is already a copy made for this output.
        handle.updates.put(Update(output.generated_tokens, finished, error))

    def _crashed(self, generation: int) -> bool:
        """Whether the manager of `generation` died (its loop records the error, then stops)."""
        with self._lock:
            manager = self._manager if generation == self._generation else None
        if manager is None:
            return True
        # A crash fails every request first and records the fatal error just after.
        for _ in range(20):
            if _fatal(manager) is not None or not manager.is_running():
                return True
            time.sleep(0.01)
        return False

    def _fail_generation(self, manager: Any) -> None:
        with self._lock:
            if manager is not self._manager:
                return
            stale = [h for h in self._handles.values() if h.generation == self._generation]
            for h in stale:
                self._handles.pop(h.request_id, None)
        for h in stale:
            h.updates.put(
                Update([], True, BatchCrashed(f"the decode loop stopped: {_fatal(manager)}"))
            )

    def _cancel(self, handle: Handle) -> None:
        with self._lock:
            self._handles.pop(handle.request_id, None)
            manager = self._manager if handle.generation == self._generation else None
        if manager is not None:
            manager.cancel_request(handle.request_id)

    # Operations

    def stats(self) -> dict[str, Any]:
        """Requests waiting on the loop, KV cache use and restarts so far (for info() and tests)."""
        with self._lock:
            manager = self._manager
            waiting = len(self._handles)
        out: dict[str, Any] = {
            "running": bool(manager is not None and manager.is_running()),
            "requests": waiting,
            "restarts": self.restarts,
            "kv_cache_tokens": self.config.kv_cache_tokens,
            "max_batch_tokens": self.config.max_batch_tokens,
        }
        processor = getattr(manager, "batch_processor", None)
        cache = getattr(processor, "cache", None)
        if cache is not None:
            with contextlib.suppress(Exception):
                out["kv_requests"] = sorted(kv_holders(cache))
                out["kv_free"] = round(float(cache.compute_free_capacity()), 4)
        return out

    def close(self) -> None:
        """Stop the loop; requests still waiting fail."""
        with self._lock:
            self._closed = True
            manager, self._manager = self._manager, None
            stale = list(self._handles.values())
            self._handles.clear()
        for h in stale:
            h.updates.put(Update([], True, RuntimeError("the engine is closed")))
        if manager is not None:
            self._stop_manager(manager)


def _start_as_daemon(manager: Any) -> None:
    """Start the manager's loop thread as a daemon, so that it never keeps the process alive.

    The manager makes a plain (non-daemon) thread, and Python waits for those at exit before it
    runs any atexit hook: a worker that never closed its engine would hang on shutdown. A new
    thread inherits daemon status from the thread that creates it, so a daemon starts it.
    The loop also inherits the starter's inference mode: no autograd.
    """
    failure: list[BaseException] = []

    def start() -> None:
        try:
            with torch.inference_mode():
                manager.start()
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    starter = threading.Thread(target=start, name="mimochat-cb-start", daemon=True)
    starter.start()
    starter.join()
    if failure:
        raise failure[0]


def kv_holders(cache: Any) -> set[str]:
    """Request ids that hold KV blocks in a paged cache right now."""
    holders: set[str] = set()
    for allocator in cache.cache_allocators.values():
        holders.update(allocator.block_table.keys())
    return holders


def _fatal(manager: Any) -> Exception | None:
    status = getattr(manager, "background_thread_status", None)
    return getattr(status, "fatal_error", None)
