"""The mailbox of answers waiting for the user's next message, in a real Redis."""

from __future__ import annotations

import threading

import pytest
import redis

from bot.channels.wechat.mailbox import PART_LIMIT, Mailbox, Piece, compose, is_continue
from bot.core.store import key
from bot.text.split import utf8_len
from tests.helpers import unique


def box(client: redis.Redis) -> Mailbox:
    return Mailbox(client, "wechat", unique(), ttl=60)


@pytest.mark.parametrize(
    ("text", "expected"), [("继续", True), (" More ", True), ("1", True), ("why?", False)]
)
def test_is_continue(text: str, expected: bool) -> None:
    assert is_continue(text) is expected


def test_small_answers_share_one_reply_with_headers() -> None:
    pieces = [Piece("j1", "Paris.", "capital of France?"), Piece("j2", "Four.", "2+2?")]
    text, used = compose(pieces, PART_LIMIT)
    assert used == 2
    assert (
        text.index("【capital of France?】")
        < text.index("Paris.")
        < text.index("【2+2?】")
        < text.index("Four.")
    )


def test_one_answer_has_no_header() -> None:
    assert compose([Piece("j1", "Paris.", "capital?")], PART_LIMIT) == ("Paris.", 1)


def test_take_packs_under_the_limit_and_hints_at_the_rest(redis_client: redis.Redis) -> None:
    b = box(redis_client)
    parts = [f"({i}/4) " + "字" * 550 for i in range(1, 5)]
    b.put([Piece("j1", p) for p in parts])
    seen = []
    while b.size():
        text, remaining = b.take(PART_LIMIT)
        assert utf8_len(text) <= 2000
        assert ("more" in text) == bool(remaining)
        seen.append(text)
    assert len(seen) == 4
    assert [s.split(" ")[0] for s in seen] == ["(1/4)", "(2/4)", "(3/4)", "(4/4)"]


def test_put_is_once_per_job(redis_client: redis.Redis) -> None:
    b = box(redis_client)
    b.put([Piece("same", "a")])
    b.put([Piece("same", "a")])  # a retried delivery
    assert b.size() == 1
    assert b.has_job("same")


def test_concurrent_takes_never_hand_out_a_piece_twice(redis_client: redis.Redis) -> None:
    b = box(redis_client)
    b.put([Piece(f"j{i}", "x" * 1500) for i in range(40)])
    got: list[str] = []

    def taker() -> None:
        while True:
            text, _ = b.take(PART_LIMIT)
            if not text:
                return
            got.append(text)

    threads = [threading.Thread(target=taker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 40


def test_a_job_is_never_seen_before_its_pieces(redis_client: redis.Redis) -> None:
    """The passive reply takes the mailbox as soon as `has_job` says the answer is there.

    A watcher reads the job's mark and the mailbox's length in one MULTI (one instant) while
    jobs are put; counted: instants where the mark exists and the pieces do not (must be 0).
    """
    b = box(redis_client)
    jobs = [unique("job") for _ in range(150)]
    marks = [key("pending-job", job) for job in jobs]
    done = threading.Event()
    early: list[str] = []

    def watcher() -> None:
        seen = 0
        while not done.is_set() and seen < len(jobs):
            with redis_client.pipeline(transaction=True) as pipe:
                pipe.exists(*marks)
                pipe.llen(b.key)
                marked, length = pipe.execute()
            if marked > length:
                early.append(f"{marked} marked, {length} pieces")
            seen = marked

    thread = threading.Thread(target=watcher)
    thread.start()
    try:
        for job in jobs:
            b.put([Piece(job, "answer")])
    finally:
        done.set()
        thread.join()
    assert early == []
    assert b.size() == len(jobs)
