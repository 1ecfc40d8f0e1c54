"""A fake WeCom long-connection server on 127.0.0.1, for tests and the demo (no WeCom account).

It behaves as WeCom's does, as far as its own SDK shows: `aibot_subscribe` with the right
bot_id/secret is acked 0 (else an errcode and the connection closed); `ping` is acked; a new
subscribed connection for a bot replaces the old one, which gets `disconnected_event` and a
clean close; `aibot_respond_msg` must carry the req_id of a callback sent on that same
connection, and a stream frame carries the whole content so far (≤ 20480 bytes) until
`finish`; past the stream's time limit a frame gets 846608. Pushes (`aibot_send_msg`) and
welcomes are kept per chat. Tests drive it with `say`, `event`, `close`, `drop`; by hand (the
demo), plain HTTP GETs on the same port do: `/say?userid=&chatid=&text=`, `/event?eventtype=`,
`/chat?chatid=` (or `userid=`) and `/healthz`.

`SandboxThread` runs it on an event loop of its own, so synchronous code (tests, the demo's
supervisor) can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bot.channels.wecom import frames
from bot.channels.wecom.protocol import CONTENT_LIMIT, new_msgid
from bot.text.split import utf8_len

log = logging.getLogger(__name__)

T = TypeVar("T")
STREAM_LIMIT = 360.0  # seconds WeCom lets a stream be updated


@dataclass
class Stream:
    """One stream as the chat sees it: every frame's content, and whether it finished."""

    stream_id: str
    chat_id: str
    started: float
    contents: list[str] = field(default_factory=list)
    finished: bool = False
    req_id: str = ""  # the callback it answers (the console finds its message's frames by it)

    @property
    def content(self) -> str:
        """What the chat shows now."""
        return self.contents[-1] if self.contents else ""


@dataclass
class Conn:
    """One client connection."""

    number: int
    ws: ServerConnection
    bot_id: str = ""
    req_ids: dict[str, str] = field(default_factory=dict)  # callback req_id → chat id


