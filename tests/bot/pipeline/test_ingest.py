"""Ingest with a real Redis: dedupe, commands, enqueue, busy."""

from __future__ import annotations

import pytest
import redis

from bot.core import jobs
from bot.core.contracts import IncomingMessage, Job
from bot.core.settings import Settings
from bot.pipeline.ingest import BUSY_TEXT, QueueFull, ingest
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
    queued: list[Job] = []
    m = message(unique(), "hello", "777" + unique(""))
    decisions = [
        ingest(m, settings=settings, client=redis_client, enqueue=queued.append) for _ in range(3)
    ]
    assert [d.duplicate for d in decisions] == [False, True, True]
    assert len(queued) == 1
    assert jobs.get(redis_client, queued[0].job_id)["stage"] == "received"


def test_enqueue_failure_releases_the_message(
    settings: Settings, redis_client: redis.Redis
) -> None:
    def broken(_job: Job) -> None:
        raise ConnectionError("broker down")

    m = message(unique(), "hello")
    with pytest.raises(ConnectionError):
        ingest(m, settings=settings, client=redis_client, enqueue=broken)
    queued: list[Job] = []
    ingest(m, settings=settings, client=redis_client, enqueue=queued.append)
    assert len(queued) == 1  # WeChat's retry is taken, not dropped as a duplicate


def test_command_retry_gets_the_same_reply(settings: Settings, redis_client: redis.Redis) -> None:
    m = message(unique(), "/help", "help" + unique(""))
    first = ingest(m, settings=settings, client=redis_client, enqueue=lambda j: None)
    retry = ingest(m, settings=settings, client=redis_client, enqueue=lambda j: None)
    assert retry.duplicate and retry.attempt == 2
    assert retry.reply == first.reply


def test_full_queue_answers_busy_and_keeps_the_message_unseen(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A full queue: a polite reply now, nothing queued, and a later retry still goes through."""

    def full(_job: Job) -> None:
        raise QueueFull("5 waiting, limit 5")

    m = message(unique(), "hello")
    busy = ingest(m, settings=settings, client=redis_client, enqueue=full)
    assert (busy.busy, busy.reply, busy.job) == (True, BUSY_TEXT, None)
    queued: list[Job] = []
    again = ingest(m, settings=settings, client=redis_client, enqueue=queued.append)
    assert (again.busy, again.duplicate, len(queued)) == (False, False, 1)


def test_commands_are_answered_even_when_the_queue_is_full(
    settings: Settings, redis_client: redis.Redis
) -> None:
    def full(_job: Job) -> None:
        raise QueueFull("full")

    decision = ingest(
        message(unique(), "/help"), settings=settings, client=redis_client, enqueue=full
    )
    assert not decision.busy
    assert decision.reply
