"""Conversation history in a real Redis: cap, TTL, reset, each job recorded once, bad keys."""

from __future__ import annotations

import pytest
import redis

from bot.core.contracts import Answer, Job
from bot.pipeline.conversations import Conversations
from tests.helpers import make_job, unique


def job(user: str, n: int) -> Job:
    made = make_job(user, f"q{n}")
    return made.model_copy(update={"job_id": f"{user}-{n}"})


def said(j: Job, text: str, **extra: object) -> Answer:
    return Answer.model_validate({"job": j, "answer": text, **extra})


def test_record_and_history(redis_client: redis.Redis) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=10), unique()
    j = job(user, 1)
    conv.record(j, said(j, "a1", reasoning="r1"))
    history = conv.history("wechat", user)
    assert [(m["role"], m["content"]) for m in history] == [("user", "q1"), ("assistant", "a1")]
    assert history[1]["reasoning"] == "r1"
    assert 0 < redis_client.ttl(f"mimochat:conv:wechat:{user}") <= 60


def test_cap_keeps_the_newest_turns(redis_client: redis.Redis) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=2), unique()
    for n in range(5):
        j = job(user, n)
        conv.record(j, said(j, f"a{n}"))
    assert [m["content"] for m in conv.history("wechat", user)] == ["q3", "a3", "q4", "a4"]


def test_same_job_recorded_once(redis_client: redis.Redis) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=5), unique()
    j = job(user, 1)
    first = conv.record(j, said(j, "first"))
    second = conv.record(j, said(j, "second"))
    assert first.answer == second.answer == "first"
    assert len(conv.history("wechat", user)) == 2


def test_failed_answer_not_remembered(redis_client: redis.Redis) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=5), unique()
    j = job(user, 1)
    conv.record(j, said(j, "sorry", remember=False))
    assert conv.history("wechat", user) == []
    stored = conv.stored_answer(f"{user}-1")
    assert stored is not None and stored.answer == "sorry"


def test_reset(redis_client: redis.Redis) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=5), unique()
    j = job(user, 1)
    conv.record(j, said(j, "a"))
    conv.reset("wechat", user)
    assert conv.history("wechat", user) == []


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda r, k: r.set(k, "not a list"), id="wrong-type"),
        pytest.param(lambda r, k: r.rpush(k, "{not json"), id="corrupt-entry"),
        pytest.param(lambda r, k: r.rpush(k, '{"role": "user"}'), id="entry-without-content"),
    ],
)
def test_unreadable_history_is_set_aside_and_the_user_still_answered(
    redis_client: redis.Redis, spoil: object
) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=5), unique()
    conv_key = f"mimochat:conv:wechat:{user}"
    assert callable(spoil)
    spoil(redis_client, conv_key)
    assert conv.history("wechat", user) == []  # answered without it
    assert redis_client.exists(f"mimochat:conv-unreadable:wechat:{user}")  # kept for operators
    j = job(user, 1)
    conv.record(j, said(j, "fresh start"))
    assert [m["content"] for m in conv.history("wechat", user)] == ["q1", "fresh start"]
