"""Blocked users: operators block a user from the console; the webhook answers them politely.

One Redis set per channel. Blocking costs the blocked user a short passive reply and nothing
else: no job, no model time, no customer-service send.
"""

from __future__ import annotations

import redis

from bot.core.store import key

BLOCKED_TEXT = (
    "Sorry, this assistant is not available to you at the moment. 抱歉，暂时无法为您提供服务。"
)


def _key(channel: str) -> str:
    return key("blocked", channel)


def blocked_key(channel: str) -> str:
    """The set of blocked users of a channel (ingest reads it in its first round trip)."""
    return _key(channel)


def is_blocked(client: redis.Redis, channel: str, user: str) -> bool:
    """True when an operator blocked this user on this channel."""
    return bool(client.sismember(_key(channel), user))


def block(client: redis.Redis, channel: str, user: str) -> None:
    """Block a user (idempotent)."""
    client.sadd(_key(channel), user)


def unblock(client: redis.Redis, channel: str, user: str) -> None:
    """Lift a block (idempotent)."""
    client.srem(_key(channel), user)


def blocked(client: redis.Redis, channel: str) -> set[str]:
    """Every blocked user of a channel."""
    return set(client.smembers(_key(channel)))
