"""The Celery app's settings and the producer's queue limit, on a real Redis."""

from __future__ import annotations

import pytest
import redis

from bot.core.settings import Settings
from bot.pipeline.ingest import QueueFull
from tasks.celery_app import Producer, restore_sweep
from tasks.names import GPU_QUEUE
from tests.helpers import make_job


@pytest.mark.parametrize(
    ("visibility_timeout", "seconds_between_sweeps"),
    [(5, 1), (60, 6), (600, 60), (3600, 100), (86400, 100)],
)
def test_dead_workers_jobs_are_looked_for_about_ten_times_per_timeout(
    visibility_timeout: int, seconds_between_sweeps: int
) -> None:
    sweep = restore_sweep(visibility_timeout)
    period = sweep["unacked_restore_interval"] * sweep["unacked_restore_throttle"]
    assert period == seconds_between_sweeps


def test_producer_refuses_past_the_queue_limit(
    settings: Settings, redis_client: redis.Redis
) -> None:
    waiting = redis_client.llen(GPU_QUEUE)
    producer = Producer(settings.replace(max_queue=waiting + 2))
    job = make_job("u", "t")
    producer.generation(job)
    producer.generation(job)
    with pytest.raises(QueueFull):
        producer.generation(job)
    assert redis_client.llen(GPU_QUEUE) == waiting + 2
    Producer(settings.replace(max_queue=0)).generation(job)  # 0: no limit
    assert redis_client.llen(GPU_QUEUE) == waiting + 3
