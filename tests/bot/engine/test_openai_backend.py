"""The OpenAI-compatible backend against a local SSE server: reasoning formats, budget forcing
through /completions, token counts, and every failure mapped to an exception with a clear message.

The shared contract (answers, streaming, deadlines, concurrency) is in test_contract.py; here the
server is scripted where a test needs exact text.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from bot.core.contracts import IncomingMessage
from bot.core.settings import Settings
from bot.engine.base import Engine, GenerationRequest
from bot.engine.factory import build_engine
from bot.engine.openai_backend import (
    FORCED_CLOSE,
    OpenAIEngine,
    ServerError,
    chatml_prompt,
)
from bot.pipeline.answer import APOLOGY_TEXT, answer
from bot.pipeline.conversations import conversations
from bot.pipeline.ingest import make_job
from tests.fake_openai import FakeOpenAI
from tests.helpers import free_port, unique

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "messages": QUESTION,
        "max_new_tokens": 12,
        "thinking_budget": 24,
        "seed": 7,
        "request_id": "o1",
    }
    values.update(overrides)
    return GenerationRequest(**values)


@pytest.fixture
def engine(openai_settings: Settings) -> OpenAIEngine:
    built = build_engine(openai_settings)
    assert isinstance(built, OpenAIEngine)
    return built


def paths(server: FakeOpenAI) -> list[str]:
    return [path for path, _ in server.requests if path != "/tokenize"]


@pytest.mark.parametrize("parser", [True, False])
def test_reasoning_closed_by_the_model(
    engine: OpenAIEngine, fake_openai: FakeOpenAI, parser: bool
) -> None:
    fake_openai.reasoning_parser = parser
    fake_openai.script = ["<think>"] * (not parser) + [
        "The capital",
        " is Paris.",
        "</think>",
        "\n\n",
        "Paris",
        ".",
    ]
    events = list(engine.stream(request()))
    generation = events[-1].generation
    assert generation is not None
    assert (generation.reasoning, generation.answer) == ("The capital is Paris.", "Paris.")
    assert generation.finish_reason in {"stop", "length"}
    assert paths(fake_openai) == ["/v1/chat/completions"]  # nothing forced, no second request
    assert generation.extra["reasoning_format"] == ("reasoning_content" if parser else "think_tags")
    assert "".join(e.text for e in events if e.kind == "answer") == "Paris."


def test_tags_split_over_chunks_never_show(engine: OpenAIEngine, fake_openai: FakeOpenAI) -> None:
    fake_openai.reasoning_parser = False
    fake_openai.script = [
        "<thi",
        "nk>Think",
        " <",
        "|im",
        "北 more</",
        "think>",
        "Done",
        " <",
        "|im_end|>",
    ]
    events = list(engine.stream(request(thinking_budget=50)))
    generation = events[-1].generation
    assert generation is not None
    assert generation.reasoning == "Think <|im北 more"
    assert generation.answer == "Done"
    pieces = [e.text for e in events[:-1]]
    assert not any(p.endswith("<") or "</" in p or "<|im_end" in p for p in pieces)
    assert "".join(e.text for e in events if e.kind == "reasoning") == generation.reasoning


def test_budget_spent_forces_the_close_through_completions(
    engine: OpenAIEngine, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script = ["hmm "] * 10  # reasons on and on, never closes
    generation = engine.generate(request(thinking_budget=4, max_new_tokens=6))
    assert generation.finish_reason == "budget"
    assert generation.reasoning_tokens == 4
    assert generation.reasoning == "hmm hmm hmm hmm"
    # The answer came from a second request: the raw prompt, the reasoning, a forced </think>.
    (first_path, first), (second_path, second) = [
        r for r in fake_openai.requests if r[0] != "/tokenize"
    ]
    assert (first_path, second_path) == ("/v1/chat/completions", "/v1/completions")
    assert first["max_tokens"] == 4 + 6 and first["stream"] is True
    assert first["messages"][0] == {"role": "system", "content": ""}
    assert second["prompt"] == (chatml_prompt(QUESTION) + "<think>" + "hmm " * 4 + FORCED_CLOSE)
    assert second["max_tokens"] == 6
    assert generation.answer == "hmm hmm hmm hmm hmm hmm".strip()  # the script, continued


def test_without_usage_chunks_are_counted(engine: OpenAIEngine, fake_openai: FakeOpenAI) -> None:
    fake_openai.usage = False
    fake_openai.script = ["a "] * 10
    generation = engine.generate(request(thinking_budget=3, max_new_tokens=2))
    assert generation.reasoning_tokens == 3
    assert generation.answer_tokens == 2


def test_the_model_answers_on_the_real_tiny_model(
    engine: OpenAIEngine, fake_openai: FakeOpenAI
) -> None:
    """Unscripted: the tiny model behind the server, sampled with the request's seed."""
    first = engine.generate(request(seed=11))
    again = engine.generate(request(seed=11))
    assert first.answer and first.to_dict() | {"seconds": 0} == again.to_dict() | {"seconds": 0}
    chat = [body for path, body in fake_openai.requests if path == "/v1/chat/completions"][0]
    assert chat["seed"] == 11 and chat["temperature"] == 0.6 and chat["top_p"] == 0.95


