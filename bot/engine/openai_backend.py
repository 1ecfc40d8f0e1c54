"""MiMo served by an OpenAI-compatible server (vLLM, SGLang), behind the same Engine interface.

For operators who want the server's own continuous batching and MiMo's multi-token-prediction
speculative decoding. The reasoning is handled as in the transformers engine:

- Phase 1 streams `/chat/completions` with `max_tokens = thinking_budget + max_new_tokens`. A
  server started with a reasoning parser sends the reasoning in `delta.reasoning_content` (vLLM
  >= 0.10 also `delta.reasoning`) and the answer in `delta.content`; without one the text holds
  `<think> … </think>`. Both are read.
- Budget forcing: when the reasoning reaches `thinking_budget` tokens without `</think>` (or
  the stream ends inside it), the stream is closed (vLLM and SGLang abort a request whose client
  went away) and phase 2 asks `/completions` to continue the raw ChatML prompt + reasoning +
  `</think>`: the answer from what the model had. The raw prompt is rendered here, because a
  chat template may drop reasoning from an assistant turn, which `continue_final_message`
  (`add_generation_prompt: false`) would then continue without.

Token counts come from the server's streamed usage (`stream_options.continuous_usage_stats`,
a vLLM extension) and otherwise from the number of streamed chunks, which undercounts when one
chunk carries several tokens (speculative decoding): the budget is then approximate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from bot.core.settings import Settings
from bot.engine.base import Engine, Generation, GenerationRequest, StreamEvent
from bot.engine.reasoning import THINK_CLOSE, THINK_OPEN, split_reasoning, unsafe_tail

log = logging.getLogger(__name__)

FALLBACK_ANSWER = "Sorry, I could not put an answer together this time. Please ask again."
FORCED_CLOSE = "\n" + THINK_CLOSE + "\n\n"
DEFAULT_CONTEXT = 32768  # MiMo-7B-RL's window, when the server does not say
CONNECT_TIMEOUT = 10.0
STALL_TIMEOUT = 120.0  # seconds without a byte from the server before a stream is given up
_CONTEXT_ERRORS = (
    "context length",
    "maximum context",
    "too long",
    "max_model_len",
    "context_length",
)


class ServerError(RuntimeError):
    """The OpenAI-compatible server failed or could not be reached."""


@dataclass
class _Pass:
    """What one streamed request produced."""

    text: str = ""  # reasoning + `</think>` + answer as raw text (phase 1) or the answer (phase 2)
    tokens: int = 0
    finish: str | None = None  # stop | length | None (we stopped reading)
    prompt_tokens: int | None = None
    reasoning_tokens: int = 0
    closed: bool = False  # `</think>` seen
    extra: dict[str, Any] = field(default_factory=dict)


class OpenAIEngine(Engine):
    """Chat completions with SSE streaming against vLLM or SGLang; thread-safe (one session each)."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = settings.openai_base_url.rstrip("/")
        self.model_name = settings.openai_model
        self._local = threading.local()
        self._context: int | None = settings.context_tokens or None
        self._tokenize_missing = False

    # HTTP

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            if self.settings.openai_api_key:
                session.headers["Authorization"] = f"Bearer {self.settings.openai_api_key}"
            self._local.session = session
        return session

    @property
    def _root(self) -> str:
        """The server root: vLLM's /tokenize lives beside /v1, not under it."""
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    def _post_stream(
        self, path: str, payload: dict[str, Any], request: GenerationRequest
    ) -> Generator[dict[str, Any], None, None]:
        """POST with `stream: true`; yields each SSE data object; the response closes on exit."""
        url = f"{self.base_url}{path}"
        stall = STALL_TIMEOUT
        if request.deadline is not None:
            stall = max(0.05, min(stall, request.deadline - time.time()))
        try:
            response = self._session().post(
                url, json=payload, stream=True, timeout=(CONNECT_TIMEOUT, stall)
            )
        except requests.Timeout as exc:
            raise self._timeout(request, exc) from exc
        except requests.RequestException as exc:
            raise ServerError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} "
                f"({type(exc).__name__}); is vLLM/SGLang running?"
            ) from exc
        try:
            if response.status_code != 200:
                raise _http_error(response, self.base_url, self.model_name)
            for raw in response.iter_lines():
                if not raw or raw.startswith(b":"):
                    continue
                if not raw.startswith(b"data:"):
                    continue
                data = raw[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except ValueError as exc:
                    raise ServerError(f"the server sent a malformed stream chunk: {exc}") from exc
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise ServerError(f"the server failed mid-stream: {_message(chunk)}")
                yield chunk
            raise ServerError("the server's stream ended without [DONE]")
        except requests.Timeout as exc:
            raise self._timeout(request, exc) from exc
        except requests.RequestException as exc:
            raise ServerError(
                f"the stream from {self.base_url} broke ({type(exc).__name__})"
            ) from exc
        finally:
            response.close()

    def _timeout(self, request: GenerationRequest, exc: Exception) -> Exception:
        if request.deadline is not None and time.time() >= request.deadline - 0.01:
            return TimeoutError(f"request {request.request_id or '(no id)'} passed its deadline")
        return ServerError(
            f"the server at {self.base_url} stopped answering ({type(exc).__name__})"
        )

    # Model facts

    @property
    def context_length(self) -> int:  # type: ignore[override]
        """MIMOCHAT_CONTEXT_TOKENS, else the server's max_model_len, else MiMo's 32768."""
        if self._context is None:
            served = self._served_context()
            if served is None:
                return DEFAULT_CONTEXT
            self._context = served
        return self._context

    def _served_context(self) -> int | None:
        try:
            response = self._session().get(f"{self.base_url}/models", timeout=(CONNECT_TIMEOUT, 10))
            models = response.json().get("data", []) if response.status_code == 200 else []
        except (requests.RequestException, ValueError):
            return None
        for entry in models:
            if entry.get("id") == self.model_name and entry.get("max_model_len"):
                return int(entry["max_model_len"])
        return None

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens from the server's /tokenize (vLLM), else a safe over-estimate."""
        if not self._tokenize_missing:
            payload = {
                "model": self.model_name,
                "messages": _with_system(messages),
                "add_generation_prompt": True,
            }
            try:
                response = self._session().post(
                    f"{self._root}/tokenize", json=payload, timeout=(CONNECT_TIMEOUT, 30)
                )
                if response.status_code == 200:
                    return int(response.json()["count"]) + 1  # + the `<think>` the model writes
                if response.status_code in (404, 405):
                    self._tokenize_missing = True
            except (requests.RequestException, ValueError, KeyError):
                pass
        return super().count_tokens(messages)

    # Generation

    def generate(self, request: GenerationRequest) -> Generation:
        """Generate the whole answer for one conversation (blocking)."""
        for event in self.stream(request):
            if event.kind == "done" and event.generation is not None:
                return event.generation
        raise ServerError("the stream ended without a result")

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        """Yield reasoning and answer text as the server streams it, then `done`."""
        _check_deadline(request)
        started = time.perf_counter()
        shown = {"reasoning": "", "answer": ""}
        text = ""  # raw text so far: reasoning, `</think>`, answer

        def deltas(raw: str, final: bool = False) -> Iterator[StreamEvent]:
            safe = raw if final else raw[: len(raw) - unsafe_tail(raw)]
            reasoning, answer, _ = split_reasoning(THINK_OPEN + safe)
            for kind, full in (("reasoning", reasoning), ("answer", answer)):
                if len(full) > len(shown[kind]) and full.startswith(shown[kind]):
                    yield StreamEvent(kind, full[len(shown[kind]) :])
                    shown[kind] = full

        budget = max(0, request.thinking_budget)
        first = _Pass(closed=False)
        if budget > 0:
            for piece in self._chat(request, first, budget):
                text += piece
                yield from deltas(text)
        forced = not first.closed
        answer_pass = first
        if forced:
            text += FORCED_CLOSE
            reasoning_text = text[: -len(FORCED_CLOSE)]
            answer_pass = _Pass(closed=True)
            for piece in self._continue(request, reasoning_text, answer_pass):
                text += piece
                yield from deltas(text)
        yield from deltas(text, final=True)
        reasoning, answer, _ = split_reasoning(THINK_OPEN + text)
        finish = "stop" if answer_pass.finish == "stop" else "length"
        if forced:
            finish = "budget"
        if not answer:
            answer, finish = FALLBACK_ANSWER, "empty"
        answer_tokens = answer_pass.tokens - (first.reasoning_tokens if not forced else 0)
        generation = Generation(
            answer=answer,
            reasoning=reasoning,
            prompt_tokens=first.prompt_tokens or self.count_tokens(request.messages),
            reasoning_tokens=first.reasoning_tokens,
            answer_tokens=max(0, answer_tokens),
            finish_reason=finish,
            seconds=round(time.perf_counter() - started, 3),
            extra={
                "engine": self.name,
                "model": self.model_name,
                "server": self.base_url,
                "request_id": request.request_id,
                "reasoning_format": first.extra.get("format", "none"),
            },
        )
        yield StreamEvent("done", generation=generation)

    def _chat(self, request: GenerationRequest, result: _Pass, budget: int) -> Iterator[str]:
        """Phase 1: stream reasoning (and the answer, if the model closes it) as raw text."""
        payload = self._sampling(request)
        payload.update(
            messages=_with_system(request.messages),
            max_tokens=budget + max(0, request.max_new_tokens),
        )
        chunks = contextlib.closing(self._post_stream("/chat/completions", payload, request))
        with chunks as stream:
            yield from self._read_chat(stream, request, result, budget)

    def _read_chat(
        self,
        stream: Iterator[dict[str, Any]],
        request: GenerationRequest,
        result: _Pass,
        budget: int,
    ) -> Iterator[str]:
        closed_at: int | None = None  # token count when `</think>` was seen
        raw = ""
        for chunk in stream:
            _check_deadline(request)
            result.tokens = _count(chunk, result.tokens)
            usage = chunk.get("usage") or {}
            if usage.get("prompt_tokens"):
                result.prompt_tokens = int(usage["prompt_tokens"])
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                thought = delta.get("reasoning_content") or delta.get("reasoning") or ""
                content = delta.get("content") or ""
                piece = ""
                if thought:
                    result.extra["format"] = "reasoning_content"
                    piece += thought
                if content:
                    if result.extra.get("format") == "reasoning_content" and closed_at is None:
                        piece += THINK_CLOSE  # the parser took the tag out; put it back
                    elif "format" not in result.extra:
                        result.extra["format"] = "think_tags"
                    piece += content
                if not raw and piece.lstrip().startswith(THINK_OPEN):
                    piece = piece.lstrip()[len(THINK_OPEN) :]  # the engine writes the open tag
                if piece:
                    raw += piece
                    if closed_at is None and THINK_CLOSE in raw:
                        closed_at = result.tokens
                        result.closed = True
                        result.reasoning_tokens = result.tokens
                    yield piece
                if choice.get("finish_reason"):
                    result.finish = choice["finish_reason"]
            if closed_at is None:
                result.reasoning_tokens = result.tokens
                if result.tokens >= budget:
                    result.finish = None
                    return  # budget spent while reasoning: stop reading, force the close
            elif result.tokens - closed_at >= request.max_new_tokens:
                result.finish = "length"
                return

    def _continue(self, request: GenerationRequest, reasoning: str, result: _Pass) -> Iterator[str]:
        """Phase 2: the answer after a forced `</think>`, from the raw prompt + reasoning."""
        if request.max_new_tokens <= 0:
            return
        payload = self._sampling(request)
        payload.update(
            prompt=chatml_prompt(request.messages) + THINK_OPEN + reasoning + FORCED_CLOSE,
            max_tokens=request.max_new_tokens,
        )
        with contextlib.closing(self._post_stream("/completions", payload, request)) as stream:
            for chunk in stream:
                _check_deadline(request)
                result.tokens = _count(chunk, result.tokens)
                for choice in chunk.get("choices") or []:
                    piece = choice.get("text") or ""
                    if piece:
                        yield piece
                    if choice.get("finish_reason"):
                        result.finish = choice["finish_reason"]
                if result.tokens >= request.max_new_tokens:
                    return

    def _sampling(self, request: GenerationRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model_name,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "temperature": max(0.0, request.temperature),
            "top_p": request.top_p,
            # Keep <think> tags (and end-of-turn markers, which split_reasoning removes) in text.
            "skip_special_tokens": False,
        }
        if request.seed is not None:
            payload["seed"] = request.seed
        return payload

    def info(self) -> dict[str, Any]:
        """Where the server is and which model it serves (never the API key)."""
        return {
            "engine": self.name,
            "server": self.base_url,
            "model": self.model_name,
            "context_length": self._context,
            "api_key": "(set)" if self.settings.openai_api_key else "(none)",
        }

    def close(self) -> None:
        """Close this thread's HTTP session."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None


def chatml_prompt(messages: list[dict[str, str]]) -> str:
    """MiMo's ChatML prompt for a conversation, up to the assistant's turn (empty system turn)."""
    out = []
    for message in _with_system(messages):
        content = message.get("content", "")
        if message.get("role") == "assistant" and THINK_CLOSE in content:
            content = content.split(THINK_CLOSE)[-1].lstrip("\n")
        out.append(f"<|im_start|>{message.get('role', 'user')}\n{content}<|im_end|>\n")
    return "".join(out) + "<|im_start|>assistant\n"


def _with_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if messages and messages[0].get("role") == "system":
        return list(messages)
    return [{"role": "system", "content": ""}, *messages]


def _count(chunk: dict[str, Any], so_far: int) -> int:
    """Completion tokens after this chunk: the server's running usage, else one per text chunk."""
    usage = chunk.get("usage") or {}
    if usage.get("completion_tokens") is not None:
        return max(so_far, int(usage["completion_tokens"]))
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if any(delta.get(k) for k in ("content", "reasoning_content", "reasoning")) or choice.get(
            "text"
        ):
            return so_far + 1
    return so_far


def _message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(error)[:300]
    return str(body)[:300]


def _http_error(response: requests.Response, base_url: str, model: str) -> Exception:
    try:
        detail = _message(response.json())
    except ValueError:
        detail = response.text[:300]
    status = response.status_code
    if status == 400 and any(k in detail.lower() for k in _CONTEXT_ERRORS):
        return ValueError(f"the conversation does not fit the model's context: {detail}")
    if status in (401, 403):
        return ServerError(
            f"the server at {base_url} refused the request ({status}); check MIMOCHAT_OPENAI_API_KEY"
        )
    if status == 404:
        return ServerError(
            f"the server at {base_url} has no such endpoint or model {model!r} ({detail})"
        )
    return ServerError(f"the server at {base_url} answered {status}: {detail}")


def _check_deadline(request: GenerationRequest) -> None:
    if request.deadline is not None and time.time() >= request.deadline:
        raise TimeoutError(f"request {request.request_id or '(no id)'} passed its deadline")
