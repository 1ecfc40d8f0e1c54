"""Fixtures for the engine tests: one tiny checkpoint and one engine per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.engine.tiny import ensure_tiny_model
from bot.engine.transformers_engine import TransformersEngine
from bot.settings import Settings


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
    """One engine shared by the tests that only read from it."""
    engine = TransformersEngine(tiny_settings)
    yield engine
    engine.close()
