"""The WeCom long-connection connector: callbacks in through the webhook's ingest, answers pushed.

Each `aibot_msg_callback` goes to `streams.ingest` — the same ledger record keyed by msgid,
dedupe, commands, group scope, allowlist, block list and in-flight limit as `/wecom`, and the
same typed Job (reply_mode "stream") on the same generation task. The connector then follows
the job's progress (`bot.core.progress`) and sends `aibot_respond_msg` stream frames under the
callback's req_id, each with the whole text so far (`streams.render_stream`, ≤ 20480 bytes,
newlines kept), at most every `interval` seconds and never the same text twice, then one frame
with `finish: true` and the whole answer.

A stream ends on its connection: one still open at `WECOM_STREAM_WINDOW` is closed with the
handover note (before WeCom's 846608 "expired"), and one whose connection ended (any close:
the reconnect gets a new connection) is not continued; either way the answer goes to the chat
by `aibot_send_msg` markdown when it is ready. `delivered_by` (HSETNX on the stream's state)
decides who sends the final answer, so it goes out once, and the ledger moves to delivered or
apologized once (`streams._finish`). Streams being followed are listed in Redis, so a connector
that takes over the lease after another died pushes their answers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from bot.channels.wecom import frames, streams
from bot.channels.wecom.lease import Lease
from bot.channels.wecom.protocol import CONTENT_LIMIT, ProtocolError, fit_content, parse_callback
from bot.channels.wecom.ws_client import AckError, Link, LinkClosed, WsClient
from bot.core import jobs, progress
from bot.core.contracts import new_id
from bot.core.settings import Settings
from bot.core.store import key
from bot.pipeline.ingest import BUSY_TEXT, Enqueue
from bot.text.split import utf8_len

log = logging.getLogger(__name__)

T = TypeVar("T")


def pending_key(bot_id: str) -> str:
    """The stream ids whose answer the bot's connector still owes (scored by time asked)."""
    return key("wecom", "ws", "pending", bot_id)


PENDING_TTL = 2 * 3600
FEEDBACK_KINDS = {"1": "good", "2": "bad", "3": "cancelled"}  # WeCom's feedback `type`


