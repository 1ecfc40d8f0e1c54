"""The connection lease on a real Redis: one holder per bot, renewal, expiry, fencing tokens."""

from __future__ import annotations

import time

import pytest
import redis

from bot.channels.wecom.lease import Lease, holder
from tests.helpers import unique


def test_one_holder_then_a_takeover_with_a_higher_token(redis_client: redis.Redis) -> None:
    bot = unique("bot")
    first, second = Lease(redis_client, bot, "a", ttl=0.3), Lease(redis_client, bot, "b", ttl=0.3)
    assert first.acquire() and not second.acquire()
    assert holder(redis_client, bot) == f"a|{first.token}"
    assert first.renew()
    time.sleep(0.45)  # the holder stalls past its TTL
    assert second.acquire() and second.token > first.token
    assert not first.renew() and not first.held  # it finds out and steps down
    assert holder(redis_client, bot) == f"b|{second.token}"


@pytest.mark.parametrize("released", [True, False])
def test_release_frees_it_at_once_only_for_the_holder(
    redis_client: redis.Redis, released: bool
) -> None:
    bot = unique("bot")
    lease, other = Lease(redis_client, bot, "a", ttl=30), Lease(redis_client, bot, "b", ttl=30)
    assert lease.acquire()
    if released:
        lease.release()
    else:
        other.release()  # not the holder: changes nothing
    assert other.acquire() is released


def test_leases_of_different_bots_are_independent(redis_client: redis.Redis) -> None:
    assert Lease(redis_client, unique("bot"), "a").acquire()
    assert Lease(redis_client, unique("bot"), "a").acquire()
