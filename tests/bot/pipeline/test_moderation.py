"""Blocked users: the block list, and the webhook's polite answer without a job."""

from __future__ import annotations

import redis

from bot.core.contracts import IncomingMessage
from bot.core.settings import Settings
from bot.pipeline import moderation
from bot.pipeline.ingest import Decision, ingest
from tests.helpers import unique


def test_block_unblock(redis_client: redis.Redis) -> None:
    user = unique()
    assert not moderation.is_blocked(redis_client, "wechat", user)
    moderation.block(redis_client, "wechat", user)
    assert moderation.is_blocked(redis_client, "wechat", user)
    assert not moderation.is_blocked(redis_client, "wecom", user)  # per channel
    assert user in moderation.blocked(redis_client, "wechat")
    moderation.unblock(redis_client, "wechat", user)
    assert not moderation.is_blocked(redis_client, "wechat", user)


def test_blocked_user_gets_a_polite_reply_and_no_job(
    settings: Settings, redis_client: redis.Redis
) -> None:
    user = unique()
    moderation.block(redis_client, "wechat", user)
    queued: list[dict] = []

    def ask(text: str, kind: str = "text", event: str = "") -> Decision:
        m = IncomingMessage("wechat", user, "gh", kind, text, msg_id=unique("m"), event=event)
        return ingest(m, settings=settings, client=redis_client, enqueue=queued.append)

    assert ask("hello").reply == moderation.BLOCKED_TEXT
    assert ask("/reset").reply == moderation.BLOCKED_TEXT
    assert queued == []
    moderation.unblock(redis_client, "wechat", user)
    assert ask("hello again").job is not None
    assert len(queued) == 1