class Connector:
    """One process's connector: lease, connection, callbacks and the streams it follows."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        enqueue: Enqueue,
        *,
        owner: str = "",
        interval: float = 0.5,
        heartbeat: float = 30.0,
        ack_timeout: float = 10.0,
        lease_ttl: float = 15.0,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        displaced_delay: float = 30.0,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.enqueue = enqueue
        self.owner = owner or f"connector-{uuid.uuid4().hex[:8]}"
        self.interval = interval
        self.streams = streams.Streams(client)
        self.pending = pending_key(settings.wecom_bot_id)
        self.lease = Lease(client, settings.wecom_bot_id, self.owner, lease_ttl)
        self.client = WsClient(
            settings.wecom_ws_url,
            settings.wecom_bot_id,
            settings.wecom_bot_secret,
            self.on_frame,
            name=self.owner,
            heartbeat=heartbeat,
            ack_timeout=ack_timeout,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            displaced_delay=displaced_delay,
        )
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._renewed = 0.0  # monotonic time of the last lease call Redis answered

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (Redis, the Celery enqueue) off the event loop."""
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    # --- the process ---

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the lease when free, keep the connection while held, until `stop` is set."""
        keeper = asyncio.create_task(self._keep_lease(stop))
        try:
            await self.client.run_forever(stop)
        finally:
            keeper.cancel()
            for task in list(self._followers.values()):
                task.cancel()
            await asyncio.gather(keeper, *self._followers.values(), return_exceptions=True)
            await self.client.drop()
            with contextlib.suppress(redis.RedisError):
                await self._call(self.lease.release)

    async def _keep_lease(self, stop: asyncio.Event) -> None:
        """Renew the lease while held; otherwise try to take it; on loss, stop at once."""
        step = max(0.2, self.lease.ttl / 3)
        while not stop.is_set():
            try:
                if self.lease.held:
                    if not await self._call(self.lease.renew):
                        log.error("wecom lease lost: closing the connection")
                        await self._step_down()
                elif await self._call(self.lease.acquire):
                    log.info("wecom lease taken by %s (token %d)", self.owner, self.lease.token)
                    self.client.allowed.set()
                    await self._resume()
            except redis.RedisError as exc:
                log.warning("wecom lease: Redis error %s", exc)
                if self.lease.held and self._lease_overdue():
                    await self._step_down()
            else:
                self._renewed = time.monotonic()
            await asyncio.sleep(step)

    def _lease_overdue(self) -> bool:
        return time.monotonic() - self._renewed > self.lease.ttl * 0.8

    async def _step_down(self) -> None:
        """No longer the holder: no connection, no pushes (the new holder resumes them)."""
        self.lease.token = 0
        self.client.allowed.clear()
        for task in list(self._followers.values()):
            task.cancel()
        await self.client.drop()

    async def _resume(self) -> None:
        """Follow every stream a previous holder (or this one, before) still owes."""
        cutoff = time.time() - PENDING_TTL
        await self._call(self.redis.zremrangebyscore, self.pending, "-inf", cutoff)
        for stream_id in await self._call(self.redis.zrange, self.pending, 0, -1):
            self._follow(stream_id)

    # --- frames from WeCom ---

    async def on_frame(self, link: Link, data: dict[str, Any]) -> None:
        """One callback from WeCom."""
        cmd = data.get("cmd")
        body = data.get("body")
        req_id = frames.req_id_of(data)
        if not isinstance(body, dict) or not req_id:
            log.warning("wecom %s frame without a body or req_id; ignored", cmd)
            return
        if cmd == frames.MSG_CALLBACK:
            await self.on_message(link, req_id, body)
        elif cmd == frames.EVENT_CALLBACK:
            await self.on_event(link, req_id, body)
        else:
            log.info("wecom frame %s ignored", cmd)

    async def on_message(self, link: Link, req_id: str, body: dict[str, Any]) -> None:
        """A message: ingest it as /wecom does, answer now or follow the generation."""
        try:
            message = parse_callback(json.dumps(body))
        except ProtocolError as exc:
            log.warning("wecom callback refused: %s", exc)
            return
        if message.kind in ("stream", "event"):
            return
        try:
            reply = await self._call(
                streams.ingest,
                message,
                settings=self.settings,
                client=self.redis,
                enqueue=self.enqueue,
                via="ws",
            )
        except Exception:
            # Redis or the broker is down: ingest kept no record, and WeCom does not redeliver
            # over the long connection, so say so rather than stay silent.
            log.exception("wecom msgid %s could not be taken in", message.msg_id)
            busy = frames.stream_body(new_id(), BUSY_TEXT, True)
            await self._respond(link, req_id, busy)
            return
        if reply.duplicate:
            # The first delivery's stream (or its send_msg) answers; a second one would be a
            # second answer in the chat.
            log.info("wecom msgid %s redelivered: not answered again", message.msg_id)
            return
        if reply.payload is None:
            return
        if reply.job is None:  # a command or notice: finished at once (the ledger says so)
            await self._respond(link, req_id, reply.payload)
            return
        stream_id = reply.stream_id
        await self._call(self.streams.put, stream_id, req_id=req_id, conn=link.id)
        await self._call(self.redis.zadd, self.pending, {stream_id: time.time()})
        # Thumbs up/down on this answer come back as feedback_event with this id (only the
        # first frame of a stream may carry it).
        first = {**reply.payload["stream"], "feedback": {"id": stream_id}}
        if not await self._respond(link, req_id, {**reply.payload, "stream": first}):
            await self._call(self.streams.put, stream_id, closed=1)
        self._follow(stream_id, reply.payload["stream"]["content"])

    async def on_event(self, link: Link, req_id: str, body: dict[str, Any]) -> None:
        """enter_chat gets the greeting; feedback is recorded; disconnected_event is logged."""
        event = body.get("event")
        kind = str(event.get("eventtype", "")).lower() if isinstance(event, dict) else ""
        if kind == "enter_chat":
            payload = {"msgtype": "text", "text": {"content": streams.WELCOME_TEXT}}
            await self._respond(link, req_id, payload, frames.RESPOND_WELCOME)
        elif kind == "disconnected_event":
            # Another connection for this bot replaced ours; WeCom closes this one next.
            log.warning("wecom disconnected_event: another connection took over %s", link.id)
            link.displaced = True
        elif kind == "feedback_event" and isinstance(event, dict):
            await self._call(self._feedback, event)
        else:
            log.info("wecom event %s ignored", kind or "?")

    def _feedback(self, event: dict[str, Any]) -> None:
        """Record a person's feedback on the answer's job timeline (the turn it rated)."""
        feedback = event.get("feedback_event") or event.get("feedback")
        if not isinstance(feedback, dict):
            log.info("wecom feedback_event without a feedback object; ignored")
            return
        stream_id = str(feedback.get("id", ""))
        job_id = self.streams.get(stream_id).get("job_id", "") if stream_id else ""
        rating = FEEDBACK_KINDS.get(str(feedback.get("type", "")), "other")
        log.info("wecom feedback %s on stream %s (job %s)", rating, stream_id, job_id or "?")
        if job_id:  # beside the job's stages (jobs.record would make "feedback" its stage)
            fields = {"feedback": rating, "feedback_at": f"{time.time():.3f}"}
            if feedback.get("content"):
                fields["feedback_comment"] = str(feedback["content"])[:500]
            self.redis.hset(key("job", job_id), mapping=fields)
        self.redis.hincrby(key("wecom", "feedback"), rating, 1)

    async def _respond(
        self, link: Link, req_id: str, body: dict[str, Any], cmd: str = frames.RESPOND
    ) -> bool:
        """Send one reply frame under the callback's req_id; False if it did not go out."""
        try:
            await link.request(frames.frame(cmd, body, req_id=req_id))
            return True
        except (LinkClosed, AckError, TimeoutError) as exc:
            log.warning("wecom %s for %s failed: %s", cmd, req_id, exc)
            return False

    # --- following an answer ---

    def _follow(self, stream_id: str, shown: str = "") -> None:
        if stream_id in self._followers:
            return
        task = asyncio.create_task(self._follow_stream(stream_id, shown))
        self._followers[stream_id] = task
        task.add_done_callback(lambda _t: self._followers.pop(stream_id, None))

    async def _follow_stream(self, stream_id: str, shown: str) -> None:
        """Push the answer as it grows until it is delivered, whichever way it goes."""
        while True:
            try:
                going, shown = await self._step(stream_id, shown)
                if not going:
                    return
            except redis.RedisError as exc:
                log.warning("wecom stream %s: Redis error %s; trying again", stream_id, exc)
            await asyncio.sleep(self.interval)

    async def _step(self, stream_id: str, shown: str) -> tuple[bool, str]:
        """One look at the answer: (still owed, the stream's text as WeCom shows it now)."""
        state = await self._call(self.streams.get, stream_id)
        if not state or state.get("delivered_by"):
            await self._call(self.redis.zrem, self.pending, stream_id)
            return False, shown
        now = await self._call(progress.read, self.redis, state.get("job_id", ""))
        done = now.get("state") in streams.DONE_STATES
        link = self.client.live_link()
        open_ = state.get("closed") != "1" and link is not None and link.id == state.get("conn")
        age = time.time() - float(state.get("created_at", 0) or 0)
        if open_ and link is not None and age >= self.settings.wecom_stream_window:
            await self._hand_over(link, stream_id, state, now)
            return True, shown
        if done:
            if open_ and link is not None and await self._final_frame(link, stream_id, state, now):
                return False, shown
            return not await self._push(stream_id, state, now), shown
        if open_ and link is not None:
            content = streams.render_stream(self.settings, state, now)
            if content != shown:  # never the same text twice
                body = frames.stream_body(stream_id, content, False)
                if not await self._respond(link, state["req_id"], body):
                    await self._call(self.streams.put, stream_id, closed=1)
                shown = content
        return True, shown

    async def _final_frame(
        self, link: Link, stream_id: str, state: dict[str, str], now: dict[str, str]
    ) -> bool:
        """Finish the stream with the whole answer; False if the frame did not go out."""
        content = streams.render_stream(self.settings, state, now)
        body = frames.stream_body(stream_id, content, True)
        if not await self._respond(link, state["req_id"], body):
            await self._call(self.streams.put, stream_id, closed=1)
            return False
        if await self._call(self._claim, stream_id, "stream"):
            await self._call(self._complete, stream_id, state, "ws_stream")
        return True

    async def _push(self, stream_id: str, state: dict[str, str], now: dict[str, str]) -> bool:
        """Send the answer to the chat with aibot_send_msg; False to try again later."""
        link = self.client.live_link()
        if link is None:
            return False
        if not await self._call(self._claim, stream_id, "send_msg"):
            return True  # delivered already (another follower won)
        chat_id = state.get("chat_id") if state.get("chat_type") == "group" else None
        body = frames.markdown_body(chat_id or state.get("asker", ""), _markdown(state, now))
        try:
            await link.request(frames.frame(frames.SEND_MSG, body))
        except (LinkClosed, AckError, TimeoutError) as exc:
            log.warning("wecom aibot_send_msg for stream %s failed (%s); retrying", stream_id, exc)
            await self._call(self.redis.hdel, streams.Streams.key(stream_id), "delivered_by")
            return False
        await self._call(self._complete, stream_id, state, "send_msg")
        log.info("wecom stream %s: answer pushed with aibot_send_msg", stream_id)
        return True

    async def _hand_over(
        self, link: Link, stream_id: str, state: dict[str, str], now: dict[str, str]
    ) -> None:
        """Close the stream before its time limit; the answer follows by aibot_send_msg."""
        room = CONTENT_LIMIT - utf8_len(streams.HANDOVER_NOTE) - 2
        content = fit_content(streams.render_stream(self.settings, state, now), room)
        body = frames.stream_body(stream_id, f"{content}\n\n{streams.HANDOVER_NOTE}", True)
        await self._respond(link, state["req_id"], body)
        await self._call(self.streams.put, stream_id, closed=1, handed_over=1)
        await self._call(streams.release, self.redis, state.get("asker", ""), stream_id)
        await self._call(jobs.record, self.redis, state.get("job_id", ""), "handed_over")
        log.info("wecom stream %s closed at the window; answer goes by aibot_send_msg", stream_id)

    def _claim(self, stream_id: str, how: str) -> bool:
        return bool(self.redis.hsetnx(streams.Streams.key(stream_id), "delivered_by", how))

    def _complete(self, stream_id: str, state: dict[str, str], via: str) -> None:
        """The final answer went out: record, in-flight count and pending list say so."""
        self.streams.put(stream_id, finished=1, final_by=via)
        streams.release(self.redis, state.get("asker", ""), stream_id)
        streams._finish(self.redis, state, via)  # noqa: SLF001 - the webhook mode's own step
        jobs.record(self.redis, state.get("job_id", ""), "delivered", via=via)
        self.redis.zrem(self.pending, stream_id)


def _markdown(state: dict[str, str], now: dict[str, str]) -> str:
    """The final answer as one markdown message (no reasoning)."""
    return streams.render_markdown(state, now)
