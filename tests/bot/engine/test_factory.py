"""The engine factory: which implementation a backend names, the sandbox's wrapper, one per process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from bot.core.settings import Settings
from bot.core.store import key
from bot.engine.factory import build_engine, get_engine, reset_engine
from bot.engine.openai_backend import OpenAIEngine
from bot.engine.slowed import SlowedEngine
from bot.engine.transformers.engine import TransformersEngine
from tests.helpers import free_port

DELAY_KEY = key("sandbox", "engine-delay")


@pytest.fixture
def offline(settings: Settings) -> Settings:
    """The OpenAI backend at a port nobody listens on: building it contacts no server."""
    return settings.replace(
        backend="openai",
        openai_base_url=f"http://127.0.0.1:{free_port()}/v1",
        sandbox=False,
        generation_delay=0.0,
    )


@pytest.fixture
def process_engine() -> Iterator[None]:
    """No process-wide engine before or after the test."""
    reset_engine()
    yield
    reset_engine()


def test_build_engine_names_this_backend(tiny_settings: Settings) -> None:
    engine = build_engine(tiny_settings)
    try:
        assert isinstance(engine, TransformersEngine)
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("sandbox", "delay", "slowed"),
    [(False, 0.0, False), (False, 0.5, True), (True, 0.0, True), (True, 0.5, True)],
)
def test_slowed_only_in_the_sandbox_or_with_a_delay(
    offline: Settings, sandbox: bool, delay: float, slowed: bool
) -> None:
    engine = build_engine(offline.replace(sandbox=sandbox, generation_delay=delay))
    assert isinstance(engine, SlowedEngine) is slowed
    inner = engine.inner if isinstance(engine, SlowedEngine) else engine
    assert isinstance(inner, OpenAIEngine)
    if isinstance(engine, SlowedEngine):
        assert engine.fixed == delay


def test_the_sandbox_delay_is_read_per_request(
    offline: Settings, redis_client: redis.Redis
) -> None:
    engine = build_engine(offline.replace(sandbox=True))
    assert isinstance(engine, SlowedEngine)
    redis_client.delete(DELAY_KEY)
    try:
        assert engine.extra() == 0.0
        redis_client.set(DELAY_KEY, "2.5")
        assert engine.extra() == 2.5
    finally:
        redis_client.delete(DELAY_KEY)


def test_outside_the_sandbox_redis_is_never_read(offline: Settings) -> None:
    engine = build_engine(offline.replace(generation_delay=0.5, redis_url="redis://127.0.0.1:1/0"))
    assert isinstance(engine, SlowedEngine)
    assert engine.extra() == 0.0


def test_unknown_backend(offline: Settings) -> None:
    with pytest.raises(ValueError, match="MIMOCHAT_BACKEND='vllm'"):
        build_engine(offline.replace(backend="vllm"))


def test_one_engine_per_process(offline: Settings, process_engine: None) -> None:
    first = get_engine(offline)
    assert get_engine(offline.replace(openai_model="other")) is first
    reset_engine()
    second = get_engine(offline)
    assert second is not first
