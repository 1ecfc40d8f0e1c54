"""Per-user and per-group rate limits and quotas, with the `limits` library on our Redis.

`MIMOCHAT_RATE_LIMIT_USER` / `_GROUP` hold limits in the library's notation (`5/minute;100/day`;
empty: none). Fixed windows: one Redis call per limit and question; the window starts at the
first question in it and lasts the limit's period, so a day's quota resets a day after it began.
Limits are hit in order and the first refusal stops the rest (a refused question spends nothing
of the longer quotas it did not reach).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import redis
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from bot.core.store import key


@dataclass(frozen=True)
class Refusal:
    """A limit that refused a question: which, for whom, and when the window resets."""

    scope: str  # user | group
    who: str
    limit: str  # the limit in its notation, e.g. "5 per 1 minute"
    reset_at: float

    @property
    def wait(self) -> float:
        """Seconds until a question is taken again."""
        return max(0.0, self.reset_at - time.time())


@lru_cache(maxsize=32)
def parsed(spec: str) -> tuple[RateLimitItem, ...]:
    """The limits of a setting's value (none for an empty one)."""
    return tuple(parse_many(spec)) if spec.strip() else ()


_limiters: dict[str, FixedWindowRateLimiter] = {}


def limiter(client: redis.Redis) -> FixedWindowRateLimiter:
    """A limiter on the client's connection pool: one per Redis server and database, per process.

    Keyed by where the pool connects, not by the pool, so clients made per test or per request
    share one limiter instead of each leaving one behind.
    """
    pool = client.connection_pool
    where = repr(sorted((k, str(v)) for k, v in pool.connection_kwargs.items()))
    found = _limiters.get(where)
    if found is None:
        storage = RedisStorage("redis://", connection_pool=pool, key_prefix=key("ratelimit"))
        found = _limiters[where] = FixedWindowRateLimiter(storage)
    return found


def hit(client: redis.Redis, channel: str, scope: str, who: str, spec: str) -> Refusal | None:
    """Count one question against `who`'s limits; the first limit it exceeds, or None."""
    items = parsed(spec)
    if not items or not who:
        return None
    rate = limiter(client)
    for item in items:
        if not rate.hit(item, channel, scope, who):
            reset_at, _left = rate.get_window_stats(item, channel, scope, who)
            return Refusal(scope, who, str(item), float(reset_at))
    return None


def clear(client: redis.Redis, channel: str, scope: str, who: str, spec: str) -> None:
    """Forget `who`'s counts (the console's "lift" and tests)."""
    rate = limiter(client)
    for item in parsed(spec):
        rate.clear(item, channel, scope, who)
