"""Worker heartbeats in Redis: written with a TTL, listed, grouped by queue, removed."""

from __future__ import annotations

import redis

from bot.console import workers
from tests.helpers import unique


def test_beat_online_gone(redis_client: redis.Redis) -> None:
    name = unique("w") + "@host"
    workers.beat(redis_client, name, ["io", "gpu"], "ready", {"device": "cpu"})
    mine = [w for w in workers.online(redis_client) if w["hostname"] == name]
    assert len(mine) == 1
    assert mine[0]["queues"] == ["gpu", "io"] and mine[0]["engine"] == {"device": "cpu"}
    assert 0 < redis_client.ttl(workers.worker_key(name)) <= workers.BEAT_TTL
    workers.gone(redis_client, name)
    assert all(w["hostname"] != name for w in workers.online(redis_client))


def test_by_queue_lists_every_queue() -> None:
    online = [
        {"hostname": "a", "queues": ["gpu", "io"]},
        {"hostname": "b", "queues": ["io"]},
    ]
    assert workers.by_queue(online, ("gpu", "io", "wecom")) == {
        "gpu": ["a"],
        "io": ["a", "b"],
        "wecom": [],
    }
