"""Progress records in a real Redis: full text so far, bounded write rate, final always written."""

from __future__ import annotations

import redis

from bot.core.progress import ProgressWriter, read
from tests.helpers import unique


def test_full_text_so_far_and_final(redis_client: redis.Redis) -> None:
    job = unique("job")
    writer = ProgressWriter(redis_client, job, min_interval=0)
    writer.add("reasoning", "Let me think")
    assert read(redis_client, job)["state"] == "thinking"
    writer.add("answer", "Par")
    writer.add("answer", "is")
    assert read(redis_client, job)["answer"] == "Paris"
    writer.finish("Paris.", "Let me think")
    assert read(redis_client, job) | {"updated_at": ""} == {
        "state": "done",
        "reasoning": "Let me think",
        "answer": "Paris.",
        "updated_at": "",
    }


def test_write_rate_is_bounded(redis_client: redis.Redis) -> None:
    writer = ProgressWriter(redis_client, unique("job"), min_interval=60)
    for _ in range(500):
        writer.add("answer", "x")
    writer.finish("x" * 500, "")
    assert writer.writes == 2  # the first chunk, then the final text
    assert read(redis_client, writer.job_id)["answer"] == "x" * 500
