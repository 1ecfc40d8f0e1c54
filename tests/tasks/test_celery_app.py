"""The Celery app's settings and the producer's queue limit, on a real Redis."""

from __future__ import annotations

import base64
import json
import threading

import pytest
import redis

from bot.core.settings import Settings
from bot.pipeline.ingest import QueueFull
from tasks.celery_app import Producer, _repr, restore_sweep
from tasks.names import GENERATE, GPU_QUEUE
from tests.bot.pipeline.turns import TurnCounter
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


def test_room_check_and_publish_are_one_atomic_round_trip(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Counted: each publish is one round trip (the count and the push in one script), seen by
    a proxy before Redis; with room for 5 after 2, 12 threads at once push exactly 3 more."""
    assert settings.redis_url is not None
    proxy = TurnCounter(settings.redis_url)
    waiting = redis_client.llen(GPU_QUEUE)
    producer = Producer(settings.replace(redis_url=proxy.url(), max_queue=waiting + 5))
    job = make_job("u", "t")
    try:
        producer.generation(job)  # connections made, kombu's routing table read
        with proxy.counting():
            producer.generation(job)
        assert proxy.turns == 1, proxy.log
        outcomes: list[str] = []

        def publish() -> None:
            try:
                producer.generation(job)
                outcomes.append("queued")
            except QueueFull:
                outcomes.append("full")

        threads = [threading.Thread(target=publish) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(outcomes) == ["full"] * 9 + ["queued"] * 3
        assert redis_client.llen(GPU_QUEUE) == waiting + 5
    finally:
        producer.app.close()
        if producer._redis is not None:
            producer._redis.close()
        proxy.close()


def test_the_envelope_is_what_send_task_would_push(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Celery's message builder and kombu's channel, without the producer layers: the same
    message `send_task` pushes, but for its ids (a real worker runs it: tests/integration)."""
    producer = Producer(settings.replace(max_queue=7))
    job = make_job("u", "t")
    envelope = producer.envelope(job)
    assert envelope is not None and (envelope.queue, envelope.limit) == (GPU_QUEUE, 7)
    producer.app.send_task(GENERATE, args=[job.wire()], queue=GPU_QUEUE, **_repr(job.wire()))
    sent = json.loads(redis_client.lpop(GPU_QUEUE))
    built = json.loads(envelope.body)
    assert built.keys() == sent.keys()
    assert built["headers"].keys() == sent["headers"].keys()
    assert built["headers"]["task"] == sent["headers"]["task"] == GENERATE
    assert built["headers"]["argsrepr"] == sent["headers"]["argsrepr"]
    assert set(built["properties"]) <= set(sent["properties"])
    for key in ("delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert built["properties"][key] == sent["properties"][key]
    args = [json.loads(base64.b64decode(m["body"]))[0] for m in (built, sent)]
    assert args[0] == args[1] == [job.wire()]
    producer.app.close()
