"""How answers reach an Official Account user: passive replies or customer-service messages.

`auto` uses the customer-service API until WeChat answers 48001 (the account may not use it:
unverified subscription accounts), then remembers in Redis that this account is passive-only.
The customer-service window is tracked here too: each user message opens a window of
`WECHAT_CS_QUOTA` sends valid for `WECHAT_CS_WINDOW` seconds (WeChat: 5 sends within 48 h).
"""

from __future__ import annotations

import logging
import time

import redis

from bot.core.settings import Settings
from bot.core.store import key

log = logging.getLogger(__name__)

PASSIVE = "passive"
CUSTOMER_SERVICE = "customer_service"
PASSIVE_ONLY_TTL = 86400  # re-test the API daily: the account may have been verified since


def _passive_only_key(settings: Settings) -> str:
    return key("wechat", "passive-only", settings.wechat_app_id or "default")


def passive_only_key(settings: Settings) -> str:
    """Where `auto` mode remembers the account is passive-only (ingest reads it pipelined)."""
    return _passive_only_key(settings)


def effective(settings: Settings, client: redis.Redis) -> str:
    """The mode in effect now: `passive` or `customer_service`."""
    if settings.wechat_reply_mode != "auto":
        return mode_for(settings, passive_only=False)
    return mode_for(settings, passive_only=bool(client.exists(_passive_only_key(settings))))


def mode_for(settings: Settings, passive_only: bool) -> str:
    """The mode in effect, given whether `auto` found the account passive-only."""
    if settings.wechat_reply_mode == PASSIVE:
        return PASSIVE
    if settings.wechat_reply_mode == "auto" and passive_only:
        return PASSIVE
    return CUSTOMER_SERVICE


def mark_passive_only(settings: Settings, client: redis.Redis) -> None:
    """Remember (for a day) that the account cannot use the customer-service API."""
    if settings.wechat_reply_mode == "auto":
        client.set(_passive_only_key(settings), f"{time.time():.0f}", ex=PASSIVE_ONLY_TTL)
        log.warning(
            "WeChat answered 48001 (no customer-service permission): this account is answered "
            "with passive replies from now on (auto mode); verify the account to lift this"
        )


class ServiceWindow:
    """One user's customer-service window: opened by each message, worth `quota` sends."""

    def __init__(self, settings: Settings, client: redis.Redis, user: str) -> None:
        self.redis = client
        self.key = key("cs-window", settings.wechat_app_id or "default", user)
        self.quota = settings.wechat_cs_quota
        self.seconds = settings.wechat_cs_window

    def open(self) -> None:
        """The user just sent a message: a fresh window."""
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key, mapping=self.fresh())
            pipe.expire(self.key, self.seconds)
            pipe.execute()

    def fresh(self) -> dict[str, str]:
        """The fields of a window opened now (ingest writes them with the message's claim)."""
        return {"opened_at": f"{time.time():.3f}", "used": "0"}

    def remaining(self) -> int:
        """Sends left in the window (0 when it is closed or used up)."""
        state = self.redis.hgetall(self.key)
        if not state or time.time() - float(state["opened_at"]) > self.seconds:
            return 0
        return max(0, self.quota - int(state["used"]))

    def used_one(self) -> None:
        """Count one successful send."""
        self.redis.hincrby(self.key, "used", 1)
