"""The sweeper on a real Redis: what it does with each kind of stuck message, and its lease.

The actions are recorded instead of published: the queue itself is exercised by the fault
tests (tests/integration/test_ledger_faults.py); here each decision is checked alone.
"""

from __future__ import annotations

import time

import pytest
import redis

from bot.channels.wechat.mailbox import PART_LIMIT, Mailbox
from bot.console import workers
from bot.core.contracts import Answer, Job
from bot.core.settings import Settings
from bot.pipeline.answer import APOLOGY_TEXT
from bot.pipeline.conversations import conversations
from bot.pipeline.ledger import Ledger
from bot.pipeline.sweeper import Actions, Sweeper, sweep
from tests.helpers import make_job, unique

LATER = time.time() + 10 * 86400  # every deadline has passed by then


class Recorded(Actions):
    """Actions that record what the sweeper asked for."""

    def __init__(self) -> None:
        self.requeued: list[Job] = []
        self.delivered: list[Answer] = []
        super().__init__(requeue=self.requeued.append, deliver=self.delivered.append)


def queued(ledger: Ledger, state: str = "queued", **fields: object) -> Job:
    job = make_job(unique())
    ledger.claim(job.key, channel="wechat", user=job.user, job_id=job.job_id)
    ledger.move(job.key, "received", job=job)
    ledger.move(job.key, state, **fields)
    return job


def mine(done: list[tuple[str, str, str]], job: Job) -> list[tuple[str, str]]:
    return [(state, action) for key, state, action in done if key == job.key]


@pytest.mark.parametrize("state", ["received", "queued"])
def test_stuck_before_generation_is_requeued(
    settings: Settings, redis_client: redis.Redis, state: str
) -> None:
    ledger, actions = Ledger(redis_client, settings), Recorded()
    job = queued(ledger, state)
    done = sweep(redis_client, settings, actions, now=LATER)
    assert mine(done, job) == [(state, "requeue")]
    assert job in actions.requeued
    record = ledger.get(job.key)
    assert record is not None and (record.state, record.attempts) == ("queued", 1)


def test_a_dead_workers_message_is_requeued_at_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    ledger, actions = Ledger(redis_client, settings), Recorded()
    job = queued(ledger, "generating", worker="gone@host:4242")
    done = sweep(redis_client, settings, actions)  # now: nothing is past its deadline
    assert mine(done, job) == [("generating", "requeue")]


def test_a_live_workers_message_is_left_alone(
    settings: Settings, redis_client: redis.Redis
) -> None:
    ledger, actions = Ledger(redis_client, settings), Recorded()
    host = unique("alive@")
    workers.beat(redis_client, host, ["sweeper-test"], "ready")  # a queue no other test reads
    try:
        record = workers.online(redis_client)
        pid = next(w["pid"] for w in record if w["hostname"] == host)
        job = queued(ledger, "generating", worker=f"{host}:{pid}")
        assert mine(sweep(redis_client, settings, actions), job) == []
        # The same name under a new process (a restarted worker) does not hold it any more.
        other = queued(ledger, "generating", worker=f"{host}:{pid + 1}")
        assert mine(sweep(redis_client, settings, actions), other) == [("generating", "requeue")]
    finally:
        workers.gone(redis_client, host)


def test_after_the_last_attempt_the_user_gets_the_apology(
    settings: Settings, redis_client: redis.Redis
) -> None:
    ledger, actions = Ledger(redis_client, settings), Recorded()
    job = queued(ledger, "generating", worker="gone@host:1", attempts=settings.max_attempts)
    assert mine(sweep(redis_client, settings, actions), job) == [("generating", "apologize")]
    [apology] = [a for a in actions.delivered if a.job.key == job.key]
    assert (apology.answer, apology.remember) == (APOLOGY_TEXT, False)
    assert "gave up" in apology.error
    record = ledger.get(job.key)
    assert (
        record is not None and record.state == "answered" and "held by" in record.fields["reason"]
    )


def test_an_answer_stuck_before_delivery_is_redelivered_then_parked(
    settings: Settings, redis_client: redis.Redis
) -> None:
    ledger, actions = Ledger(redis_client, settings), Recorded()
    job = queued(ledger, "answered")
    conversations(settings, redis_client).record(job, Answer(job=job, answer="forty-two"))
    assert mine(sweep(redis_client, settings, actions, now=LATER), job) == [
        ("answered", "redeliver")
    ]
    assert [a.answer for a in actions.delivered if a.job.key == job.key] == ["forty-two"]
    ledger.move(job.key, "delivering", attempts=settings.max_attempts)
    assert mine(sweep(redis_client, settings, actions, now=LATER), job) == [("delivering", "park")]
    record = ledger.get(job.key)
    assert record is not None and record.state == "parked"
    assert Mailbox(redis_client, "wechat", job.user, 60).take(PART_LIMIT)[0] == "forty-two"


def test_one_sweeper_at_a_time(settings: Settings, redis_client: redis.Redis) -> None:
    redis_client.delete("mimochat:sweeper:lease")
    first = Sweeper(redis_client, settings, Recorded(), owner="a:1")
    second = Sweeper(redis_client, settings, Recorded(), owner="b:2")
    assert first.holds_lease() and not second.holds_lease()
    assert first.holds_lease()  # renewed by its holder
    first.stop()  # hands the lease on
    assert second.holds_lease()
    second.stop()
