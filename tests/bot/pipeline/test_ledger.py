"""The message ledger on a real Redis: one record per message, conditional atomic moves."""

from __future__ import annotations

import threading

import pytest
import redis

from bot.core import jobs
from bot.core.contracts import Envelope
from bot.core.store import WriteOnce, WriteOnceConflict, connect
from bot.pipeline.ledger import Gate, Ledger, Moved, Stamp
from tests.bot.pipeline.turns import TurnCounter
from tests.helpers import make_job, unique, with_db


def test_claim_creates_one_record_and_counts_tries(redis_client: redis.Redis) -> None:
    ledger, msg_key = Ledger(redis_client), unique("wechat:")
    assert ledger.claim(msg_key, channel="wechat", user="u") == (True, 1)
    assert ledger.claim(msg_key, channel="wechat", user="u") == (False, 2)
    record = ledger.get(msg_key)
    assert record is not None and record.state == "received" and record.fields["user"] == "u"
    assert msg_key in ledger.in_state("received")


@pytest.mark.parametrize(
    ("since", "when", "to", "ok"),
    [
        (("received",), None, "queued", True),
        (("queued",), None, "generating", False),  # not in that state
        (("*",), None, "delivered", True),
        (("received",), {"worker": "w1"}, "generating", False),  # guard does not hold
        (("received", "queued"), {"user": "u"}, "generating", True),
    ],
)
def test_moves_are_conditional(
    redis_client: redis.Redis, since: tuple[str, ...], when: dict | None, to: str, ok: bool
) -> None:
    ledger, msg_key = Ledger(redis_client), unique("wechat:")
    ledger.claim(msg_key, user="u")
    moved = ledger.move(msg_key, to, since=since, when=when)
    assert (moved.ok, moved.was) == (ok, "received")
    record = ledger.get(msg_key)
    assert record is not None and record.state == (to if ok else "received")


def test_final_states_leave_the_sweepers_index(redis_client: redis.Redis) -> None:
    ledger, msg_key = Ledger(redis_client), unique("wechat:")
    ledger.claim(msg_key)
    assert msg_key in ledger.due(now=1e12, limit=10_000)
    ledger.move(msg_key, "delivered")
    assert msg_key not in ledger.due(now=1e12, limit=10_000)
    assert ledger.move(msg_key, "queued").ok is False  # nothing moves a final record (with "*")
    record = ledger.get(msg_key)
    assert record is not None and record.deadline is None


