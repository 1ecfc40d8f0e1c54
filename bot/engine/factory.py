"""The engine factory: `get_engine()` builds the configured engine once per process."""

from __future__ import annotations

import threading
from collections.abc import Callable

from bot.core.settings import Settings
from bot.core.store import connect, key, resolve_url
from bot.engine.base import Engine
from bot.engine.openai_backend import OpenAIEngine
from bot.engine.slowed import SlowedEngine

_lock = threading.Lock()
_engine: Engine | None = None


def build_engine(settings: Settings) -> Engine:
    """The one place that names the implementation for a backend (slowed in the sandbox)."""
    engine = _backend(settings)
    if settings.sandbox or settings.generation_delay > 0:
        return SlowedEngine(engine, settings.generation_delay, _sandbox_delay(settings))
    return engine


def _sandbox_delay(settings: Settings) -> Callable[[], float]:
    """The console's extra delay, read per request from Redis (sandbox only)."""
    if not settings.sandbox:
        return lambda: 0.0
    client = connect(resolve_url(settings))
    return lambda: float(client.get(key("sandbox", "engine-delay")) or 0)


def _backend(settings: Settings) -> Engine:
    if settings.backend == "transformers":
        # Imported here, not at the top: torch and transformers take seconds and gigabytes to
        # load, and a process that uses the OpenAI backend never needs them.
        from bot.engine.transformers.engine import TransformersEngine

        return TransformersEngine(settings)
    if settings.backend == "openai":
        return OpenAIEngine(settings)
    raise ValueError(f"MIMOCHAT_BACKEND={settings.backend!r} is not one of: transformers, openai")


def get_engine(settings: Settings) -> Engine:
    """The process-wide engine, built on first use (the worker calls this before taking work)."""
    global _engine
    with _lock:
        if _engine is None:
            _engine = build_engine(settings)
        return _engine


def reset_engine() -> None:
    """Drop the process-wide engine (tests, shutdown)."""
    global _engine
    with _lock:
        if _engine is not None:
            _engine.close()
        _engine = None
