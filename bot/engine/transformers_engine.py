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
    Qwen2Config,
    Qwen2ForCausalLM,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from bot.engine.base import Engine, Generation, GenerationRequest, StreamEvent
from bot.engine.tiny import TINY, ensure_tiny_model, quiet_progress
from bot.reasoning import THINK_CLOSE, THINK_OPEN, split_reasoning, unsafe_tail
from bot.settings import Settings

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
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")


class _MiMoAsQwen2(Qwen2ForCausalLM):
    """Qwen2ForCausalLM that quietly skips MiMo's multi-token-prediction weights."""

    # MiMo-7B ships one MTP layer (model.mtp_layers.*) that plain next-token decoding never uses.
    _keys_to_ignore_on_load_unexpected = [r"mtp_layers\."]


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
    ) -> None:
        self.decode = decode
        self.deadline = deadline
        self.cancel = cancel
        self.watch_close = watch_close
        self.timed_out = False
        self.cancelled = False
        self.closed = False

    def __call__(self, tail: Sequence[int]) -> bool:
        if self.deadline is not None and time.time() >= self.deadline:
            self.timed_out = True
        elif self.cancel is not None and self.cancel.is_set():
            self.cancelled = True
        elif self.watch_close and tail and THINK_CLOSE in self.decode(tail):
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
    """The local directory or hub id to load: `tiny` builds the test checkpoint on first use."""
    if settings.model.strip() == TINY:
        return str(ensure_tiny_model(settings.data_path))
    return settings.model.strip()


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
    """One Qwen2/MiMo model in this process; requests run one at a time under a lock."""

    name = "transformers"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_name = settings.model.strip()
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.source = resolve_model(settings)
        config, local = read_model_config(self.source)
        self._lock = threading.Lock()
        started = time.perf_counter()
        # The tiny checkpoint loads in milliseconds; a progress bar there is only noise.
        quiet = quiet_progress() if self.model_name == TINY else contextlib.nullcontext()
        qwen2_config = _qwen2_config(config)
        with quiet:
            self.tokenizer = self._load_tokenizer(qwen2_config, local)
            self.model: Qwen2ForCausalLM | None = self._load_model(qwen2_config, local)
        self.load_seconds = time.perf_counter() - started
        self.context_length = int(self.model.config.max_position_embeddings)
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_ids[0]
        # Only generate() may set sampling: the checkpoint's defaults would otherwise be merged
        # into every call (and warn when a greedy request meets a default temperature).
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id
        )
        self._close_ids = self._encode(FORCED_CLOSE)
        log.info(
            "loaded %s on %s (%s) in %.1f s",
            self.model_name,
            self.device,
            self.dtype,
            self.load_seconds,
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
            model = _MiMoAsQwen2.from_pretrained(
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
            # Reached early when the consumer stops iterating: free the model for others.
            cancel.set()

    def _complete(
        self,
        request: GenerationRequest,
        on_ids: Callable[[list[int]], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Reason within budget, force the close if needed, answer; the whole request, locked."""
        _check_deadline(request)
        started = time.perf_counter()
        with self._lock:
            if self.model is None:
                raise RuntimeError("the engine is closed")
            _check_deadline(request)
            prompt_ids = self._encode(self.prompt(request.messages))
            room = self.context_length - len(prompt_ids)
            if room <= len(self._close_ids) + 1:
                raise ValueError(
                    f"the conversation ({len(prompt_ids)} tokens) does not fit the model's "
                    f"context of {self.context_length} tokens; shorten the history"
                )
            emit = on_ids or (lambda ids: None)
            completion: list[int] = []  # every token after the prompt, forced ones included

            def emitted(ids: list[int]) -> None:
                completion.extend(ids)
                emit(ids)

            with self._seeded(request.seed):
                budget = min(request.thinking_budget, room - len(self._close_ids) - 1)
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
    ) -> tuple[list[int], str]:
        """One model pass for one sequence: (new token ids, why it stopped: close|eos|length).

        The seam for continuous batching: a batched engine replaces this with a request to its
        scheduler and keeps the budget-forcing logic of `_complete` as it is.
        """
        assert self.model is not None
        check = _StopCheck(self._decode, request.deadline, cancel, watch_close)
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
        output = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            generation_config=self._generation_config(request, max_new_tokens),
            stopping_criteria=StoppingCriteriaList([_Criteria(check, len(input_ids))]),
            streamer=_Sink(on_ids),
        )
        new_ids = output[0, len(input_ids) :].tolist()
        if check.timed_out:
            raise TimeoutError(
                f"request {request.request_id or '(no id)'} passed its deadline while generating"
            )
        if check.cancelled:
            raise _Cancelled()
        if check.closed:
            return new_ids, "close"
        if new_ids and new_ids[-1] in self.eos_ids:
            return new_ids, "eos"
        return new_ids, "length"

    def _generation_config(
        self, request: GenerationRequest, max_new_tokens: int
    ) -> GenerationConfig:
        common = {
            "max_new_tokens": max_new_tokens,
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.pad_id,
        }
        if request.temperature <= 0:
            return GenerationConfig(do_sample=False, **common)
        # top_k=0 turns off transformers' default top-k of 50: MiMo's recommended sampling is
        # temperature and top_p alone.
        return GenerationConfig(
            do_sample=True,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=0,
            **common,
        )

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        if seed is None:
            yield
            return
        # fork_rng restores the global RNG afterwards, so one seeded request does not make
        # every later unseeded one predictable.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    # Operations

    def info(self) -> dict[str, Any]:
        """Model, device, dtype, size in parameters and bytes, and GPU memory when on CUDA."""
        out: dict[str, Any] = {
            "engine": self.name,
            "model": self.model_name,
            "source": self.source,
            "device": str(self.device),
            "dtype": _dtype_name(self.dtype),
            "context_length": self.context_length,
            "load_seconds": round(self.load_seconds, 2),
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
        """Drop the model and give its GPU memory back."""
        with self._lock:
            self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _check_deadline(request: GenerationRequest) -> None:
    if request.deadline is not None and time.time() >= request.deadline:
        raise TimeoutError(f"request {request.request_id or '(no id)'} passed its deadline")


def _strip_eos(ids: list[int], eos_ids: Sequence[int]) -> list[int]:
    end = len(ids)
    while end and ids[end - 1] in eos_ids:
        end -= 1
    return ids[:end]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
