"""Workers ready per queue (from their heartbeats) and queue depths, on a real Redis."""

from __future__ import annotations

import redis

from bot.console import workers
from tasks import inspect
from tests.helpers import unique


def test_ready_workers_per_queue(redis_client: redis.Redis) -> None:
    gpu, io, loading = unique("gpu"), unique("io"), unique("gpu")
    workers.beat(redis_client, gpu, ["gpu"], "ready", {"generating": 2})
    workers.beat(redis_client, io, ["io"], "ready")
    workers.beat(redis_client, loading, ["gpu"], "loading")
    try:
        online = inspect.workers_online(redis_client)
        assert gpu in online["gpu"] and gpu not in online["io"]
        assert io in online["io"] and io not in online["gpu"]
        assert loading not in online["gpu"]  # still building its engine: takes no job yet
        row = next(w for w in inspect.workers(redis_client) if w["hostname"] == gpu)
        assert inspect.generating(row) == 2
    finally:
        for name in (gpu, io, loading):
            workers.gone(redis_client, name)
    assert gpu not in inspect.workers_online(redis_client)["gpu"]


def test_queue_depths_count_waiting_jobs(redis_client: redis.Redis) -> None:
    before = inspect.queue_depths(redis_client)
    redis_client.lpush("io", "x", "y")
    try:
        after = inspect.queue_depths(redis_client)
        assert after["io"] - before["io"] == 2
        assert after["gpu"] == before["gpu"]
    finally:
        redis_client.lrem("io", 0, "x")
        redis_client.lrem("io", 0, "y")