class FakeWeCom:
    """The server's state and rules (use from its own event loop; see SandboxThread)."""

    def __init__(self, bots: dict[str, str], stream_limit: float = STREAM_LIMIT) -> None:
        self.bots = dict(bots)
        self.stream_limit = stream_limit
        self.current: dict[str, Conn] = {}  # bot id → the subscribed connection
        self.subscribes: list[tuple[str, int]] = []  # (bot id, errcode) of every subscribe
        self.streams: dict[str, Stream] = {}
        self.pushed: dict[str, list[str]] = {}  # chat id → markdown pushed by aibot_send_msg
        self.welcomes: list[dict[str, Any]] = []
        self.refused: list[tuple[str, int]] = []  # (cmd, errcode) of every refused frame
        self.pings = 0
        self._numbers = itertools.count(1)
        self.server: Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1 (`port` 0: a free one); returns the port."""
        self.server = await serve(
            self.serve, "127.0.0.1", port, ping_interval=None, process_request=self.http
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    @property
    def url(self) -> str:
        """Where clients dial it."""
        return f"ws://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def http(self, conn: ServerConnection, request: Request) -> Response | None:
        """Plain HTTP GETs drive the fake by hand (the demo): /say, /event, /chat, /healthz."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # a WebSocket client: go on with the handshake
        url = urlsplit(request.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        bot = q.get("bot") or next(iter(self.current), "")
        try:
            if url.path == "/say":
                chat = q.get("chatid", "")
                rid = await self.say(bot, q.get("userid", "demo_user"), q["text"], chat_id=chat)
                result: Any = {"req_id": rid}
            elif url.path == "/event":
                kind = q.get("eventtype", "enter_chat")
                result = {"req_id": await self.event(bot, q.get("userid", "demo_user"), kind)}
            elif url.path == "/chat":
                chat = q.get("chatid") or q.get("userid", "")
                shown = [
                    {
                        "stream": s.stream_id,
                        "req_id": s.req_id,
                        "content": s.content,
                        "finished": s.finished,
                        "frames": [len(c) for c in s.contents],  # characters of each frame
                    }
                    for s in self.stream_in(chat)
                ]
                result = {"streams": shown, "pushed": self.pushed.get(chat, [])}
            elif url.path == "/healthz":
                result = {"connected": {b: c.number for b, c in self.current.items()}}
            else:
                return conn.respond(HTTPStatus.NOT_FOUND, "not found\n")
        except (KeyError, RuntimeError) as exc:
            return conn.respond(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        response = conn.respond(HTTPStatus.OK, json.dumps(result, ensure_ascii=False) + "\n")
        response.headers["Content-Type"] = "application/json; charset=utf-8"
        return response

    async def serve(self, ws: ServerConnection) -> None:
        """One connection, until it closes."""
        conn = Conn(next(self._numbers), ws)
        try:
            async for raw in ws:
                try:
                    data = frames.decode(raw)
                except ValueError:
                    continue
                await self._frame(conn, data)
        except ConnectionClosed:
            pass
        finally:
            if conn.bot_id and self.current.get(conn.bot_id) is conn:
                del self.current[conn.bot_id]

    async def _frame(self, conn: Conn, data: dict[str, Any]) -> None:
        cmd, req_id = data.get("cmd"), frames.req_id_of(data)
        body = data.get("body") if isinstance(data.get("body"), dict) else {}
        assert isinstance(body, dict)
        if cmd == frames.SUBSCRIBE:
            await self._subscribe(conn, req_id, body)
            return
        if not conn.bot_id:
            await self._ack(conn, req_id, frames.ERR_NOT_SUBSCRIBED, cmd)
        elif cmd == frames.PING:
            self.pings += 1
            await self._ack(conn, req_id)
        elif cmd == frames.RESPOND:
            await self._ack(conn, req_id, self._respond(conn, req_id, body), cmd)
        elif cmd == frames.RESPOND_WELCOME:
            ok = req_id in conn.req_ids
            if ok:
                self.welcomes.append(body)
            await self._ack(conn, req_id, frames.ERR_OK if ok else frames.ERR_BAD_FRAME, cmd)
        elif cmd == frames.SEND_MSG:
            await self._ack(conn, req_id, self._send_msg(body), cmd)
        else:
            await self._ack(conn, req_id, frames.ERR_BAD_FRAME, cmd)

    async def _ack(self, conn: Conn, req_id: str, errcode: int = 0, cmd: Any = "") -> None:
        if errcode:
            self.refused.append((str(cmd), errcode))
        with contextlib.suppress(ConnectionClosed):
            await conn.ws.send(frames.encode(frames.ack(req_id, errcode, frames.explain(errcode))))

    async def _subscribe(self, conn: Conn, req_id: str, body: dict[str, Any]) -> None:
        bot_id, secret = str(body.get("bot_id", "")), str(body.get("secret", ""))
        if not bot_id or self.bots.get(bot_id) != secret:
            self.subscribes.append((bot_id, frames.ERR_BAD_SECRET))
            await self._ack(conn, req_id, frames.ERR_BAD_SECRET, frames.SUBSCRIBE)
            await conn.ws.close()
            return
        self.subscribes.append((bot_id, 0))
        old = self.current.get(bot_id)
        conn.bot_id = bot_id
        self.current[bot_id] = conn
        await self._ack(conn, req_id)
        if old is not None and old is not conn:
            # WeCom keeps one connection per bot: the old one is told, then closed.
            event = {"msgtype": "event", "aibotid": bot_id, "create_time": int(time.time())}
            event["event"] = {"eventtype": "disconnected_event"}
            with contextlib.suppress(ConnectionClosed):
                await old.ws.send(frames.encode(frames.frame(frames.EVENT_CALLBACK, event)))
            old.bot_id = ""
            await old.ws.close()

    def _respond(self, conn: Conn, req_id: str, body: dict[str, Any]) -> int:
        if req_id not in conn.req_ids:
            return frames.ERR_BAD_FRAME  # not a callback of this connection
        chat_id = conn.req_ids[req_id]
        if body.get("msgtype") != "stream":
            return frames.ERR_OK
        stream = body.get("stream")
        if not isinstance(stream, dict) or not isinstance(stream.get("content", ""), str):
            return frames.ERR_BAD_FRAME
        stream_id = str(stream.get("id", ""))
        content = stream.get("content", "")
        if utf8_len(content) > CONTENT_LIMIT:
            return frames.ERR_BAD_FRAME
        known = self.streams.setdefault(
            stream_id, Stream(stream_id, chat_id, time.monotonic(), req_id=req_id)
        )
        if known.finished or time.monotonic() - known.started > self.stream_limit:
            return frames.ERR_STREAM_EXPIRED
        known.contents.append(content)
        known.finished = bool(stream.get("finish"))
        return frames.ERR_OK

    def _send_msg(self, body: dict[str, Any]) -> int:
        chat_id = str(body.get("chatid", ""))
        markdown = body.get("markdown")
        if not chat_id or not isinstance(markdown, dict):
            return frames.ERR_BAD_FRAME
        content = markdown.get("content", "")
        if not isinstance(content, str) or utf8_len(content) > CONTENT_LIMIT:
            return frames.ERR_BAD_FRAME
        self.pushed.setdefault(chat_id, []).append(content)
        return frames.ERR_OK

    # --- what tests and the demo do ---

    async def say(
        self,
        bot_id: str,
        user: str,
        text: str,
        *,
        chat_id: str = "",
        msg_id: str = "",
        req_id: str = "",
    ) -> str:
        """A person writes to the bot (in a group when `chat_id`); returns the callback's req_id."""
        body: dict[str, Any] = {
            "msgid": msg_id or new_msgid(),
            "aibotid": bot_id,
            "chattype": "group" if chat_id else "single",
            "from": {"userid": user},
            "msgtype": "text",
            "text": {"content": text},
        }
        if chat_id:
            body["chatid"] = chat_id
        return await self.callback(bot_id, frames.MSG_CALLBACK, body, req_id)

    async def event(
        self, bot_id: str, user: str, kind: str, chat_id: str = "", **extra: Any
    ) -> str:
        """An event (enter_chat, feedback_event, …) for the bot; `extra` joins the event."""
        body: dict[str, Any] = {
            "msgid": new_msgid(),
            "aibotid": bot_id,
            "chattype": "group" if chat_id else "single",
            "from": {"userid": user},
            "msgtype": "event",
            "create_time": int(time.time()),
            "event": {"eventtype": kind, **extra},
        }
        if chat_id:
            body["chatid"] = chat_id
        return await self.callback(bot_id, frames.EVENT_CALLBACK, body)

    async def callback(self, bot_id: str, cmd: str, body: dict[str, Any], req_id: str = "") -> str:
        """Send one callback on the bot's connection; RuntimeError when it has none."""
        conn = self.current.get(bot_id)
        if conn is None:
            raise RuntimeError(f"bot {bot_id} is not connected")
        data = frames.frame(cmd, body, req_id=req_id)
        rid = frames.req_id_of(data)
        conn.req_ids[rid] = str(body.get("chatid") or body.get("from", {}).get("userid", ""))
        await conn.ws.send(frames.encode(data))
        return rid

    async def close(self, bot_id: str) -> None:
        """Close the bot's connection cleanly (code 1000), as WeCom does at times."""
        conn = self.current.pop(bot_id, None)
        if conn is not None:
            await conn.ws.close()

    async def drop(self, bot_id: str) -> None:
        """Cut the bot's connection without a close handshake (a network drop)."""
        conn = self.current.pop(bot_id, None)
        if conn is not None:
            conn.ws.transport.abort()

    def connected(self, bot_id: str) -> int:
        """The number of the bot's subscribed connection (0: none)."""
        conn = self.current.get(bot_id)
        return conn.number if conn is not None else 0

    def stream_in(self, chat_id: str) -> list[Stream]:
        """The streams shown in a chat (a group, or a person's single chat), oldest first."""
        return [s for s in self.streams.values() if s.chat_id == chat_id]


class SandboxThread:
    """A FakeWeCom on an event loop in a daemon thread; `call` runs its coroutines from outside."""

    def __init__(self, bots: dict[str, str], stream_limit: float = STREAM_LIMIT) -> None:
        self.fake = FakeWeCom(bots, stream_limit)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="fake-wecom"
        )

    def start(self, port: int = 0) -> str:
        """Start serving; returns the ws:// URL."""
        self._thread.start()
        self.call(self.fake.start(port))
        return self.fake.url

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run one of the fake's coroutines on its loop and wait for the result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop serving and end the thread."""
        with contextlib.suppress(Exception):
            self.call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m bot.channels.wecom.ws_sandbox --port N --bot ID:SECRET`: serve until killed."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bot", action="append", default=[], help="BOT_ID:SECRET")
    args = parser.parse_args(argv)
    bots = dict(b.split(":", 1) for b in args.bot)

    async def serve_forever() -> None:
        fake = FakeWeCom(bots)
        port = await fake.start(args.port)
        print(f"fake WeCom long connection on ws://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
