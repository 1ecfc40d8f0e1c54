"""The worker's heartbeat thread: loading, then ready with live engine info, then gone."""

from __future__ import annotations

import time

import redis

from bot.console import workers
from tasks.heartbeat import Heartbeat
from tests.helpers import unique


def record(client: redis.Redis, name: str) -> dict | None:
    return next((w for w in workers.online(client) if w["hostname"] == name), None)


def test_heartbeat_lifecycle(redis_client: redis.Redis) -> None:
    name = unique("w") + "@host"
    beat = Heartbeat(redis_client, name, ["gpu"], interval=0.05)
    beat.start()
    assert record(redis_client, name)["state"] == "loading"
    calls: list[int] = []

    def info() -> dict:
        calls.append(1)
        return {"device": "cpu", "call": len(calls)}

    beat.ready(info)
    assert record(redis_client, name)["state"] == "ready"
    first = record(redis_client, name)["engine"]["call"]
    time.sleep(0.3)
    assert record(redis_client, name)["engine"]["call"] > first  # info is re-read at each beat
    beat.stop()
    assert record(redis_client, name) is None


def test_heartbeat_survives_a_failing_engine_info(redis_client: redis.Redis) -> None:
    name = unique("w") + "@host"
    beat = Heartbeat(redis_client, name, ["gpu"], interval=60)
    beat.start()

    def broken() -> dict:
        raise RuntimeError("CUDA error")

    beat.ready(broken)  # logged, not raised: the worker keeps working
    assert record(redis_client, name)["state"] == "loading"  # the last good beat stays
    beat.stop()
