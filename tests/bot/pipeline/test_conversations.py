"""Conversation history in a real Redis: cap, TTL, reset, each job recorded once."""

from __future__ import annotations

import redis

from bot.pipeline.conversations import Conversations
from tests.helpers import unique


def job(user: str, n: int) -> dict:
    return {"job_id": f"{user}-{n}", "channel": "wechat", "user": user, "text": f"q{n}"}


def test_record_and_history(redis_client: redis.Redis) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=10), unique()
    conv.record(job(user, 1), {"answer": "a1", "reasoning": "r1"})
    history = conv.history("wechat", user)
    assert [(m["role"], m["content"]) for m in history] == [("user", "q1"), ("assistant", "a1")]
    assert history[1]["reasoning"] == "r1"
    assert 0 < redis_client.ttl(f"mimochat:conv:wechat:{user}") <= 60


def test_cap_keeps_the_newest_turns(redis_client: redis.Redis) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=2), unique()
    for n in range(5):
        conv.record(job(user, n), {"answer": f"a{n}"})
    assert [m["content"] for m in conv.history("wechat", user)] == ["q3", "a3", "q4", "a4"]


def test_same_job_recorded_once(redis_client: redis.Redis) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=5), unique()
    first = conv.record(job(user, 1), {"answer": "first"})
    second = conv.record(job(user, 1), {"answer": "second"})
    assert first["answer"] == second["answer"] == "first"
    assert len(conv.history("wechat", user)) == 2


def test_failed_answer_not_remembered(redis_client: redis.Redis) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=5), unique()
    conv.record(job(user, 1), {"answer": "sorry", "remember": False})
    assert conv.history("wechat", user) == []
    assert conv.stored_answer(f"{user}-1")["answer"] == "sorry"


def test_reset(redis_client: redis.Redis) -> None:
    conv, user = Conversations(redis_client, ttl=60, max_turns=5), unique()
    conv.record(job(user, 1), {"answer": "a"})
    conv.reset("wechat", user)
    assert conv.history("wechat", user) == []
