"""Fixtures for the engine tests: one tiny checkpoint and one engine per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.core.settings import Settings
from bot.engine.transformers.engine import TransformersEngine
from bot.engine.transformers.tiny import ensure_tiny_model
from tests.fake_openai import FakeOpenAI


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the tiny checkpoint, built once for the session."""
    path = tmp_path_factory.mktemp("engine-data")
    ensure_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_data_dir: Path) -> Path:
    """The tiny checkpoint's directory."""
    return ensure_tiny_model(tiny_data_dir)


@pytest.fixture(scope="session")
def tiny_settings(tiny_data_dir: Path) -> Settings:
    """Settings that select the tiny model on the CPU with small budgets."""
    return Settings(
        model="tiny",
        data_dir=str(tiny_data_dir),
        device="cpu",
        max_new_tokens=12,
        thinking_budget=24,
    )


@pytest.fixture(scope="session")
def tiny_engine(tiny_settings: Settings) -> Iterator[TransformersEngine]:
    """One engine running requests one at a time (its `model.generate` can be scripted)."""
    engine = TransformersEngine(tiny_settings.replace(continuous_batching=False))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_batched(tiny_settings: Settings) -> Iterator[TransformersEngine]:
    """One engine with continuous batching, shared by the tests that only read from it."""
    engine = TransformersEngine(tiny_settings.replace(continuous_batching=True))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def openai_server(tiny_model_dir: Path) -> Iterator[FakeOpenAI]:
    """A local OpenAI-compatible server (SSE streaming) backed by the tiny model."""
    server = FakeOpenAI(tiny_model_dir)
    yield server
    server.close()


@pytest.fixture
def fake_openai(openai_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The shared server with its knobs reset for one test."""
    openai_server.reset()
    yield openai_server
    openai_server.reset()


@pytest.fixture
def openai_settings(tiny_settings: Settings, fake_openai: FakeOpenAI) -> Settings:
    """Settings that point the OpenAI backend at the local server."""
    return tiny_settings.replace(
        backend="openai", openai_base_url=fake_openai.url, openai_model=fake_openai.model_name
    )
