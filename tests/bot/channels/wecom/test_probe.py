"""The doctor's long-connection check against the fake WeCom: refused, accepted, held, down."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from bot.channels.wecom.lease import Lease
from bot.channels.wecom.probe import long_connection
from bot.channels.wecom.ws_sandbox import SandboxThread
from bot.console.doctor import run_checks
from bot.core.settings import Settings
from tests.helpers import free_port, unique


@pytest.fixture
def fake() -> Iterator[SandboxThread]:
    sandbox = SandboxThread({})
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.mark.parametrize(
    ("secret", "held", "ok", "phrase"),
    [
        ("right", False, True, "subscribes at"),
        ("wrong", False, False, "errcode 40001, the bot id or secret is wrong"),
        ("wrong", True, True, "held by doctor-test"),  # not probed: it would replace the holder
        ("", False, True, "not configured"),
    ],
)
def test_long_connection_check(
    settings: Settings,
    redis_client: redis.Redis,
    fake: SandboxThread,
    secret: str,
    held: bool,
    ok: bool,
    phrase: str,
) -> None:
    bot = unique("bot")
    fake.fake.bots[bot] = "right"
    changed = settings.replace(
        wecom_bot_id=bot, wecom_bot_secret=secret, wecom_ws_url=fake.fake.url
    )
    if held:
        assert Lease(redis_client, bot, "doctor-test").acquire()
    result = long_connection(changed, redis_client)
    assert result[0] is ok and phrase in result[1]
    deadline = time.monotonic() + 5  # the probe leaves no connection behind
    while fake.fake.connected(bot) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.fake.connected(bot) == 0


def test_nothing_listening_is_named(settings: Settings) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    changed = settings.replace(wecom_bot_id="b", wecom_bot_secret="s", wecom_ws_url=url)
    ok, words = long_connection(changed, None)
    assert not ok and words.startswith(f"cannot subscribe at {url}")


def test_the_doctor_reports_it(settings: Settings, redis_client: redis.Redis) -> None:
    bot = unique("bot")
    assert Lease(redis_client, bot, "doctor-test").acquire()
    changed = settings.replace(wecom_bot_id=bot, wecom_bot_secret="s")
    (check,) = [c for c in run_checks(changed, client=redis_client) if "long connection" in c.name]
    assert check.ok and "held by doctor-test" in check.detail
