"""The WeCom long connection itself: dial, subscribe, heartbeat, acks, and reconnect on any close.

Written on `websockets` directly rather than wrapping WeCom's own SDK (`wecom-aibot-python-sdk`,
imports as `aibot`): checked against a local fake server, SDK 1.0.2 always passes an SSL context
(so it cannot dial a `ws://` URL: "ssl argument is incompatible with a ws:// URI"), and when the
server closes the connection cleanly its receive loop just ends — no reconnect, and after
"connection considered dead" still none. Both are inside its private connection manager, so a
wrapper would have to replace most of it; the frames themselves are few (see `frames`).

Here one session is one connection: `run_forever` dials (TLS only for `wss://`), subscribes,
pings, and ends the session on whatever comes first — a clean close, a drop, two missed
heartbeat acks, the holder's lease lost — then dials again after an exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from bot.channels.wecom import frames

log = logging.getLogger(__name__)

MISSED_PINGS = 2  # heartbeat acks missed in a row before the connection counts as dead
STABLE_AFTER = 10.0  # seconds a session must last for the backoff to start again from the base
OPEN_TIMEOUT = 10.0


class LinkClosed(Exception):
    """The connection a frame was meant for is gone."""


class AckError(Exception):
    """WeCom answered a frame with a non-zero errcode."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"errcode {errcode}: {errmsg} ({frames.explain(errcode)})")
        self.errcode = errcode
        self.errmsg = errmsg


