"""A live long connection for synchronous tests (web, console): the fake WeCom server and a
connector subscribed to it, both on the fake's event loop in a thread of their own.

The connector enqueues into a list; the test plays the worker with the real `ProgressWriter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from bot.channels.wecom.connector import Connector
from bot.channels.wecom.ws_sandbox import SandboxThread
from bot.core.contracts import Job
from bot.core.progress import ProgressWriter
from bot.core.settings import Settings
from tests.helpers import unique

SECRET = "live-secret"


@dataclass
class Live:
    """The fake WeCom (`thread.fake`), the bot it knows, the settings pointing at it."""

    thread: SandboxThread
    bot: str
    settings: Settings
    jobs: list[Job] = field(default_factory=list)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run one of the fake's coroutines (say, event, …) on its loop."""
        return self.thread.call(getattr(self.thread.fake, method)(*args, **kwargs))

    def job(self, count: int = 1, timeout: float = 10.0) -> Job:
        """The `count`-th job the connector enqueued (waits for it)."""
        wait(lambda: len(self.jobs) >= count, timeout, f"{count} jobs enqueued")
        return self.jobs[count - 1]


def wait(predicate: Any, timeout: float, what: str) -> None:
    """Poll until `predicate()` is true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def answer(client: redis.Redis, job: Job, text: str) -> None:
    """Play the worker: the answer grows in two parts, then is finished."""
    writer = ProgressWriter(client, job.job_id, min_interval=0)
    half = len(text) // 2
    writer.add("answer", text[:half])
    time.sleep(0.3)  # the connector pushes a frame of the first half
    writer.add("answer", text[half:])
    writer.finish(text, "", "done")


@contextlib.contextmanager
def live_connector(settings: Settings, client: redis.Redis, **changes: Any) -> Iterator[Live]:
    """A fake WeCom and a subscribed connector (on `settings` with `changes`), stopped (as by
    SIGTERM) on exit."""
    bot = unique("bot")
    thread = SandboxThread({bot: SECRET})
    url = thread.start()
    changed = settings.replace(
        wecom_bot_id=bot, wecom_bot_secret=SECRET, wecom_ws_url=url, **changes
    )
    live = Live(thread, bot, changed)
    fast = {"interval": 0.05, "lease_ttl": 1.0, "backoff_base": 0.05, "backoff_max": 0.2}
    connector = Connector(changed, client, live.jobs.append, **fast)
    stop = asyncio.Event()
    running = asyncio.run_coroutine_threadsafe(connector.run(stop), thread.loop)
    try:
        wait(lambda: thread.fake.connected(bot) > 0, 10.0, "the connector subscribed")
        yield live
    finally:
        thread.loop.call_soon_threadsafe(stop.set)
        with contextlib.suppress(Exception):
            running.result(10)
        thread.stop()
        client.connection_pool.disconnect()  # the connector's threads opened connections
