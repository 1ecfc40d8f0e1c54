"""Which workers are ready for which queue, and how long the queues are, read from Redis.

Workers publish heartbeats (`bot/console/workers.py`, written by tasks/heartbeat.py) and remove them as
soon as they start shutting down, so these answer in one round trip without Celery's broadcast
ping. Used by `/readyz`, the web's `/metrics`, and the admin console.
"""

from __future__ import annotations

from typing import Any

import redis

from bot.console import workers as heartbeats
from tasks.names import GPU_QUEUE, IO_QUEUE

QUEUES = (GPU_QUEUE, IO_QUEUE)
UNACKED_KEY = "unacked"  # kombu's Redis transport: jobs taken by a worker, not acknowledged yet


def workers(client: redis.Redis) -> list[dict[str, Any]]:
    """Every worker with a live heartbeat (loading its engine or ready)."""
    return heartbeats.online(client)


def workers_online(client: redis.Redis) -> dict[str, list[str]]:
    """The hostnames of the workers ready to take jobs from each queue (every queue listed)."""
    ready = [w for w in workers(client) if w.get("state") == "ready"]
    return heartbeats.by_queue(ready, QUEUES)


def generating(worker: dict[str, Any]) -> int:
    """Generations in flight in a worker, as its last heartbeat said."""
    return int((worker.get("engine") or {}).get("generating") or 0)


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Jobs waiting in each queue, not yet taken by a worker."""
    with client.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            pipe.llen(queue)
        return dict(zip(QUEUES, map(int, pipe.execute()), strict=True))


def unacked(client: redis.Redis) -> int:
    """Jobs taken by workers and not acknowledged yet (running, or reserved to run next)."""
    return int(client.hlen(UNACKED_KEY))
