"""MiMo-7B-RL (or any Qwen2-architecture checkpoint) run with Hugging Face transformers.

Reasoning is budget-forced: the model reasons until it writes `</think>` or spends
`thinking_budget` tokens; in the second case the engine closes the reasoning itself and lets the
model answer from there, so the user always gets an answer in bounded time.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    Qwen2Config,
    Qwen2ForCausalLM,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from bot.core.settings import Settings
from bot.engine.base import Engine, Generation, GenerationRequest, StreamEvent
from bot.engine.reasoning import THINK_CLOSE, THINK_OPEN, split_reasoning, unsafe_tail
from bot.engine.transformers.batching import BatchConfig, BatchCrashed, Batcher, Handle
from bot.engine.transformers.sampling import Sampler, SamplingProcessor, sampling_kwargs
from bot.engine.transformers.tiny import TINY, ensure_tiny_model, quiet_progress

log = logging.getLogger(__name__)

FALLBACK_ANSWER = "Sorry, I could not put an answer together this time. Please ask again."
# What the engine writes after reasoning that ran out of budget, as MiMo itself closes it.
FORCED_CLOSE = "\n" + THINK_CLOSE + "\n\n"
MODEL_TYPES = frozenset({"qwen2", "mimo"})
ARCHITECTURES = frozenset({"Qwen2ForCausalLM", "MiMoForCausalLM"})
DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
# Enough trailing tokens to see a `</think>` spelled in several pieces.
_CLOSE_WINDOW = 16
# Seconds a batched request waits for its next token before it checks deadline and cancel.
_WAIT = 0.1
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")


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
            attention_mask = {k: _compact(v) for k, v in attention_mask.items()}
        else:
            attention_mask = _compact(attention_mask)
        return super().forward(*args, attention_mask=attention_mask, **kwargs)


def _compact(mask: Any) -> Any:
    """`mask` with storage of its own size (a copy only when it views a larger buffer)."""
    if not isinstance(mask, torch.Tensor):
        return mask
    if mask.untyped_storage().nbytes() > mask.numel() * mask.element_size():
        return mask.clone()
    return mask


class _Cancelled(Exception):
    """The consumer of a stream went away; stop generating for it."""


class _StopCheck:
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
    def __init__(self, check: _StopCheck, prompt_len: int) -> None:
        self.check = check
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        # Copying the tail to the host is only worth it while a </think> may still come.
        tail = (
            input_ids[0, self.prompt_len :][-_CLOSE_WINDOW:].tolist()
            if self.check.watch_close
            else []
        )
        done = self.check(tail)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


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


class _Detokenizer:
    """Incremental decode that only commits text at whole characters."""

    def __init__(self, decode: Callable[[Sequence[int]], str], prefix: str) -> None:
        self.decode = decode
        self.text = prefix
        self.pending: list[int] = []

    def add(self, ids: Sequence[int]) -> str:
        self.pending.extend(ids)
        piece = self.decode(self.pending)
        # A byte-level token may end inside a multi-byte character; wait for the rest of it.
        if not piece.endswith("\ufffd"):
            self.text += piece
            self.pending = []
        return self.text

    def flush(self) -> str:
        if self.pending:
            self.text += self.decode(self.pending)
            self.pending = []
        return self.text


def resolve_device(name: str) -> torch.device:
    """The torch device for MIMOCHAT_DEVICE: auto picks CUDA when PyTorch sees a GPU."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(
            f"MIMOCHAT_DEVICE={name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"MIMOCHAT_DEVICE={name!r} but PyTorch sees no CUDA GPU "
                "(is this the CPU build of torch, or is the driver missing?)"
            )
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"MIMOCHAT_DEVICE={name!r} but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return torch.device("cuda", index)
    if device.type not in ("cpu", "mps"):
        raise ValueError(f"MIMOCHAT_DEVICE={name!r} is not supported; use auto, cpu or cuda:N")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The weight dtype for MIMOCHAT_DTYPE: auto is bfloat16 on CUDA, float32 elsewhere."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ValueError(f"MIMOCHAT_DTYPE={name!r} is not one of: auto, bfloat16, float16, float32")
    return DTYPES[name]


