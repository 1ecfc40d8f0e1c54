"""Ingest with a real Redis: dedupe, commands, enqueue, busy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from bot.channels.wechat.reply_mode import ServiceWindow
from bot.core import jobs
from bot.core.contracts import IncomingMessage, Job
from bot.core.settings import Settings
from bot.core.store import connect
from bot.pipeline import moderation
from bot.pipeline.ingest import BUSY_TEXT, QueueFull, ingest
from tasks.celery_app import Producer
from tests.bot.pipeline.turns import TurnCounter
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


@pytest.fixture
def proxied(settings: Settings) -> Iterator[tuple[TurnCounter, Settings, redis.Redis]]:
    """The unit tests' Redis behind a round-trip counter, with settings and a client on it."""
    assert settings.redis_url is not None
    proxy = TurnCounter(settings.redis_url)
    through = settings.replace(redis_url=proxy.url(), max_queue=10_000)
    client = connect(proxy.url())
    yield proxy, through, client
    client.close()
    proxy.close()


def close_producer(producer: Producer) -> None:
    """Close the producer's connections (pytest turns unclosed sockets into errors)."""
    producer.app.close()
    if producer._redis is not None:
        producer._redis.close()


@pytest.mark.parametrize(
    ("text", "mode", "retry", "round_trips"),
    [
        # claim + reads | job into the record + room check + publish + queued + timeline
        ("hello", "customer_service", False, 2),
        ("hello", "auto", False, 2),  # the passive-only flag rides in the first trip
        ("hello", "passive", False, 2),
        ("continue", "auto", False, 2),  # nothing waits: a question like any other
        ("/help", "auto", False, 2),  # claim + reads | the reply into the record
        ("hello", "auto", True, 2),  # a retry: claim (a duplicate) | the first try's record
    ],
)
def test_ingest_round_trips(
    request: pytest.FixtureRequest,
    proxied: tuple[TurnCounter, Settings, redis.Redis],
    text: str,
    mode: str,
    retry: bool,
    round_trips: int,
) -> None:
    """Counted by a proxy in front of the real Redis, the real Producer publishing through it.

    Before issue 14 a question cost 9 round trips here, 10 in auto mode (claim, block list,
    window, mode, record read, job, queue length, publish, queued, timeline); then 4 (claim and
    reads | job | room check and publish | queued and timeline); now 2.
    """
    proxy, through, client = proxied
    through = through.replace(wechat_reply_mode=mode)
    producer = Producer(through)
    request.addfinalizer(lambda: close_producer(producer))
    warm = message(unique(), "warm up")  # connections and kombu's routing table, once
    ingest(warm, settings=through, client=client, enqueue=producer.generation)
    m = message(unique(), text)
    if retry:
        ingest(m, settings=through, client=client, enqueue=producer.generation)
    with proxy.counting():
        decision = ingest(m, settings=through, client=client, enqueue=producer.generation)
    assert proxy.turns == round_trips, proxy.log
    assert decision.duplicate is retry


@pytest.mark.parametrize("blocked", [False, True])
def test_the_window_opens_with_the_first_try_only(
    settings: Settings, redis_client: redis.Redis, blocked: bool
) -> None:
    """WeChat opens the window on any message, a blocked user's too; a retry is no new message."""
    user = unique()
    if blocked:
        moderation.block(redis_client, "wechat", user)
    m = message(user, "hello")
    first = ingest(m, settings=settings, client=redis_client, enqueue=lambda j: None)
    window = ServiceWindow(settings, redis_client, user)
    assert window.remaining() == settings.wechat_cs_quota
    window.used_one()
    ingest(m, settings=settings, client=redis_client, enqueue=lambda j: None)  # the retry
    assert window.remaining() == settings.wechat_cs_quota - 1
    assert (first.reply == moderation.BLOCKED_TEXT) is blocked
