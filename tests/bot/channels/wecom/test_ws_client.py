"""The long connection against the fake WeCom server: ws:// dialling, acks, and every kind of close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.channels.wecom import frames
from bot.channels.wecom.ws_client import AckError, Link, WsClient
from bot.channels.wecom.ws_sandbox import FakeWeCom
from tests.bot.channels.wecom.ws_helpers import run, until
from tests.helpers import unique

SECRET = "s3cret"


def client(fake: FakeWeCom, bot: str, seen: list[dict[str, Any]], **kw: Any) -> WsClient:
    async def on_frame(_link: Link, data: dict[str, Any]) -> None:
        seen.append(data)

    options = {"backoff_base": 0.05, "backoff_max": 0.2, "displaced_delay": 0.3, **kw}
    return WsClient(fake.url, bot, SECRET, on_frame, **options)


def test_subscribes_over_plain_ws_and_gets_callbacks() -> None:
    async def scenario() -> None:
        bot = unique("bot")
        fake = FakeWeCom({bot: SECRET})
        await fake.start()
        seen: list[dict[str, Any]] = []
        ws = client(fake, bot, seen, heartbeat=0.1)
        stop = asyncio.Event()
        ws.allowed.set()
        task = asyncio.create_task(ws.run_forever(stop))
        await until(lambda: fake.connected(bot) > 0, what="subscribed")
        assert fake.subscribes == [(bot, 0)]
        req_id = await fake.say(bot, "alice", "hello")
        await until(lambda: len(seen) == 1, what="callback")
        assert seen[0]["cmd"] == frames.MSG_CALLBACK and frames.req_id_of(seen[0]) == req_id
        await until(lambda: fake.pings >= 2, what="heartbeats acked")
        stop.set()
        await task
        await fake.stop()

    run(scenario())


def test_wrong_secret_is_refused_and_retried() -> None:
    async def scenario() -> None:
        bot = unique("bot")
        fake = FakeWeCom({bot: "other"})
        await fake.start()
        ws = client(fake, bot, [])
        link_errors: list[int] = []
        stop = asyncio.Event()
        ws.allowed.set()
        task = asyncio.create_task(ws.run_forever(stop))
        await until(lambda: len(fake.subscribes) >= 2, what="a retry after the refusal")
        assert {code for _bot, code in fake.subscribes} == {frames.ERR_BAD_SECRET}
        assert ws.sessions == 0 and not link_errors
        stop.set()
        await task
        await fake.stop()

    run(scenario())


@pytest.mark.parametrize("how", ["close", "drop", "replaced", "server_restart"])
def test_every_kind_of_close_leads_to_a_new_subscription(how: str) -> None:
    async def scenario() -> None:
        bot = unique("bot")
        fake = FakeWeCom({bot: SECRET})
        port = await fake.start()
        ws = client(fake, bot, [])
        stop = asyncio.Event()
        ws.allowed.set()
        task = asyncio.create_task(ws.run_forever(stop))
        await until(lambda: fake.connected(bot) > 0, what="subscribed")
        first = fake.connected(bot)
        if how == "close":
            await fake.close(bot)
        elif how == "drop":
            await fake.drop(bot)
        elif how == "replaced":
            other = client(fake, bot, [])
            other.allowed.set()
            other_stop = asyncio.Event()
            other_task = asyncio.create_task(other.run_forever(other_stop))
            await until(lambda: other.sessions == 1, what="the second connection")
            assert ws.link is not None
            await until(lambda: ws.link is None or not ws.link.alive, what="the first one closed")
            other_stop.set()
            await other_task
        else:
            await fake.stop()
            fake = FakeWeCom({bot: SECRET})
            await fake.start(port)
        await until(lambda: ws.sessions >= 2 and fake.connected(bot) > 0, 10, how)
        assert how == "server_restart" or fake.connected(bot) != first
        stop.set()
        await task
        await fake.stop()

    run(scenario())


def test_missed_heartbeats_end_the_connection() -> None:
    async def scenario() -> None:
        bot = unique("bot")
        fake = FakeWeCom({bot: SECRET})
        await fake.start()
        ws = client(fake, bot, [], heartbeat=0.1, ack_timeout=0.1)
        stop = asyncio.Event()
        ws.allowed.set()
        task = asyncio.create_task(ws.run_forever(stop))
        await until(lambda: ws.sessions == 1, what="subscribed")
        # The server stops answering pings (a half-open connection): the client must notice.
        original = fake._frame

        async def deaf(conn: Any, data: dict[str, Any]) -> None:
            if data.get("cmd") != frames.PING:
                await original(conn, data)

        fake._frame = deaf  # type: ignore[method-assign]
        await until(lambda: ws.sessions >= 2, 10, "a reconnect after missed heartbeats")
        stop.set()
        await task
        await fake.stop()

    run(scenario())


def test_a_refused_frame_raises_with_its_errcode() -> None:
    async def scenario() -> None:
        bot = unique("bot")
        fake = FakeWeCom({bot: SECRET})
        await fake.start()
        ws = client(fake, bot, [])
        stop = asyncio.Event()
        ws.allowed.set()
        task = asyncio.create_task(ws.run_forever(stop))
        await until(lambda: ws.live_link() is not None, what="subscribed")
        link = ws.live_link()
        assert link is not None
        body = frames.stream_body("s1", "hi", False)
        with pytest.raises(AckError) as caught:
            await link.request(frames.frame(frames.RESPOND, body, req_id="not-a-callback"))
        assert caught.value.errcode == frames.ERR_BAD_FRAME
        stop.set()
        await task
        await fake.stop()

    run(scenario())
