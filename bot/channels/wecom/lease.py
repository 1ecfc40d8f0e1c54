"""Who holds the WeCom long connection: one Redis lease per deployment, with a fencing token.

A new connection for the same bot replaces the old one on WeCom's side, so however many
`up` / `wecom-connect` processes run, only the lease holder connects. The lease is a key set
with NX and a TTL and renewed well inside it; each grant takes a new number from a counter
(the fencing token), so a holder that stalled past its TTL finds its value gone and steps down.
"""

from __future__ import annotations

import redis

from bot.core.store import key


def lease_key(bot_id: str) -> str:
    """Where the lease of one bot's connection lives (one connection per bot id)."""
    return key("wecom", "ws", "lease", bot_id)


FENCE_KEY = key("wecom", "ws", "fence")

# KEYS: lease, fence. ARGV: owner, ttl ms. Returns the new token, or 0 when someone holds it.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""
# KEYS: lease. ARGV: value, ttl ms ('' = release). 1 if we still held it.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class Lease:
    """This process's claim on the connection: acquire, renew, release."""

    def __init__(self, client: redis.Redis, bot_id: str, owner: str, ttl: float = 15.0) -> None:
        self.redis = client
        self.key = lease_key(bot_id)
        self.owner = owner
        self.ttl = ttl
        self.token = 0

    @property
    def value(self) -> str:
        """What the lease key holds while we hold it."""
        return f"{self.owner}|{self.token}"

    @property
    def held(self) -> bool:
        """Whether we believe we hold it (as of the last acquire or renew)."""
        return self.token > 0

    def acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        token = int(self.redis.eval(_ACQUIRE, 2, self.key, FENCE_KEY, self.owner, self._ms()))
        self.token = token
        return token > 0

    def renew(self) -> bool:
        """Extend the lease; False (and no longer held) if it expired or another took it."""
        if not self.held:
            return False
        if not int(self.redis.eval(_RENEW, 1, self.key, self.value, self._ms())):
            self.token = 0
        return self.held

    def release(self) -> None:
        """Give it up at once so another process takes over without waiting for the TTL."""
        if self.held:
            self.redis.eval(_RENEW, 1, self.key, self.value, "")
            self.token = 0

    def _ms(self) -> int:
        return int(self.ttl * 1000)


def holder(client: redis.Redis, bot_id: str) -> str:
    """Who holds the bot's connection now ('' if nobody): `owner|token`."""
    value = client.get(lease_key(bot_id))
    return value.decode() if isinstance(value, bytes) else (value or "")
