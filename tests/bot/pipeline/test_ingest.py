"""Ingest with a real Redis: dedupe, commands, enqueue, busy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from bot.channels.wechat.reply_mode import ServiceWindow, passive_only_key
from bot.core import jobs
from bot.core.contracts import IncomingMessage, Job
from bot.core.settings import Settings
from bot.core.store import connect
from bot.pipeline import ledger_lua, moderation
from bot.pipeline.guards import REFUSED_TEXT
from bot.pipeline.ingest import BUSY_TEXT, QueueFull, ingest
from bot.pipeline.ledger import Ledger
from tasks.celery_app import Producer
from tasks.names import GPU_QUEUE
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
        # claim + reads + job into the record + room check + publish + queued + timeline
        ("hello", "customer_service", False, 1),
        ("hello", "auto", False, 1),  # the passive-only flag is one of the script's reads
        ("hello", "passive", False, 1),
        # claim + reads | the job's enqueue: what the mailbox holds decides a "continue"
        ("continue", "auto", False, 2),
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
    reads | job | room check and publish | queued and timeline); then 2 (claim and reads |
    enqueue); now 1 for a plain question (`ledger_lua.ADMIT`).
    """
    proxy, through, client = proxied
    through = through.replace(wechat_reply_mode=mode)
    producer = Producer(through)
    request.addfinalizer(lambda: close_producer(producer))
    warm = message(unique(), "warm up")  # connections and kombu's routing table, once
    for script in (ledger_lua.ADMIT, ledger_lua.ENQUEUE):  # as after a first question of each
        client.script_load(script)
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


def guard_passes() -> float:
    return (
        REGISTRY.get_sample_value(
            "mimochat_guard_decisions_total", {"stage": "question", "decision": "pass"}
        )
        or 0.0
    )


@pytest.fixture
def publishing(
    request: pytest.FixtureRequest, proxied: tuple[TurnCounter, Settings, redis.Redis]
) -> tuple[TurnCounter, Settings, redis.Redis]:
    """`proxied`, warmed up: the scripts loaded and the publisher's connections open."""
    proxy, through, client = proxied
    producer = Producer(through)
    request.addfinalizer(lambda: close_producer(producer))
    for script in (ledger_lua.ADMIT, ledger_lua.ENQUEUE, ledger_lua.CLAIM):
        client.script_load(script)
    ingest(
        message(unique(), "warm up"), settings=through, client=client, enqueue=producer.generation
    )
    return proxied


@pytest.mark.parametrize(
    ("stop", "round_trips"),
    [
        ("blocked", 2),  # admit (the block list stops the enqueue) | the reply into the record
        ("passive_only", 2),  # admit (the flag stops it) | the passive job's enqueue
    ],
)
def test_what_the_one_script_reads_can_stop_its_enqueue(
    request: pytest.FixtureRequest,
    publishing: tuple[TurnCounter, Settings, redis.Redis],
    stop: str,
    round_trips: int,
) -> None:
    """A plain question is claimed and enqueued in one script unless its reads say otherwise;
    then the record waits in `received` and ingest decides as it would have in two steps."""
    proxy, through, client = publishing
    producer = Producer(through)
    request.addfinalizer(lambda: close_producer(producer))
    user = unique()
    if stop == "blocked":
        moderation.block(client, "wechat", user)
    else:
        client.set(passive_only_key(through), "1", ex=60)
        request.addfinalizer(lambda: client.delete(passive_only_key(through)))
    m = message(user, "hello")
    passes = guard_passes()
    with proxy.counting():
        decision = ingest(m, settings=through, client=client, enqueue=producer.generation)
    assert proxy.turns == round_trips, proxy.log
    record = Ledger(client).get(decision.key)
    assert record is not None
    if stop == "blocked":
        assert decision.reply == moderation.BLOCKED_TEXT and decision.job is None
        assert record.state == "delivered" and "job" not in record.fields
        assert guard_passes() == passes  # never reached the guards
    else:
        assert decision.job is not None and decision.job.reply_mode == "passive"
        assert record.state == "queued" and record.fields["reply_mode"] == "passive"
        assert guard_passes() == passes + 1


def test_a_full_queue_through_the_one_script_answers_busy_and_forgets(
    request: pytest.FixtureRequest, publishing: tuple[TurnCounter, Settings, redis.Redis]
) -> None:
    """Claimed, not enqueued: busy now, the record dropped so that a retry may go through."""
    _proxy, through, client = publishing
    placeholder = unique("not a job ")
    client.lpush(GPU_QUEUE, placeholder)
    request.addfinalizer(lambda: client.lrem(GPU_QUEUE, 0, placeholder))
    full = Producer(through.replace(max_queue=int(client.llen(GPU_QUEUE))))
    request.addfinalizer(lambda: close_producer(full))
    m = message(unique(), "hello")
    busy = ingest(m, settings=through, client=client, enqueue=full.generation)
    assert (busy.busy, busy.reply, busy.job) == (True, BUSY_TEXT, None)
    assert Ledger(client).get(busy.key) is None
    roomy = Producer(through)
    request.addfinalizer(lambda: close_producer(roomy))
    again = ingest(m, settings=through, client=client, enqueue=roomy.generation)
    assert (again.busy, again.duplicate, again.job is not None) == (False, False, True)


@pytest.mark.parametrize(
    ("changes", "text", "reply"),
    [
        ({"rate_limit_user": "1/minute"}, "hello", None),  # a limit to count: two steps
        ({"rate_limit_user": "1/minute", "rate_limit_exempt": "{user}"}, "hello", None),
        ({"safety_lists": "refuse:{lists}"}, "tell me about forbidden things", REFUSED_TEXT),
    ],
)
def test_guards_decide_once_whichever_path_a_question_takes(
    request: pytest.FixtureRequest,
    publishing: tuple[TurnCounter, Settings, redis.Redis],
    tmp_path: Path,
    changes: dict[str, str],
    text: str,
    reply: str | None,
) -> None:
    """The first try is counted by the guards once, its retries never; a second question of a
    rate-limited user is refused."""
    proxy, through, client = publishing
    user = unique()
    listed = tmp_path / "refuse.txt"
    listed.write_text("forbidden\n")
    through = through.replace(**{k: v.format(user=user, lists=listed) for k, v in changes.items()})
    producer = Producer(through)
    request.addfinalizer(lambda: close_producer(producer))
    passes = guard_passes()
    m = message(user, text)
    first = ingest(m, settings=through, client=client, enqueue=producer.generation)
    retry = ingest(m, settings=through, client=client, enqueue=producer.generation)
    assert first.reply == reply and (first.job is not None) is (reply is None)
    assert retry.duplicate and retry.reply == reply
    assert guard_passes() == passes + (reply is None)
    second = ingest(
        message(user, "again"), settings=through, client=client, enqueue=producer.generation
    )
    limited = "rate_limit_exempt" not in changes and reply is None
    assert (second.reply or "").startswith("You have asked a lot") is limited
