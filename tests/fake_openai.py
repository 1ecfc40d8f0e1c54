"""A small OpenAI-compatible server for the tests: vLLM's wire format, the tiny model behind it.

A real HTTP server on 127.0.0.1 (ThreadingHTTPServer) speaking what mimochat's OpenAI backend
uses: `POST /v1/chat/completions` and `POST /v1/completions` streamed as server-sent events,
`GET /v1/models` (with vLLM's `max_model_len`) and vLLM's `POST /tokenize`. Tokens come from the
tiny random-weight checkpoint, decoded one step at a time, so output is noise as with the
transformers engine and a long generation really takes time (and stops when the client leaves).

Knobs a test may set: `reasoning_parser` (True: reasoning in `delta.reasoning_content`, as vLLM
with `--reasoning-parser`; False: `<think>` tags in `content`), `usage` (continuous usage
stats), `token_delay` (seconds per token), `script` (text pieces to stream instead of the model,
one chunk each), `fail_next` (answer the next request, to a path ending with `fail_path`, with this HTTP status), `break_after`
(drop the connection after this many chunks).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, DynamicCache, Qwen2ForCausalLM

from bot.engine.transformers.sampling import RowParams, Sampler
from bot.engine.transformers.tiny import quiet_progress

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class FakeOpenAI:
    """The server and its knobs; `url` is the base URL to give the engine (`.../v1`)."""

    def __init__(self, model_dir: Path, model_name: str = "mimo-test", max_model_len: int = 4096):
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        with quiet_progress():
            self.model = Qwen2ForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        self.eos_ids = {
            self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
        }
        self.sampler = Sampler(seed=1)
        self.model_lock = threading.Lock()
        self.reset()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reset(self) -> None:
        """Back to the defaults between tests."""
        self.reasoning_parser = True
        self.usage = True
        self.token_delay = 0.0
        self.script: list[str] | None = None
        self.fail_next: int | None = None
        self.fail_path = ""  # fail_next hits only requests to a path ending with this
        self.break_after: int | None = None
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self.disconnects = 0
        self.finished = 0

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()

    # Generation

    def tokens(self, prompt_ids: list[int], body: dict[str, Any], alive: threading.Event):
        """Yield (last token id, text piece, tokens in it) for up to max_tokens model steps."""
        max_tokens = int(body.get("max_tokens") or 16)
        temperature = float(body.get("temperature", 1.0))
        row = dict(temperature=temperature, top_p=float(body.get("top_p", 1.0)))
        seed = body.get("seed")
        cache = DynamicCache()
        ids = torch.tensor([prompt_ids])
        sequence = list(prompt_ids)
        pending: list[int] = []
        for _ in range(max_tokens):
            if not alive.is_set():
                return
            with self.model_lock, torch.no_grad():
                logits = self.model(input_ids=ids, cache=cache, use_cache=True).logits
            params = RowParams(seed=seed, position=len(sequence), **row)
            token = int(self.sampler.choose(logits[:, -1, :], [params])[0])
            sequence.append(token)
            ids = torch.tensor([[token]])
            pending.append(token)
            text = self.tokenizer.decode(pending, skip_special_tokens=False)
            if text.endswith("\ufffd") and token not in self.eos_ids:
                continue  # half a character: wait for the rest
            count, pending = len(pending), []
            if self.token_delay:
                time.sleep(self.token_delay)
            yield token, text, count
            if token in self.eos_ids:
                return


def _handler(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet test output
            pass

        # Plumbing

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def _error(self, status: int, message: str) -> None:
            self._json(
                status, {"error": {"message": message, "type": "BadRequestError", "code": status}}
            )

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._json(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": server.model_name,
                                "object": "model",
                                "max_model_len": server.max_model_len,
                            }
                        ],
                    },
                )
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            body = self._body()
            server.requests.append((self.path, body))
            server.headers.append(dict(self.headers))
            if server.fail_next is not None and self.path.endswith(server.fail_path):
                status, server.fail_next = server.fail_next, None
                self._error(status, "injected failure")
                return
            if self.path == "/tokenize":
                ids = self._prompt_ids(body)
                self._json(
                    200,
                    {"count": len(ids), "max_model_len": server.max_model_len, "tokens": ids},
                )
            elif self.path in ("/v1/chat/completions", "/v1/completions"):
                if body.get("model") != server.model_name:
                    self._error(404, f"The model `{body.get('model')}` does not exist.")
                    return
                prompt_ids = self._prompt_ids(body)
                wanted = len(prompt_ids) + int(body.get("max_tokens") or 16)
                if wanted > server.max_model_len:
                    self._error(
                        400,
                        f"This model's maximum context length is {server.max_model_len} tokens. "
                        f"However, you requested {wanted} tokens. Please reduce the length.",
                    )
                    return
                self._stream(body, prompt_ids, chat=self.path.endswith("/chat/completions"))
            else:
                self._error(404, f"no route {self.path}")

        def _prompt_ids(self, body: dict[str, Any]) -> list[int]:
            tokenizer = server.tokenizer
            if "messages" in body:
                text = tokenizer.apply_chat_template(
                    body["messages"], add_generation_prompt=True, tokenize=False
                )
            else:
                text = body.get("prompt", "")
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        # Streaming

        def _send(self, data: str) -> bool:
            try:
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()
                return True
            except OSError:
                server.disconnects += 1
                return False

        def _stream(self, body: dict[str, Any], prompt_ids: list[int], chat: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            alive = threading.Event()
            alive.set()
            usage = server.usage and (body.get("stream_options") or {}).get(
                "continuous_usage_stats"
            )
            completion = 0
            in_reasoning = chat
            finish = "length"
            pieces = (
                ((None, piece, 1) for piece in server.script)
                if server.script is not None
                else server.tokens(prompt_ids, body, alive)
            )
            if chat and not server.reasoning_parser and server.script is None:
                pieces = _prefixed(THINK_OPEN, pieces)  # MiMo writes the open tag itself
            for chunks, (token, text, count) in enumerate(pieces):
                if server.break_after is not None and chunks >= server.break_after:
                    return  # connection dropped: no [DONE]
                completion += count
                if token in server.eos_ids:
                    finish = "stop"
                    text = ""
                delta: dict[str, Any]
                if not chat:
                    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": None}
                elif server.reasoning_parser and in_reasoning:
                    if THINK_CLOSE in text:
                        before, after = text.split(THINK_CLOSE, 1)
                        in_reasoning = False
                        delta = {"reasoning_content": before} if before else {}
                        if after:
                            delta["content"] = after
                    else:
                        delta = {"reasoning_content": text.replace(THINK_OPEN, "")}
                    choice = {"index": 0, "delta": delta, "finish_reason": None}
                else:
                    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
                chunk: dict[str, Any] = {"id": "cmpl-test", "choices": [choice]}
                if usage:
                    chunk["usage"] = {
                        "prompt_tokens": len(prompt_ids),
                        "completion_tokens": completion,
                        "total_tokens": len(prompt_ids) + completion,
                    }
                if not self._send(json.dumps(chunk)):
                    alive.clear()
                    return
                if finish == "stop":
                    break
            last = {"index": 0, "finish_reason": finish}
            last.update({"delta": {}} if chat else {"text": ""})
            if self._send(json.dumps({"id": "cmpl-test", "choices": [last]})) and self._send(
                "[DONE]"
            ):
                server.finished += 1

    return Handler


def _prefixed(prefix: str, pieces: Any) -> Any:
    """The pieces with `prefix` glued to the first one (same chunk and token count)."""
    first = True
    for token, text, count in pieces:
        yield token, (prefix + text if first else text), count
        first = False
