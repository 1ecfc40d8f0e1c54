"""Which way answers go, and the customer-service window, in a real Redis."""

from __future__ import annotations

import time

import pytest
import redis

from bot.channels.wechat import reply_mode
from bot.core.settings import Settings
from tests.helpers import unique


@pytest.mark.parametrize(
    ("mode", "flagged", "expected"),
    [
        ("auto", False, "customer_service"),
        ("auto", True, "passive"),
        ("customer_service", True, "customer_service"),
        ("passive", False, "passive"),
    ],
)
def test_effective(
    settings: Settings, redis_client: redis.Redis, mode: str, flagged: bool, expected: str
) -> None:
    s = settings.replace(
        wechat_reply_mode=mode, wechat_app_id="wx" + unique("")[1:17].ljust(16, "0")
    )
    if flagged:
        reply_mode.mark_passive_only(s.replace(wechat_reply_mode="auto"), redis_client)
    assert reply_mode.effective(s, redis_client) == expected


def test_window_counts_sends_and_expires(settings: Settings, redis_client: redis.Redis) -> None:
    w = reply_mode.ServiceWindow(
        settings.replace(wechat_cs_quota=2, wechat_cs_window=1), redis_client, unique()
    )
    assert w.remaining() == 0  # no message from the user yet
    w.open()
    assert w.remaining() == 2
    w.used_one()
    w.used_one()
    assert w.remaining() == 0
    w.open()  # the user wrote again
    assert w.remaining() == 2
    time.sleep(1.1)
    assert w.remaining() == 0
