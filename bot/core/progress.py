"""Answers as they grow: generation publishes text so far to Redis at a bounded rate.

Readers (WeCom stream refreshes, the console) poll `read()`; each write also goes out on a
pub/sub channel for readers that prefer to wait. The record holds the full text so far, never
a delta, so a reader that missed updates loses nothing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from bot.core.store import key

PROGRESS_TTL = 3600
MIN_INTERVAL = 0.5  # seconds between two writes of one job (the last write always goes out)


def progress_key(job_id: str) -> str:
    """Where a job's progress lives."""
    return key("progress", job_id)


class ProgressWriter:
    """Publishes one job's growing reasoning and answer, at most every `min_interval` seconds."""

    def __init__(
        self, client: redis.Redis, job_id: str, min_interval: float = MIN_INTERVAL
    ) -> None:
        self.redis = client
        self.job_id = job_id
        self.min_interval = min_interval
        self.reasoning = ""
        self.answer = ""
        self.state = "queued"
        self._last = 0.0
        self.writes = 0

    def add(self, kind: str, text: str) -> None:
        """Append streamed text (`reasoning` or `answer`); written when the interval has passed."""
        if kind == "reasoning":
            self.reasoning += text
            self.state = "thinking"
        elif kind == "answer":
            self.answer += text
            self.state = "answering"
        if time.monotonic() - self._last >= self.min_interval:
            self.flush()

    def finish(self, answer: str, reasoning: str, state: str = "done", **extra: Any) -> None:
        """Write the final text (always written, whatever the interval)."""
        self.answer, self.reasoning, self.state = answer, reasoning, state
        self.flush(**extra)

    def flush(self, **extra: Any) -> None:
        """Write what we have now."""
        record = {
            "state": self.state,
            "reasoning": self.reasoning,
            "answer": self.answer,
            "updated_at": f"{time.time():.3f}",
            **{k: str(v) for k, v in extra.items()},
        }
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(progress_key(self.job_id), mapping=record)
            pipe.expire(progress_key(self.job_id), PROGRESS_TTL)
            pipe.publish(progress_key(self.job_id), json.dumps({"state": self.state}))
            pipe.execute()
        self._last = time.monotonic()
        self.writes += 1


def read(client: redis.Redis, job_id: str) -> dict[str, str]:
    """The job's text so far: state (queued|thinking|answering|done|failed), reasoning, answer."""
    return client.hgetall(progress_key(job_id))