class Link:
    """One open connection: sends frames and matches each ack to the frame that asked for it."""

    def __init__(self, ws: ClientConnection, link_id: str, ack_timeout: float) -> None:
        self.ws = ws
        self.id = link_id
        self.ack_timeout = ack_timeout
        self.alive = True
        self.subscribed = False
        self.displaced = False  # WeCom said another connection took our place
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def request(self, data: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send a frame and wait for its ack; AckError on errcode != 0, LinkClosed if gone."""
        req_id = frames.req_id_of(data)
        # Frames sharing a req_id (one stream's updates) go one at a time: an ack names only
        # the req_id, so two in flight could not be told apart (the SDK queues them the same way).
        # Only replies share req_ids; pings and pushes get a lock of their own.
        own = asyncio.Lock()
        lock = self._locks.setdefault(req_id, own) if data.get("cmd") == frames.RESPOND else own
        async with lock:
            if not self.alive:
                raise LinkClosed(self.id)
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._acks[req_id] = future
            try:
                await self.ws.send(frames.encode(data))
                reply = await asyncio.wait_for(future, timeout or self.ack_timeout)
            except (ConnectionClosed, LinkClosed) as exc:
                raise LinkClosed(self.id) from exc
            finally:
                self._acks.pop(req_id, None)
        errcode = int(reply.get("errcode") or 0)
        if errcode != frames.ERR_OK:
            raise AckError(errcode, str(reply.get("errmsg", "")))
        return reply

    def resolve(self, data: dict[str, Any]) -> bool:
        """Hand an ack to the frame waiting for it; False if none waits."""
        future = self._acks.get(frames.req_id_of(data))
        if future is None or future.done():
            return False
        future.set_result(data)
        return True

    def close_all(self) -> None:
        """The connection ended: every frame still waiting fails with LinkClosed."""
        self.alive = False
        for future in self._acks.values():
            if not future.done():
                future.set_exception(LinkClosed(self.id))
        self._acks.clear()
        self._locks.clear()


FrameHandler = Callable[[Link, dict[str, Any]], Awaitable[None]]


class WsClient:
    """Keeps one subscribed connection up while `allowed` is set; hands callbacks to `on_frame`."""

    def __init__(
        self,
        url: str,
        bot_id: str,
        secret: str,
        on_frame: FrameHandler,
        *,
        name: str = "wecom",
        heartbeat: float = 30.0,
        ack_timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        displaced_delay: float = 30.0,
    ) -> None:
        self.url = url
        self.bot_id = bot_id
        self.secret = secret
        self.on_frame = on_frame
        self.name = name
        self.heartbeat = heartbeat
        self.ack_timeout = ack_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.displaced_delay = displaced_delay
        self.allowed = asyncio.Event()
        self.link: Link | None = None
        self.sessions = 0  # connections subscribed so far
        self._handlers: set[asyncio.Task[None]] = set()
        self._count = 0

    def live_link(self) -> Link | None:
        """The current subscribed connection, if any."""
        link = self.link
        return link if link is not None and link.alive and link.subscribed else None

    async def drop(self) -> None:
        """Close the current connection now (the lease was lost); `run_forever` dials again."""
        link = self.link
        if link is not None:
            link.close_all()
            with contextlib.suppress(Exception):
                await link.ws.close()

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Connect, serve, and reconnect with backoff until `stop` is set."""
        failures = 0
        while not stop.is_set():
            await _first(stop.wait(), self.allowed.wait())
            if stop.is_set():
                break
            started = time.monotonic()
            why, displaced = await self.session(stop)
            if stop.is_set():
                break
            if time.monotonic() - started >= STABLE_AFTER:
                failures = 0
            delay = min(self.backoff_max, self.backoff_base * 2**failures)
            delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not secrecy
            if displaced:
                # Another connection for this bot took over: don't fight it tit-for-tat.
                delay = max(delay, self.displaced_delay)
            failures += 1
            log.warning("wecom connection ended (%s); reconnecting in %.1f s", why, delay)
            await _first(stop.wait(), asyncio.sleep(delay))

    async def session(self, stop: asyncio.Event) -> tuple[str, bool]:
        """One connection from dial to close; returns why it ended and whether it was displaced."""
        self._count += 1
        try:
            # websockets picks TLS from the scheme: wss:// gets the default context, ws:// none.
            ws = await connect(
                self.url,
                ping_interval=None,  # WeCom's own `ping` frames are the heartbeat
                open_timeout=OPEN_TIMEOUT,
                close_timeout=2,
                max_size=2**22,
            )
        except (OSError, WebSocketException, TimeoutError) as exc:
            return f"cannot connect: {type(exc).__name__}: {exc}", False
        link = Link(ws, f"{self.name}:{self._count}", self.ack_timeout)
        self.link = link
        reader = asyncio.create_task(self._read(link))
        try:
            try:
                await link.request(
                    frames.frame(frames.SUBSCRIBE, {"bot_id": self.bot_id, "secret": self.secret})
                )
            except AckError as exc:
                log.error("wecom subscribe refused: %s", exc)
                return f"subscribe refused: {exc}", False
            except (LinkClosed, TimeoutError) as exc:
                return f"subscribe failed: {type(exc).__name__}", False
            link.subscribed = True
            self.sessions += 1
            log.info("wecom long connection %s subscribed to %s", link.id, self.url)
            beat = asyncio.create_task(self._heartbeat(link))
            lost = asyncio.create_task(_wait_cleared(self.allowed))
            try:
                done = await _first(reader, beat, lost, stop.wait())
            finally:
                beat.cancel()
                lost.cancel()
            if lost.done() and not lost.cancelled():
                return "lease lost", False
            return done or "stopped", link.displaced
        finally:
            link.close_all()
            with contextlib.suppress(Exception):
                await ws.close()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _read(self, link: Link) -> str:
        """Read frames until the connection ends; returns how it ended."""
        try:
            async for raw in link.ws:
                try:
                    data = frames.decode(raw)
                except ValueError:
                    log.warning("wecom sent a frame that is not a JSON object; ignored")
                    continue
                if not data.get("cmd"):
                    link.resolve(data)
                    continue
                task = asyncio.create_task(self._handle(link, data))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
        except ConnectionClosed as exc:
            return f"connection dropped ({exc})"
        code = link.ws.close_code
        return f"closed by the server (code {code})"

    async def _handle(self, link: Link, data: dict[str, Any]) -> None:
        try:
            await self.on_frame(link, data)
        except Exception:
            log.exception("wecom frame %s could not be handled", data.get("cmd"))

    async def _heartbeat(self, link: Link) -> str:
        """Ping every `heartbeat` seconds; returns when too many acks went missing."""
        missed = 0
        while link.alive:
            await asyncio.sleep(self.heartbeat)
            try:
                await link.request(frames.frame(frames.PING))
                missed = 0
            except (TimeoutError, AckError) as exc:
                missed += 1
                log.warning("wecom heartbeat %d missed (%s)", missed, type(exc).__name__)
                if missed >= MISSED_PINGS:
                    return "heartbeat failed"
            except LinkClosed:
                return "connection closed during heartbeat"
        return "connection closed"


async def _wait_cleared(event: asyncio.Event) -> None:
    while event.is_set():
        await asyncio.sleep(0.1)


async def _first(*aws: Awaitable[Any]) -> Any:
    """Wait for the first of several awaitables; cancel the rest; return its result."""
    tasks = [a if isinstance(a, asyncio.Task) else asyncio.ensure_future(a) for a in aws]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        if task not in aws:  # tasks the caller passed in are the caller's to cancel
            task.cancel()
    first = next(iter(done))
    return None if first.cancelled() or first.exception() else first.result()