def test_unknown_record_and_state(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    assert ledger.move(unique("wechat:"), "queued").was == ""
    with pytest.raises(ValueError, match="unknown ledger state"):
        ledger.move(unique("wechat:"), "lost")


def test_the_job_travels_in_the_record(redis_client: redis.Redis) -> None:
    ledger, job = Ledger(redis_client), make_job(unique())
    ledger.claim(job.key)
    ledger.move(job.key, "queued", job=job)
    record = ledger.get(job.key)
    assert record is not None and record.job == job


@pytest.mark.parametrize("racers", [2, 16])
def test_concurrent_claims_and_moves_have_one_winner(
    redis_client: redis.Redis, racers: int
) -> None:
    ledger, msg_key = Ledger(redis_client), unique("wechat:")
    claims: list[bool] = []
    moves: list[bool] = []
    start = threading.Barrier(racers)

    def race(n: int) -> None:
        start.wait()
        claims.append(ledger.claim(msg_key)[0])
        moves.append(ledger.move(msg_key, "generating", since=("received",), worker=f"w{n}").ok)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert claims.count(True) == 1
    assert moves.count(True) == 1


@pytest.mark.parametrize(
    ("claims", "stamped"),
    [
        (1, {"opened_at": "1.000", "used": "0"}),
        (2, {"opened_at": "1.000", "used": "0"}),  # a retry never writes its stamp again
    ],
)
def test_stamps_are_written_with_the_first_claim_only(
    redis_client: redis.Redis, claims: int, stamped: dict[str, str]
) -> None:
    ledger, msg_key, window = Ledger(redis_client), unique("wechat:"), unique("window:")
    first = Stamp(window, 60, {"opened_at": "1.000", "used": "0"})
    ledger.claim(msg_key, stamps=[first])
    for _ in range(claims - 1):
        ledger.claim(msg_key, stamps=[Stamp(window, 60, {"opened_at": "2.000", "used": "0"})])
    assert redis_client.hgetall(window) == stamped
    assert 0 < redis_client.ttl(window) <= 60


def test_pipelined_claim_and_move_are_one_round_trip_each(redis_url: str) -> None:
    """Counted by a proxy in front of the real Redis: claim + read in one trip, then a move."""
    proxy = TurnCounter(with_db(redis_url, 1))
    client = connect(proxy.url())
    client.ping()  # the connection is made before counting
    ledger, msg_key = Ledger(client), unique("wechat:")
    with proxy.counting():
        with client.pipeline(transaction=False) as pipe:
            ledger.claim_on(pipe, msg_key, user="u")
            pipe.exists(unique("other:"))
            claim, _exists = pipe.execute()
        assert Ledger.claimed(claim) == (True, 1)
        with client.pipeline(transaction=False) as pipe:
            ledger.move_on(pipe, msg_key, "queued", since=("received",))
            (moved,) = pipe.execute()
        assert Ledger.moved(moved) == Moved(True, "received")
    assert proxy.turns == 2
    proxy.close()


@pytest.mark.parametrize(
    ("state", "limit", "waiting", "queued", "full"),
    [
        ("received", 0, 0, True, False),  # no limit
        ("received", 3, 2, True, False),  # room for one more
        ("received", 3, 3, False, True),  # full: nothing written, nothing pushed
        ("queued", 0, 0, False, False),  # another try queued it first: not pushed again
        ("delivered", 0, 0, False, False),
    ],
)
def test_enqueue_is_all_or_nothing(
    redis_client: redis.Redis, state: str, limit: int, waiting: int, queued: bool, full: bool
) -> None:
    """The job into the record, the room check, the push and the queued mark: one script."""
    ledger, job, queue = Ledger(redis_client), make_job(unique()), unique("queue:")
    ledger.claim(job.key)
    if state != "received":
        ledger.move(job.key, state)
    for _ in range(waiting):
        redis_client.lpush(queue, "earlier")
    timeline = jobs.stamp(job.job_id, "received", text=job.text)
    done = ledger.enqueue(job, Envelope(queue, "the message", limit), timeline)
    assert (done.queued, done.full, done.was) == (queued, full, state)
    record = ledger.get(job.key)
    assert record is not None
    assert redis_client.llen(queue) == waiting + queued
    if queued:
        assert record.state == "queued" and record.job == job
        assert redis_client.lindex(queue, 0) == "the message"
        assert job.key in ledger.in_state("queued") and job.key not in ledger.in_state("received")
        assert jobs.get(redis_client, job.job_id)["text"] == job.text
        assert job.job_id in redis_client.lrange(jobs.RECENT, 0, 10)
    else:
        assert record.state == state and "job" not in record.fields
        assert jobs.get(redis_client, job.job_id) == {}


def test_enqueue_after_redis_forgot_its_scripts_runs_once(redis_client: redis.Redis) -> None:
    """The enqueue script is run by its SHA: on a Redis that lost it (restarted, SCRIPT FLUSH)
    the NOSCRIPT answer means nothing ran, so it is loaded and run exactly once."""
    ledger, job, queue = Ledger(redis_client), make_job(unique()), unique("queue:")
    ledger.claim(job.key)
    redis_client.script_flush()
    timeline = jobs.stamp(job.job_id, "received", text=job.text)
    done = ledger.enqueue(job, Envelope(queue, "the message", 0), timeline)
    assert (done.queued, done.was) == (True, "received")
    assert redis_client.lrange(queue, 0, -1) == ["the message"]
    assert redis_client.lrange(jobs.RECENT, 0, 10).count(job.job_id) == 1


def test_a_write_once_conflict_claims_nothing(redis_client: redis.Redis) -> None:
    """A signature bound to one body: the same body again claims as a retry, another is refused
    before anything is written."""
    ledger, msg_key = Ledger(redis_client), unique("wechat:")
    seal = WriteOnce(unique("signed:"), "digest of body 1", 60)
    assert ledger.claim(msg_key, once=[seal]) == (True, 1)
    assert ledger.claim(msg_key, once=[seal]) == (False, 2)  # the platform's retry
    forged = unique("wechat:")
    with pytest.raises(WriteOnceConflict) as refused:
        ledger.claim(
            forged,
            once=[
                WriteOnce(unique("signed:"), "x", 60),
                WriteOnce(seal.key, "digest of body 2", 60),
            ],
        )
    assert refused.value.index == 1
    assert ledger.get(forged) is None
    assert redis_client.ttl(seal.key) > 0


@pytest.mark.parametrize(
    ("blocked", "flag", "stops", "limit", "waiting", "queued", "full"),
    [
        (False, False, False, 0, 0, True, False),  # a plain question: claimed and queued
        (False, True, False, 0, 0, True, False),  # a flag nobody asked about stops nothing
        (True, False, False, 0, 0, False, False),  # blocked: the record waits in received
        (False, True, True, 0, 0, False, False),  # the flag set and asked about: the same
        (False, False, False, 2, 2, False, True),  # full: claimed, nothing queued
    ],
)
def test_admit_claims_reads_and_enqueues_in_one_step(
    redis_client: redis.Redis,
    blocked: bool,
    flag: bool,
    stops: bool,
    limit: int,
    waiting: int,
    queued: bool,
    full: bool,
) -> None:
    """A plain question's claim and enqueue in one script, the gate's reads between them."""
    ledger, job, queue = Ledger(redis_client), make_job(unique()), unique("queue:")
    gate = Gate(unique("blocked:"), job.user, unique("flag:"), unique("box:"))
    if blocked:
        redis_client.sadd(gate.blocked, job.user)
    if flag:
        redis_client.set(str(gate.stop_flag), "1")
    redis_client.rpush(gate.count, "part 1", "part 2")
    for _ in range(waiting):
        redis_client.lpush(queue, "earlier")
    stamp = Stamp(unique("window:"), 60, {"opened_at": "1"})
    timeline = jobs.stamp(job.job_id, "received", text=job.text)
    got = ledger.admit(
        job,
        Envelope(queue, "the message", limit),
        timeline,
        gate if stops else Gate(gate.blocked, gate.member, None, gate.count),
        stamps=[stamp],
        user=job.user,
    )
    assert (got.created, got.tries, got.blocked, got.count) == (True, 1, blocked, 2)
    assert got.flagged is (flag and stops)
    assert redis_client.hget(stamp.key, "opened_at") == "1"  # the window opens all the same
    record = ledger.get(job.key)
    assert record is not None and record.fields["user"] == job.user
    assert redis_client.llen(queue) == waiting + queued
    if blocked or (flag and stops):
        assert got.enqueued is None and record.state == "received"
        assert job.key in ledger.in_state("received")
        return
    assert got.enqueued is not None
    assert (got.enqueued.queued, got.enqueued.full) == (queued, full)
    if queued:
        assert record.state == "queued" and record.job == job
        assert redis_client.lindex(queue, 0) == "the message"
        assert job.key in ledger.in_state("queued") and job.key not in ledger.in_state("received")
        assert jobs.get(redis_client, job.job_id)["text"] == job.text
    else:
        assert record.state == "received" and "job" not in record.fields


def test_admit_of_a_known_message_is_a_retry_and_enqueues_nothing(
    redis_client: redis.Redis,
) -> None:
    """The second try of a message counts a try and touches neither the record nor the queue;
    a signature bound to another body claims nothing."""
    ledger, job, queue = Ledger(redis_client), make_job(unique()), unique("queue:")
    gate = Gate(unique("blocked:"), job.user, None, unique("box:"))
    envelope, timeline = Envelope(queue, "the message", 0), jobs.stamp(job.job_id, "received")
    seal = WriteOnce(unique("signed:"), "digest of body 1", 60)
    first = ledger.admit(job, envelope, timeline, gate, once=[seal])
    assert first.enqueued is not None and first.enqueued.queued
    again = ledger.admit(job, envelope, timeline, gate, once=[seal])
    assert (again.created, again.tries, again.enqueued) == (False, 2, None)
    assert redis_client.llen(queue) == 1
    other = make_job(unique())
    with pytest.raises(WriteOnceConflict):
        ledger.admit(other, envelope, timeline, gate, once=[WriteOnce(seal.key, "body 2", 60)])
    assert ledger.get(other.key) is None and redis_client.llen(queue) == 1


def test_admit_after_redis_forgot_its_scripts_runs_once(redis_client: redis.Redis) -> None:
    """Run by its SHA like the enqueue script: NOSCRIPT means nothing ran; loaded, run once."""
    ledger, job, queue = Ledger(redis_client), make_job(unique()), unique("queue:")
    redis_client.script_flush()
    gate = Gate(unique("blocked:"), job.user, None, unique("box:"))
    got = ledger.admit(job, Envelope(queue, "m", 0), jobs.stamp(job.job_id, "received"), gate)
    assert got.enqueued is not None and got.enqueued.queued
    assert redis_client.lrange(queue, 0, -1) == ["m"]
