"""Which workers are online for which queue, and how long the queues are, read from Redis.

Each worker writes a heartbeat (a hash with a short TTL) every few seconds while it consumes
and deletes it as soon as it starts shutting down, so `workers_online()` answers in one
round trip without Celery's broadcast ping (which waits for replies). Used by `/readyz`, the
web's `/metrics`, and the admin console.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import redis

from bot.store import key
from tasks.celery_app import GPU_QUEUE, IO_QUEUE

log = logging.getLogger(__name__)

QUEUES = (GPU_QUEUE, IO_QUEUE)
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TTL = 15  # three missed beats and the worker counts as gone
UNACKED_KEY = "unacked"  # kombu's Redis transport: jobs taken by a worker, not acknowledged yet
_INDEX = key("workers")


def _worker_key(name: str) -> str:
    return key("worker", name)


def beat(client: redis.Redis, name: str, queues: list[str], **info: object) -> None:
    """Record that worker `name` consumes `queues` now."""
    mapping = {
        "queues": ",".join(queues),
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "seen": f"{time.time():.3f}",
        **{k: str(v) for k, v in info.items()},
    }
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(_worker_key(name), mapping=mapping)
        pipe.expire(_worker_key(name), HEARTBEAT_TTL)
        pipe.sadd(_INDEX, name)
        pipe.execute()


def forget(client: redis.Redis, name: str) -> None:
    """Remove a worker's heartbeat (it stopped consuming)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.delete(_worker_key(name))
        pipe.srem(_INDEX, name)
        pipe.execute()


def workers(client: redis.Redis) -> list[dict[str, str]]:
    """Every worker with a live heartbeat: name, queues, host, pid, seen, and what it added."""
    names = sorted(client.smembers(_INDEX))
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(_worker_key(name))
        rows = pipe.execute()
    gone = [name for name, row in zip(names, rows, strict=True) if not row]
    if gone:
        client.srem(_INDEX, *gone)
    return [{"name": name, **row} for name, row in zip(names, rows, strict=True) if row]


def workers_online(client: redis.Redis) -> dict[str, list[str]]:
    """The names of the live workers consuming each queue (every queue listed, maybe empty)."""
    online: dict[str, list[str]] = {q: [] for q in QUEUES}
    for worker in workers(client):
        for queue in filter(None, worker.get("queues", "").split(",")):
            online.setdefault(queue, []).append(worker["name"])
    return online


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Jobs waiting in each queue, not yet taken by a worker."""
    with client.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            pipe.llen(queue)
        return dict(zip(QUEUES, map(int, pipe.execute()), strict=True))


def unacked(client: redis.Redis) -> int:
    """Jobs taken by workers and not acknowledged yet (running, or reserved to run next)."""
    return int(client.hlen(UNACKED_KEY))


class Heartbeat(threading.Thread):
    """Beats for one worker until stopped; a Redis outage only skips beats."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        queues: list[str],
        figures: Callable[[], dict[str, object]] = dict,
    ) -> None:
        super().__init__(name="mimochat-heartbeat", daemon=True)
        self.client, self.worker, self.queues, self.figures = client, name, queues, figures
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                beat(self.client, self.worker, self.queues, **self.figures())
            except (redis.RedisError, OSError) as exc:
                log.warning("heartbeat of %s not written: %s", self.worker, type(exc).__name__)
            self._stop_event.wait(HEARTBEAT_SECONDS)

    def stop(self) -> None:
        """Stop beating and remove the heartbeat, so readiness checks see the worker leave."""
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(2.0)  # a beat in progress must not write the heartbeat back
        try:
            forget(self.client, self.worker)
        except (redis.RedisError, OSError) as exc:
            log.warning("heartbeat of %s not removed: %s", self.worker, type(exc).__name__)
