"""Generation engines behind one interface; `get_engine()` builds the configured one per process."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

# Before torch loads OpenMP: its worker threads sleep between parallel regions instead of
# spinning. The batch loop runs beside the task threads; spinning workers took the CPU from
# them and made CPU decoding several times slower (bench/RESULTS.md). An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bot.core.settings import Settings
from bot.engine.base import Engine, Generation, GenerationRequest, StreamEvent

__all__ = ["Engine", "Generation", "GenerationRequest", "StreamEvent", "get_engine", "reset_engine"]

_lock = threading.Lock()
_engine: Engine | None = None


def build_engine(settings: Settings) -> Engine:
    """The one place that names the implementation for a backend (slowed in the sandbox)."""
    engine = _backend(settings)
    if settings.sandbox or settings.generation_delay > 0:
        from bot.engine.slowed import SlowedEngine

        return SlowedEngine(engine, settings.generation_delay, _sandbox_delay(settings))
    return engine


def _sandbox_delay(settings: Settings) -> Callable[[], float]:
    """The console's extra delay, read per request from Redis (sandbox only)."""
    if not settings.sandbox:
        return lambda: 0.0
    from bot.core.store import connect, key, resolve_url

    client = connect(resolve_url(settings))
    return lambda: float(client.get(key("sandbox", "engine-delay")) or 0)


def _backend(settings: Settings) -> Engine:
    if settings.backend == "transformers":
        from bot.engine.transformers.engine import TransformersEngine

        return TransformersEngine(settings)
    if settings.backend == "openai":
        from bot.engine.openai_backend import OpenAIEngine

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
