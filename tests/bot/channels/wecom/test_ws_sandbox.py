"""The fake WeCom long-connection server keeps WeCom's rules (tests rely on it to catch misuse)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import requests
from websockets.asyncio.client import ClientConnection, connect

from bot.channels.wecom import frames
from bot.channels.wecom.protocol import CONTENT_LIMIT
from bot.channels.wecom.ws_sandbox import FakeWeCom, SandboxThread
from tests.bot.channels.wecom.ws_helpers import run, until

BOT, SECRET = "bot1", "secret"


async def request(ws: ClientConnection, data: dict[str, Any]) -> dict[str, Any]:
    """Send a frame and read frames until its ack (callbacks in between are skipped)."""
    await ws.send(frames.encode(data))
    while True:
        reply = frames.decode(await ws.recv())
        if not reply.get("cmd") and frames.req_id_of(reply) == frames.req_id_of(data):
            return reply


async def subscribed(fake: FakeWeCom, secret: str = SECRET) -> tuple[ClientConnection, int]:
    ws = await connect(fake.url)
    body = {"bot_id": BOT, "secret": secret}
    ack = await request(ws, frames.frame(frames.SUBSCRIBE, body))
    return ws, int(ack["errcode"])


@pytest.mark.parametrize(
    ("secret", "errcode"), [(SECRET, 0), ("wrong", frames.ERR_BAD_SECRET), ("", 40001)]
)
def test_subscribe_checks_the_secret(secret: str, errcode: int) -> None:
    async def scenario() -> None:
        fake = FakeWeCom({BOT: SECRET})
        await fake.start()
        ws, code = await subscribed(fake, secret)
        assert code == errcode and (fake.connected(BOT) > 0) is (errcode == 0)
        await ws.close()
        await fake.stop()

    run(scenario())


BIG = "字" * (CONTENT_LIMIT // 3 + 1)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([("grow", "a", False), ("grow", "a\nb", True)], [0, 0]),
        ([("grow", "a", True), ("grow", "again", False)], [0, frames.ERR_STREAM_EXPIRED]),
        ([("grow", BIG, False)], [frames.ERR_BAD_FRAME]),
        ([("wait", "", False), ("grow", "late", False)], [frames.ERR_STREAM_EXPIRED]),
        ([("foreign", "x", False)], [frames.ERR_BAD_FRAME]),
    ],
    ids=["grows-then-finishes", "after-finish", "too-big", "past-the-limit", "unknown-req-id"],
)
def test_stream_rules(steps: list[tuple[str, str, bool]], expected: list[int]) -> None:
    async def scenario() -> None:
        fake = FakeWeCom({BOT: SECRET}, stream_limit=0.3)
        await fake.start()
        ws, _ = await subscribed(fake)
        req_id = await fake.say(BOT, "alice", "hi")
        codes = []
        for what, content, finish in steps:
            if what == "wait":
                await request(
                    ws, frames.frame(frames.RESPOND, frames.stream_body("s", "", False), req_id)
                )
                await asyncio.sleep(0.4)
                continue
            rid = "not-mine" if what == "foreign" else req_id
            body = frames.stream_body("s", content, finish)
            codes.append(
                int((await request(ws, frames.frame(frames.RESPOND, body, rid)))["errcode"])
            )
        assert codes == expected
        await ws.close()
        await fake.stop()

    run(scenario())


def test_a_new_connection_replaces_the_old_with_disconnected_event() -> None:
    async def scenario() -> None:
        fake = FakeWeCom({BOT: SECRET})
        await fake.start()
        old, _ = await subscribed(fake)
        new, _ = await subscribed(fake)
        event = frames.decode(await old.recv())
        assert event["cmd"] == frames.EVENT_CALLBACK
        assert event["body"]["event"]["eventtype"] == "disconnected_event"
        await until(lambda: old.close_code is not None or old.state.name == "CLOSED", 5, "close")
        ping = await request(new, frames.frame(frames.PING))
        assert ping["errcode"] == 0 and fake.pings == 1
        await new.close()
        await fake.stop()

    run(scenario())


def test_plain_http_drives_it_by_hand() -> None:
    sandbox = SandboxThread({BOT: SECRET})
    url = sandbox.start().replace("ws://", "http://")
    try:
        assert requests.get(f"{url}/say", params={"text": "hi"}, timeout=5).status_code == 400
        assert requests.get(f"{url}/healthz", timeout=5).json() == {"connected": {}}
        assert requests.get(f"{url}/nowhere", timeout=5).status_code == 404
        shown = requests.get(f"{url}/chat", params={"chatid": "team"}, timeout=5).json()
        assert shown == {"streams": [], "pushed": []}
        ws, _ = sandbox.call(subscribed(sandbox.fake))  # a bot connects; /say reaches it
        said = requests.get(f"{url}/say", params={"text": "hi", "chatid": "team"}, timeout=5)
        callback = frames.decode(sandbox.call(ws.recv()))
        assert frames.req_id_of(callback) == said.json()["req_id"]
        assert callback["body"]["chatid"] == "team" and callback["body"]["text"]["content"] == "hi"
        sandbox.call(ws.close())
    finally:
        sandbox.stop()
