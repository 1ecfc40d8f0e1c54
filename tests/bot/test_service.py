"""The use cases with a real Redis and the real tiny engine (in-process, no queue)."""

from __future__ import annotations

import pytest
import redis

from bot import jobs, progress, service
from bot.engine import get_engine
from bot.engine.base import Engine, Generation, GenerationRequest
from bot.messages import IncomingMessage
from bot.settings import Settings
from tests.helpers import unique


def message(user: str, text: str, msg_id: str | None = None) -> IncomingMessage:
    return IncomingMessage(
        channel="wechat",
        user=user,
        account="gh",
        kind="text",
        content=text,
        msg_id=msg_id or unique("m"),
    )


def test_ingest_dedups_and_enqueues_once(settings: Settings, redis_client: redis.Redis) -> None:
    queued: list[dict] = []
    m = message(unique(), "hello", "777" + unique(""))
    decisions = [
        service.ingest(m, settings=settings, client=redis_client, enqueue=queued.append)
        for _ in range(3)
    ]
    assert [d.duplicate for d in decisions] == [False, True, True]
    assert len(queued) == 1
    assert jobs.get(redis_client, queued[0]["job_id"])["stage"] == "received"


def test_enqueue_failure_releases_the_message(
    settings: Settings, redis_client: redis.Redis
) -> None:
    def broken(_job: dict) -> None:
        raise ConnectionError("broker down")

    m = message(unique(), "hello")
    with pytest.raises(ConnectionError):
        service.ingest(m, settings=settings, client=redis_client, enqueue=broken)
    queued: list[dict] = []
    service.ingest(m, settings=settings, client=redis_client, enqueue=queued.append)
    assert len(queued) == 1  # WeChat's retry is taken, not dropped as a duplicate


def test_answer_records_turn_progress_and_timeline(
    settings: Settings, redis_client: redis.Redis
) -> None:
    queued: list[dict] = []
    user = unique()
    service.ingest(
        message(user, "What is 2+2?"), settings=settings, client=redis_client, enqueue=queued.append
    )
    engine = get_engine(settings)
    result = service.answer(queued[0], settings=settings, client=redis_client, engine=engine)
    assert result["answer"]
    assert result["answer_tokens"] > 0
    assert progress.read(redis_client, result["job_id"])["state"] == "done"
    timeline = jobs.get(redis_client, result["job_id"])
    assert {"received_at", "started_at", "generated_at"} <= timeline.keys()
    again = service.answer(queued[0], settings=settings, client=redis_client, engine=engine)
    assert again["answer"] == result["answer"]  # a redelivered job gets the stored answer
    history = service.conversations(settings, redis_client).history("wechat", user)
    assert len(history) == 2


class _FailingEngine(Engine):
    """An engine whose generation fails: stands for CUDA OOM, which cannot happen on this CPU."""

    def generate(self, request: GenerationRequest) -> Generation:
        raise RuntimeError("CUDA out of memory")


def test_failed_generation_apologises_and_is_not_remembered(
    settings: Settings, redis_client: redis.Redis
) -> None:
    user = unique()
    job = service.make_job(message(user, "hi"))
    result = service.answer(job, settings=settings, client=redis_client, engine=_FailingEngine())
    assert result["answer"] == service.APOLOGY_TEXT
    assert progress.read(redis_client, job["job_id"])["state"] == "failed"
    assert service.conversations(settings, redis_client).history("wechat", user) == []


def test_full_queue_answers_busy_and_keeps_the_message_unseen(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A full queue: a polite reply now, nothing queued, and a later retry still goes through."""

    def full(_job: dict) -> None:
        raise service.QueueFull("5 waiting, limit 5")

    m = message(unique(), "hello")
    busy = service.ingest(m, settings=settings, client=redis_client, enqueue=full)
    assert (busy.busy, busy.reply, busy.job) == (True, service.BUSY_TEXT, None)
    queued: list[dict] = []
    again = service.ingest(m, settings=settings, client=redis_client, enqueue=queued.append)
    assert (again.busy, again.duplicate, len(queued)) == (False, False, 1)


def test_commands_are_answered_even_when_the_queue_is_full(
    settings: Settings, redis_client: redis.Redis
) -> None:
    def full(_job: dict) -> None:
        raise service.QueueFull("full")

    decision = service.ingest(
        message(unique(), "/help"), settings=settings, client=redis_client, enqueue=full
    )
    assert not decision.busy
    assert decision.reply
