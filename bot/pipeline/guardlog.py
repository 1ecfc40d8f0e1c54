"""What the guards decided, kept in Redis for the console: recent decisions and who is limited.

Only refusals, masks and withheld answers are written (a passing question costs no write).
The question's text is kept only when MIMOCHAT_LOG_USER_TEXT allows (the caller decides).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from bot.core.store import key
from bot.pipeline.ratelimit import Refusal

KEEP = 500  # decisions listed


def _decisions_key() -> str:
    return key("guards", "decisions")


def _limited_key() -> str:
    return key("guards", "limited")


def decided(
    client: redis.Redis,
    stage: str,
    decision: str,
    channel: str,
    user: str,
    rule: str,
    text: str = "",
) -> None:
    """List one decision (newest first, the last KEEP)."""
    entry = {
        "at": round(time.time(), 3),
        "stage": stage,
        "decision": decision,
        "channel": channel,
        "user": user,
        "rule": rule,
        **({"text": text} if text else {}),
    }
    with client.pipeline(transaction=False) as pipe:
        pipe.lpush(_decisions_key(), json.dumps(entry, ensure_ascii=False))
        pipe.ltrim(_decisions_key(), 0, KEEP - 1)
        pipe.execute()


def decisions(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The latest decisions, newest first."""
    return [json.loads(raw) for raw in client.lrange(_decisions_key(), 0, limit - 1)]


def limited(client: redis.Redis, channel: str, refusal: Refusal) -> None:
    """Note who is being limited, by which limit, until when (and how often refused)."""
    field = f"{channel}|{refusal.scope}|{refusal.who}"
    old = client.hget(_limited_key(), field)
    count = json.loads(old).get("refused", 0) + 1 if old else 1
    entry = {"until": refusal.reset_at, "limit": refusal.limit, "refused": count}
    client.hset(_limited_key(), field, json.dumps(entry))


def limited_now(client: redis.Redis) -> list[dict[str, Any]]:
    """Who is limited now (their window has not reset), soonest free first; lapsed ones go."""
    now = time.time()
    rows, lapsed = [], []
    for field, raw in client.hgetall(_limited_key()).items():
        entry = json.loads(raw)
        if entry["until"] <= now:
            lapsed.append(field)
            continue
        channel, scope, who = field.split("|", 2)
        rows.append({"channel": channel, "scope": scope, "who": who, **entry})
    if lapsed:
        client.hdel(_limited_key(), *lapsed)
    return sorted(rows, key=lambda r: r["until"])


def forget_limited(client: redis.Redis, channel: str, scope: str, who: str) -> None:
    """Take someone off the limited list (their limit was lifted)."""
    client.hdel(_limited_key(), f"{channel}|{scope}|{who}")
