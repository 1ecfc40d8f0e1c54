"""The passive reply: waiting for the answer, holding, the honest notice, riding answers."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from bot.channels.wechat.mailbox import Mailbox, Piece
from bot.channels.wechat.passive import PassiveReply, respond
from bot.core.contracts import IncomingMessage, Job
from bot.core.settings import Settings
from bot.pipeline import commands
from bot.pipeline.ingest import ingest
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


def passive_settings(settings: Settings) -> Settings:
    return settings.replace(
        wechat_reply_mode="passive", wechat_passive_wait=0.6, wechat_platform_timeout=0.8
    )


def test_passive_reply_waits_for_the_answer(settings: Settings, redis_client: redis.Redis) -> None:
    s = passive_settings(settings)
    m = message(unique(), "question")
    decision = ingest(m, settings=s, client=redis_client, enqueue=lambda j: None)
    box = Mailbox(redis_client, "wechat", m.user, 60)
    timer = threading.Timer(0.2, box.put, args=[[Piece(decision.job_id, "the answer")]])
    timer.start()
    reply = respond(m, decision, settings=s, client=redis_client, started=time.time())
    timer.join()
    assert reply == PassiveReply("the answer")


def test_passive_reply_holds_then_gives_notice_on_the_last_try(
    settings: Settings, redis_client: redis.Redis
) -> None:
    s = passive_settings(settings)
    m = message(unique(), "slow question")
    replies = []
    for _ in range(s.wechat_attempts):
        started = time.time()
        decision = ingest(m, settings=s, client=redis_client, enqueue=lambda j: None)
        replies.append(respond(m, decision, settings=s, client=redis_client, started=started))
    assert [r.text for r in replies[:-1]] == [None, None]
    assert all(r.hold > s.wechat_platform_timeout - s.wechat_passive_wait for r in replies[:-1])
    assert replies[-1].text == commands.STILL_THINKING_TEXT


def test_next_message_carries_the_waiting_answer(
    settings: Settings, redis_client: redis.Redis
) -> None:
    user = unique()
    Mailbox(redis_client, "wechat", user, 60).put(
        [Piece("old-job", "the late answer", "old question")]
    )
    m = message(user, "new question")
    decision = ingest(m, settings=settings, client=redis_client, enqueue=lambda j: None)
    assert decision.job is not None  # the new question is answered too
    reply = respond(m, decision, settings=settings, client=redis_client, started=time.time())
    assert reply.text == "the late answer"


@pytest.mark.parametrize(("waiting", "expected"), [(True, "part two"), (False, None)])
def test_continue_keyword(
    settings: Settings, redis_client: redis.Redis, waiting: bool, expected: str | None
) -> None:
    user = unique()
    if waiting:
        Mailbox(redis_client, "wechat", user, 60).put([Piece("j", "part two")])
    queued: list[Job] = []
    m = message(user, "继续")
    decision = ingest(m, settings=settings, client=redis_client, enqueue=queued.append)
    reply = respond(m, decision, settings=settings, client=redis_client, started=time.time())
    if waiting:
        assert (reply.text, queued) == (expected, [])
    else:
        assert len(queued) == 1  # nothing waits: "继续" is just a message for the model
