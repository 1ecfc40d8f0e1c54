"""The console's Guards view: who is rate-limited now, and what content safety decided (and why).

Reads what `bot.pipeline.guardlog` keeps; lifting a limit clears the person's (or group's)
counters so their next question is taken.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from bot.core.settings import Settings
from bot.pipeline import guardlog, ratelimit, safety

KEEP = guardlog.KEEP  # decisions listed at most


def overview(client: redis.Redis, settings: Settings, limit: int = 100) -> dict[str, Any]:
    """Limits in force, who is limited now, the latest decisions with their rules."""
    now = time.time()
    limited = [
        {**row, "wait": max(0, round(row["until"] - now))} for row in guardlog.limited_now(client)
    ]
    decisions = [
        {**row, "age": max(0, round(now - row["at"]))} for row in guardlog.decisions(client, limit)
    ]
    lists = safety.lists_for(settings.safety_lists)
    return {
        "limits": {
            "user": settings.rate_limit_user or "none",
            "group": settings.rate_limit_group or "none",
            "exempt": settings.rate_limit_exempt,
        },
        "safety": {
            "lists": [f"{a}:{p}" for a, p in safety.parse_spec(settings.safety_lists)],
            "terms": lists.count,
            "review": settings.review_url or "",
            "review_fail": settings.review_fail,
        },
        "limited": limited,
        "decisions": decisions,
    }


def lift(client: redis.Redis, settings: Settings, channel: str, scope: str, who: str) -> None:
    """Clear someone's rate-limit counters and take them off the limited list."""
    spec = settings.rate_limit_group if scope == "group" else settings.rate_limit_user
    ratelimit.clear(client, channel, scope, who, spec)
    guardlog.forget_limited(client, channel, scope, who)