def test_abandoned_stream_closes_the_connection(
    engine: OpenAIEngine, fake_openai: FakeOpenAI
) -> None:
    fake_openai.token_delay = 0.01
    stream = engine.stream(request(temperature=0.0, thinking_budget=2000))
    next(stream)
    stream.close()
    deadline = time.monotonic() + 5
    while fake_openai.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake_openai.disconnects == 1  # the server saw the client go and stopped generating
    assert fake_openai.finished == 0


def test_counts_tokens_with_the_servers_tokenizer(
    engine: OpenAIEngine, fake_openai: FakeOpenAI
) -> None:
    counted = engine.count_tokens(QUESTION)
    assert counted == served_count(fake_openai, QUESTION) + 1  # + the <think> the model writes


def served_count(server: FakeOpenAI, messages: list[dict[str, str]]) -> int:
    """The prompt's token count as the server's own /tokenize gives it."""
    return requests.post(
        server.url.removesuffix("/v1") + "/tokenize",
        json={
            "model": server.model_name,
            "messages": [{"role": "system", "content": ""}, *messages],
        },
        timeout=5,
    ).json()["count"]


def test_falls_back_to_an_estimate_without_tokenize(
    engine: OpenAIEngine, fake_openai: FakeOpenAI
) -> None:
    fake_openai.fail_next = 404
    estimate = engine.count_tokens(QUESTION)
    assert estimate == Engine.count_tokens(engine, QUESTION)  # the base class's estimate
    assert estimate >= served_count(fake_openai, QUESTION) + 1  # which over-counts
    calls = len(fake_openai.requests)
    engine.count_tokens(QUESTION)
    assert len(fake_openai.requests) == calls  # not asked again


def test_api_key_is_sent_and_never_shown(
    openai_settings: Settings, fake_openai: FakeOpenAI
) -> None:
    engine = build_engine(openai_settings.replace(openai_api_key="sk-secret-123"))
    fake_openai.script = ["ok</think>", "yes"]
    engine.generate(request())
    assert fake_openai.headers[-1]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in str(engine.info())
    fake_openai.fail_next = 401
    with pytest.raises(ServerError) as raised:
        engine.generate(request())
    assert "MIMOCHAT_OPENAI_API_KEY" in str(raised.value)
    assert "sk-secret-123" not in str(raised.value)


@pytest.mark.parametrize(
    ("knob", "value", "error", "match"),
    [
        ("fail_next", 500, ServerError, "answered 500"),
        ("fail_next", 503, ServerError, "answered 503"),
        ("break_after", 3, ServerError, "without \\[DONE\\]"),
    ],
)
def test_server_failures_raise(
    engine: OpenAIEngine,
    fake_openai: FakeOpenAI,
    knob: str,
    value: int,
    error: type[Exception],
    match: str,
) -> None:
    setattr(fake_openai, knob, value)
    with pytest.raises(error, match=match):
        engine.generate(request())


def test_unknown_model(openai_settings: Settings) -> None:
    engine = build_engine(openai_settings.replace(openai_model="no-such-model"))
    with pytest.raises(ServerError, match="no-such-model"):
        engine.generate(request())


def test_server_not_running(openai_settings: Settings) -> None:
    down = openai_settings.replace(openai_base_url=f"http://127.0.0.1:{free_port()}/v1")
    engine = build_engine(down)
    with pytest.raises(ServerError, match="cannot reach"):
        engine.generate(request())
    assert engine.context_length == 32768  # MiMo's, when the server cannot say
    assert engine.count_tokens(QUESTION) > 0  # an estimate


def test_context_tokens_setting_wins(openai_settings: Settings) -> None:
    engine = build_engine(openai_settings.replace(context_tokens=2048))
    assert engine.context_length == 2048


def test_chatml_prompt() -> None:
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>greet</think>\n\nHello!"},
        {"role": "user", "content": "2+2?"},
    ]
    assert chatml_prompt(history) == (
        "<|im_start|>system\n<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_the_service_apologises_when_the_server_fails(
    settings: Settings, redis_client: Any, openai_settings: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.fail_next, fake_openai.fail_path = 500, "/chat/completions"
    engine = build_engine(openai_settings)
    user = unique()
    message = IncomingMessage(
        channel="wechat", user=user, account="gh", kind="text", content="hi", msg_id=unique()
    )
    job = make_job(message, f"test:{unique()}")
    result = answer(job, settings=settings, client=redis_client, engine=engine)
    assert result is not None
    assert result.answer == APOLOGY_TEXT
    assert "ServerError" in result.error  # the exception the engine raised is named
    assert conversations(settings, redis_client).history("wechat", user) == []