def resolve_model(settings: Settings) -> str:
    """The local directory or hub id to load: `tiny` builds the test checkpoint on first use.

    A hub id already in the Hugging Face cache (`mimochat download`) resolves to its snapshot
    directory, so loading it never touches the network.
    """
    name = settings.model.strip()
    if name == TINY:
        return str(ensure_tiny_model(settings.data_path))
    if name and not Path(name).expanduser().exists() and not _looks_like_path(name):
        from bot.engine.transformers.download import cached_snapshot

        cached = cached_snapshot(name)
        if cached is not None:
            return str(cached)
    return name


def read_model_config(source: str) -> tuple[dict[str, Any], bool]:
    """(config.json as a dict, is_local) for a model directory or hub id; checks it is usable."""
    if not source:
        raise ValueError("MIMOCHAT_MODEL is empty; set it to a hub id, a local directory or `tiny`")
    path = Path(source).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"model directory {path} has no config.json")
        if not any(any(path.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
            raise ValueError(
                f"model directory {path} has no weights (*.safetensors or pytorch_model*.bin); "
                "fetch them with `mimochat download`"
            )
        config, local = _load_json(config_file), True
    elif path.exists():
        raise ValueError(f"MIMOCHAT_MODEL={source!r} is a file, not a model directory")
    elif _looks_like_path(source):
        raise ValueError(
            f"model directory {path} does not exist; set MIMOCHAT_MODEL to a directory with "
            "config.json and *.safetensors, a hub id such as XiaomiMiMo/MiMo-7B-RL, or `tiny`"
        )
    else:
        config, local = _hub_config(source), False
    check_architecture(config, source)
    return config, local


def check_architecture(config: dict[str, Any], source: str) -> None:
    """Raise ValueError unless the config describes a Qwen2 or MiMo causal LM."""
    model_type = config.get("model_type") or "unknown"
    architectures = config.get("architectures") or []
    if model_type in MODEL_TYPES and (
        not architectures or any(a in ARCHITECTURES for a in architectures)
    ):
        return
    raise ValueError(
        f"{source} is a {model_type!r} model ({', '.join(architectures) or 'no architectures'}); "
        "this engine runs Qwen2-architecture chat models such as XiaomiMiMo/MiMo-7B-RL "
        "(config.json model_type 'qwen2' or 'mimo')"
    )


def _looks_like_path(source: str) -> bool:
    # Hub ids are `name` or `org/name`; anything else that names no existing path was meant
    # as a local directory.
    return (
        source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or source.endswith("/")
    )


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _hub_config(repo_id: str) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    try:
        config_file = hf_hub_download(repo_id, "config.json")
    except HFValidationError as exc:
        raise ValueError(
            f"MIMOCHAT_MODEL={repo_id!r} is neither an existing directory nor a valid hub id"
        ) from exc
    except Exception as exc:
        raise RuntimeError(
            f"cannot get config.json of {repo_id!r} from the Hugging Face hub or its local cache "
            f"({type(exc).__name__}: {exc}); run `mimochat download` where there is internet, "
            "or set MIMOCHAT_MODEL to a local directory"
        ) from exc
    return _load_json(Path(config_file))


def _qwen2_config(config: dict[str, Any]) -> Qwen2Config:
    # MiMo's config is a Qwen2 config plus MTP fields; building Qwen2Config directly avoids
    # both remote code and transformers' "instantiating a model of another type" warning.
    # from_dict (unlike the constructor) also upgrades legacy `rope_scaling` without a warning.
    fields = {
        k: v
        for k, v in config.items()
        if k not in ("model_type", "architectures", "auto_map", "transformers_version")
        and not k.startswith("_")
    }
    return Qwen2Config.from_dict(fields)


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
            self.model: Qwen2ForCausalLM | None = model.eval()
        else:
            self.device = resolve_device(settings.device)
            self.dtype = resolve_dtype(settings.dtype, self.device)
            self.source = resolve_model(settings)
            config, local = read_model_config(self.source)
            qwen2_config = _qwen2_config(config)
            if self.device.type == "cuda":
                check_gpu_memory(qwen2_config, self.dtype, self.device, settings)
            # The tiny checkpoint loads in milliseconds; a progress bar there is only noise.
            quiet = quiet_progress() if self.model_name == TINY else contextlib.nullcontext()
            with quiet:
                self.tokenizer = self._load_tokenizer(qwen2_config, local)
                self.model = self._load_model(qwen2_config, local)
        self.load_seconds = time.perf_counter() - started
        model_limit = int(self.model.config.max_position_embeddings)
        self.context_length = (
            min(model_limit, settings.context_tokens)
            if settings.context_tokens > 0
            else model_limit
        )
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_ids[0]
        # Only our sampler may sample: the checkpoint's defaults would otherwise be merged into
        # every call (and warn when a greedy request meets a default temperature).
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id
        )
        self._close_ids = self._encode(FORCED_CLOSE)
        self._closers = _closing_tokens(self.tokenizer)
        self.sampler = Sampler()
        self._batcher: Batcher | None = None
        if settings.continuous_batching:
            self._batcher = Batcher(
                self.model,
                self.eos_ids,
                self.pad_id,
                BatchConfig(
                    kv_cache_tokens=self._plan_kv_cache(),
                    max_batch_tokens=max(16, settings.max_batch_tokens),
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

    # Loading

    def _load_tokenizer(self, config: Qwen2Config, local: bool) -> Any:
        # Handing over the Qwen2 config keeps AutoTokenizer from reading config.json, whose
        # model_type `mimo` transformers does not know (it would warn, or want remote code).
        tokenizer = AutoTokenizer.from_pretrained(
            self.source, config=config, local_files_only=local
        )
        if not tokenizer.chat_template:
            raise RuntimeError(f"the tokenizer of {self.source} has no chat template")
        return tokenizer

    def _load_model(self, config: Qwen2Config, local: bool) -> Qwen2ForCausalLM:
        kwargs: dict[str, Any] = {}
        # device_map streams weights straight to the GPU but needs accelerate; without it the
        # weights pass through CPU memory once.
        direct = self.device.type == "cuda" and importlib.util.find_spec("accelerate") is not None
        if direct:
            kwargs["device_map"] = str(self.device)
        try:
            model = MiMoQwen2ForCausalLM.from_pretrained(
                self.source,
                config=config,
                dtype=self.dtype,
                attn_implementation="sdpa",
                local_files_only=local,
                **kwargs,
            )
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot load the weights of {self.source}: {exc}") from exc
        if not direct:
            model.to(self.device)
        model.eval()
        return model

    def _plan_kv_cache(self) -> int:
        """Tokens of paged KV cache: the setting, or one full context per concurrent task."""
        assert self.model is not None
        wanted = self.settings.kv_cache_tokens or (
            max(1, self.settings.gpu_concurrency) * self.context_length
        )
        per_token = kv_bytes_per_token(self.model.config, self.dtype)
        return plan_kv_cache(
            wanted,
            per_token,
            free_memory_bytes(self.device),
            self.settings.kv_cache_memory,
            self.context_length,
            str(self.device),
        )

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        candidates: list[Any] = [self.tokenizer.eos_token_id]
        checkpoint_eos = self.model.generation_config.eos_token_id
        candidates += checkpoint_eos if isinstance(checkpoint_eos, list) else [checkpoint_eos]
        # A chat model may end a turn with either token; stop at both.
        for token in ("<|im_end|>", "<|endoftext|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if token_id != self.tokenizer.unk_token_id:
                candidates.append(token_id)
        for token_id in candidates:
            if isinstance(token_id, int) and token_id not in ids:
                ids.append(token_id)
        if not ids:
            raise RuntimeError(f"the tokenizer of {self.source} defines no end-of-turn token")
        return ids

    # Text helpers

    def _encode(self, text: str) -> list[int]:
        # verbose=False: an over-long prompt gets a clear ValueError below, not a log warning.
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _decode(self, ids: Sequence[int]) -> str:
        # Special tokens stay in: some tokenizers mark <think> special, and split_reasoning
        # removes ChatML tokens from what the user sees anyway.
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for a conversation: ChatML with an empty system turn, reasoning opened."""
        if not messages or messages[0].get("role") != "system":
            messages = [{"role": "system", "content": ""}, *messages]
        text = self.tokenizer.apply_chat_template(
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
        _check_deadline(request)
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                result = self._complete(
                    request, on_ids=lambda ids: events.put(("ids", ids)), cancel=cancel
                )
                events.put(("done", result))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                events.put(("error", exc))

        worker = threading.Thread(
            target=work, name=f"mimochat-stream-{request.request_id or 'anon'}", daemon=True
        )
        worker.start()
        text = _Detokenizer(self._decode, THINK_OPEN)
        shown = {"reasoning": "", "answer": ""}

        def deltas(reasoning: str, answer: str) -> Iterator[StreamEvent]:
            for kind, full in (("reasoning", reasoning), ("answer", answer)):
                if len(full) > len(shown[kind]) and full.startswith(shown[kind]):
                    yield StreamEvent(kind, full[len(shown[kind]) :])
                    shown[kind] = full

        try:
            while True:
                kind, value = events.get()
                if kind == "ids":
                    so_far = text.add(value)
                    safe = so_far[: len(so_far) - unsafe_tail(so_far)]
                    reasoning, answer, _ = split_reasoning(safe)
                    yield from deltas(reasoning, answer)
                elif kind == "done":
                    yield from deltas(value.reasoning, value.answer)
                    yield StreamEvent("done", generation=value)
                    return
                else:
                    raise value
        finally:
            # Reached early when the consumer stops iterating: stop generating for it.
            cancel.set()

    def _complete(
        self,
        request: GenerationRequest,
        on_ids: Callable[[list[int]], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Reason within budget, force the close if needed, answer: the whole request."""
        _check_deadline(request)
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
            _check_deadline(request)
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
            context = prompt_ids + _strip_eos(reasoning_ids, self.eos_ids)
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
            reasoning_tokens=len(_strip_eos(reasoning_ids, self.eos_ids)),
            answer_tokens=len(_strip_eos(answer_ids, self.eos_ids)),
            finish_reason=finish,
            seconds=round(time.perf_counter() - started, 3),
            extra={
                "engine": self.name,
                "model": self.model_name,
                "device": str(self.device),
                "dtype": _dtype_name(self.dtype),
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
        carry: dict[str, Any] | None = None,
    ) -> tuple[list[int], str]:
        """One decoding pass for one sequence: (new token ids, why it stopped: close|eos|length)."""
        if self._batcher is not None:
            return self._run_batched(
                input_ids,
                max_new_tokens,
                request,
                watch_close=watch_close,
                on_ids=on_ids,
                cancel=cancel,
            )
        return self._run_alone(
            input_ids,
            max_new_tokens,
            request,
            watch_close=watch_close,
            on_ids=on_ids,
            cancel=cancel,
            carry=carry if carry is not None else {},
        )

    def _run_alone(
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
        """The one-at-a-time pass: `model.generate` for this sequence alone.

        The second pass of a request continues from the first one's KV cache, cut back to what
        both passes share, so the prompt and the reasoning are not computed twice.
        """
        assert self.model is not None
        check = _StopCheck(self._decode, request.deadline, cancel, watch_close, self._closers)
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
        sampling = SamplingProcessor(self.sampler, request.temperature, request.top_p, request.seed)
        cache = carry.pop("cache", None)
        if cache is not None:
            shared = _common_prefix(carry.pop("ids", []), input_ids)
            # At least the last input token must run, to give the logits of the next one.
            surplus = cache.get_seq_length() - min(shared, len(input_ids) - 1)
            if surplus > 0:
                cache.crop(-surplus)
        output = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            generation_config=GenerationConfig(
                do_sample=False,  # the sampling processor picks the token; generate takes it
                max_new_tokens=max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                return_dict_in_generate=True,
            ),
            logits_processor=LogitsProcessorList([sampling]),
            stopping_criteria=StoppingCriteriaList([_Criteria(check, len(input_ids))]),
            streamer=_Sink(on_ids),
            cache=cache,
        )
        sequences = getattr(output, "sequences", output)
        new_ids = sequences[0, len(input_ids) :].tolist()
        kept = getattr(output, "cache", None)
        if kept is not None:
            # The cache holds every token but the last one generated.
            carry["cache"], carry["ids"] = kept, (input_ids + new_ids)[: kept.get_seq_length()]
        return new_ids, self._why(check, new_ids, request)

    def _run_batched(
        self,
        input_ids: list[int],
        max_new_tokens: int,
        request: GenerationRequest,
        *,
        watch_close: bool,
        on_ids: Callable[[list[int]], None],
        cancel: threading.Event | None,
    ) -> tuple[list[int], str]:
        """The batched pass: join the running batch and follow this sequence's tokens."""
        assert self._batcher is not None
        capacity = self._batcher.config.kv_cache_tokens
        if len(input_ids) + max_new_tokens > capacity:
            raise ValueError(
                f"the conversation needs {len(input_ids) + max_new_tokens} tokens of KV cache but "
                f"the cache holds {capacity} (MIMOCHAT_KV_CACHE_TOKENS); shorten the history"
            )
        check = _StopCheck(self._decode, request.deadline, cancel, watch_close, self._closers)
        sampling = sampling_kwargs(request.temperature, request.top_p, request.seed)
        got: list[int] = []
        offset = 0  # tokens of `got` that the current submission had in its prompt
        retried = False
        handle = self._submit(input_ids, max_new_tokens, sampling)
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
                        handle = self._submit(input_ids + got, max_new_tokens - len(got), sampling)
                        continue
                    raise update.error
                new = update.tokens[len(got) - offset :]
                fresh: list[int] = []
                for token in new:
                    got.append(token)
                    fresh.append(token)
                    if watch_close and check(got[-_CLOSE_WINDOW:]):
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
        return got, self._why(check, got, request)

    def _submit(self, input_ids: list[int], max_new_tokens: int, sampling: dict) -> Handle:
        assert self._batcher is not None
        try:
            return self._batcher.submit(input_ids, max_new_tokens, **sampling)
        except BatchCrashed:
            # The loop died between two requests; the next submission starts a new one.
            return self._batcher.submit(input_ids, max_new_tokens, **sampling)

    def _why(self, check: _StopCheck, new_ids: list[int], request: GenerationRequest) -> str:
        if check.timed_out:
            raise TimeoutError(
                f"request {request.request_id or '(no id)'} passed its deadline while generating"
            )
        if check.cancelled:
            raise _Cancelled()
        if check.closed:
            return "close"
        if new_ids and new_ids[-1] in self.eos_ids:
            return "eos"
        return "length"

    # Operations

    def info(self) -> dict[str, Any]:
        """Model, device, dtype, size in parameters and bytes, batching and GPU memory."""
        out: dict[str, Any] = {
            "engine": self.name,
            "model": self.model_name,
            "source": self.source,
            "device": str(self.device),
            "dtype": _dtype_name(self.dtype),
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


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes: keys and values of every layer."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * heads * head_dim * itemsize


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
    return params * torch.empty((), dtype=dtype).element_size()


def free_memory_bytes(device: torch.device) -> int:
    """Memory this process could still allocate on `device` (GPU free memory, or available RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

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


def _check_deadline(request: GenerationRequest) -> None:
    if request.deadline is not None and time.time() >= request.deadline:
        raise TimeoutError(f"request {request.request_id or '(no id)'} passed its deadline")


def _closing_tokens(tokenizer: Any) -> frozenset[int] | None:
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


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _strip_eos(ids: list[int], eos_ids: Sequence[int]) -> list[int]:
    end = len(ids)
    while end and ids[end - 1] in eos_ids:
        end -= 1
    return ids[:end]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
