"""The worker's heartbeat thread: publishes bot.console.workers records while the worker runs."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from bot.console import workers

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread that writes this worker's record every `interval` seconds."""

    def __init__(
        self,
        client: redis.Redis,
        hostname: str,
        queues: list[str],
        interval: float = workers.BEAT_SECONDS,
    ) -> None:
        self.client = client
        self.hostname = hostname
        self.queues = queues
        self.interval = interval
        self.state = "loading"
        self.engine_info: Callable[[], dict[str, Any]] | None = None
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mimochat-heartbeat", daemon=True)

    def start(self) -> None:
        """Publish now and keep publishing."""
        self.beat()
        self._thread.start()

    def ready(self, engine_info: Callable[[], dict[str, Any]] | None) -> None:
        """The worker consumes now; `engine_info` is called at each beat (GPU memory moves)."""
        self.state, self.engine_info = "ready", engine_info
        self.beat()

    def beat(self) -> None:
        """One heartbeat; a Redis hiccup is logged, never raised (the worker keeps working)."""
        try:
            info = self.engine_info() if self.engine_info else None
            workers.beat(self.client, self.hostname, self.queues, self.state, info, self.started_at)
        except Exception as exc:  # the heartbeat must never take the worker down
            log.warning("heartbeat not written: %s", type(exc).__name__)

    def stop(self) -> None:
        """Stop beating and remove the record so the worker shows offline at once."""
        self._stop.set()
        # A beat in progress would write the record back after we delete it: let it finish.
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 5)
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            workers.gone(self.client, self.hostname)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
