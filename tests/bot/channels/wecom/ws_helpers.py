"""Helpers of the long-connection tests: run a scenario on an event loop, wait for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one async scenario to its end, bounded in time."""
    return asyncio.run(asyncio.wait_for(scenario, timeout))


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Wait until `predicate()` is true (it may be async); AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.05)
