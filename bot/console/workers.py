"""Worker heartbeats in Redis: which workers are online, the queues they serve, their engine.

Each worker writes `mimochat:worker:<hostname>` every `BEAT_SECONDS` with a TTL of
`BEAT_TTL`, so a worker that died disappears within that TTL and a clean stop removes its key at
once. The doctor and the console read these records instead of broadcasting a Celery `inspect`:
no wait for replies on every page refresh, no Celery in the reader, and the record carries what
`inspect` cannot — the loaded model, its device and its memory.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import redis

from bot.core.store import key

BEAT_SECONDS = 10.0
BEAT_TTL = 30


def worker_key(hostname: str) -> str:
    """Where one worker's heartbeat lives."""
    return key("worker", hostname)


def beat(
    client: redis.Redis,
    hostname: str,
    queues: list[str],
    state: str,
    engine: dict[str, Any] | None = None,
    started_at: float | None = None,
) -> None:
    """Publish one heartbeat: state is `loading` (engine being built) or `ready`."""
    record = {
        "hostname": hostname,
        "queues": sorted(queues),
        "state": state,
        "engine": engine or {},
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": started_at or time.time(),
        "beat_at": time.time(),
    }
    client.set(worker_key(hostname), json.dumps(record), ex=BEAT_TTL)


def gone(client: redis.Redis, hostname: str) -> None:
    """Remove a worker's heartbeat (clean shutdown)."""
    client.delete(worker_key(hostname))


def online(client: redis.Redis) -> list[dict[str, Any]]:
    """Every worker with a live heartbeat, sorted by hostname."""
    keys = sorted(client.scan_iter(match=worker_key("*"), count=100))
    if not keys:
        return []
    out = []
    for raw in client.mget(keys):
        if raw:  # expired between SCAN and MGET
            out.append(json.loads(raw))
    return sorted(out, key=lambda w: w["hostname"])


def by_queue(workers: list[dict[str, Any]], queues: tuple[str, ...]) -> dict[str, list[str]]:
    """Hostnames serving each queue (every queue listed, even with nobody on it)."""
    out: dict[str, list[str]] = {q: [] for q in queues}
    for w in workers:
        for q in w.get("queues", []):
            out.setdefault(q, []).append(w["hostname"])
    return out


def worker_id(hostname: str) -> str:
    """How a ledger record names the worker process holding a message: `hostname:pid`."""
    return f"{hostname}:{os.getpid()}"


def alive_ids(client: redis.Redis) -> set[str]:
    """`hostname:pid` of every worker with a live heartbeat (a restarted worker is a new pid)."""
    return {f"{w['hostname']}:{w.get('pid', '')}" for w in online(client)}
