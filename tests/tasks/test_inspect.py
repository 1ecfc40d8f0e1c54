"""Worker heartbeats in Redis: who is online for which queue, and queue depths."""

from __future__ import annotations

import time

import redis

from tasks import inspect
from tests.helpers import unique


def test_workers_online_per_queue_and_forgotten(redis_client: redis.Redis) -> None:
    gpu, io = unique("gpu"), unique("io")
    inspect.beat(redis_client, gpu, ["gpu"], generating=2)
    inspect.beat(redis_client, io, ["io"])
    try:
        online = inspect.workers_online(redis_client)
        assert gpu in online["gpu"] and gpu not in online["io"]
        assert io in online["io"] and io not in online["gpu"]
        row = next(w for w in inspect.workers(redis_client) if w["name"] == gpu)
        assert row["generating"] == "2"
    finally:
        inspect.forget(redis_client, gpu)
    assert gpu not in inspect.workers_online(redis_client)["gpu"]
    inspect.forget(redis_client, io)


def test_a_silent_worker_drops_out(redis_client: redis.Redis) -> None:
    name = unique("w")
    inspect.beat(redis_client, name, ["gpu"])
    redis_client.pexpire(f"mimochat:worker:{name}", 50)  # as if its beats had stopped
    time.sleep(0.1)
    assert name not in inspect.workers_online(redis_client)["gpu"]
    assert name not in redis_client.smembers("mimochat:workers")  # pruned from the index


def test_heartbeat_thread_beats_then_leaves(redis_client: redis.Redis) -> None:
    name = unique("w")
    beat = inspect.Heartbeat(redis_client, name, ["gpu", "io"], lambda: {"generating": 1})
    beat.start()
    deadline = time.monotonic() + 5
    while name not in inspect.workers_online(redis_client)["io"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    beat.stop()
    assert not beat.is_alive()
    assert name not in inspect.workers_online(redis_client)["gpu"]


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
