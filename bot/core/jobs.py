"""What happened to each job, stage by stage, in Redis: the console's timeline and live view.

One hash per job (`mimochat:job:<id>`) with a field per stage timestamp and figure, and a
capped list of recent job ids. Kept for a week; nothing here is needed to answer a user.
Each stage recorded also writes its one structured log line and counts in the process's metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from bot.core import logs, metrics
from bot.core.store import key

JOB_TTL = 7 * 86400
RECENT_MAX = 1000
# The log's name for a recorded stage: "received" is recorded once the job is in the queue.
LOG_STAGE = {"received": "enqueued"}


RECENT = key("jobs", "recent")


@dataclass(frozen=True)
class Stamp:
    """One stage's fields for a job's timeline hash, ready to write."""

    key: str
    fields: dict[str, str]


def stamp(job_id: str, stage: str, **fields: Any) -> Stamp:
    """The timeline fields `stage` writes (its time, the stage, the extra figures)."""
    mapping = {f"{stage}_at": f"{time.time():.3f}", "stage": stage}
    mapping.update({k: str(v) for k, v in fields.items() if v is not None})
    return Stamp(key("job", job_id), mapping)


def announce(job_id: str, stage: str, **fields: Any) -> None:
    """Count a recorded stage in the process's metrics and write its one log line."""
    metrics.JOB_STAGES.labels(stage).inc()
    logs.stage(LOG_STAGE.get(stage, stage), job_id=job_id, **fields)


def record(client: redis.Redis, job_id: str, stage: str, **fields: Any) -> None:
    """Stamp `stage` (received, started, generated, delivered, failed…) with extra figures."""
    with client.pipeline(transaction=False) as pipe:
        record_on(pipe, job_id, stage, **fields)
        pipe.execute()


def record_on(pipe: Pipeline, job_id: str, stage: str, **fields: Any) -> None:
    """`record`, its writes queued on a pipeline the caller executes (one round trip shared)."""
    row = stamp(job_id, stage, **fields)
    pipe.hset(row.key, mapping=row.fields)
    pipe.expire(row.key, JOB_TTL)
    if stage == "received":
        pipe.lpush(RECENT, job_id)
        pipe.ltrim(RECENT, 0, RECENT_MAX - 1)
    announce(job_id, stage, **fields)


def get(client: redis.Redis, job_id: str) -> dict[str, str]:
    """Everything recorded about one job ({} if unknown or expired)."""
    return client.hgetall(key("job", job_id))


def recent(client: redis.Redis, limit: int = 50) -> list[dict[str, str]]:
    """The newest jobs first, with their records."""
    ids = client.lrange(RECENT, 0, max(0, limit - 1))
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(key("job", job_id))
        rows = pipe.execute()
    return [{"job_id": job_id, **row} for job_id, row in zip(ids, rows, strict=True) if row]
