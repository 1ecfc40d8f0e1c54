"""The one fake WeCom (demo, tests and the console): WeCom's side of a robot's `/wecom`.

It does what WeCom does with the robot: posts encrypted, signed callbacks (`deliver`), reads the
sealed replies, keeps refreshing an unfinished stream every WECOM_SANDBOX_REFRESH_INTERVAL
seconds until `finish`, WeCom's 6 minutes or a refresh limit (`refresh_loop`, in a background
thread with `follow`), and serves the one-use response_url each message carries
(`accept_response`). Everything a chat shows is recorded in Redis (`ChatLog`), so any web
process can serve it.

Two fronts use it: the `/sandbox/wecom/*` routes (`send`, `verify`, `chat` below; chats named
by group or user) and the console's simulator (`bot.channels.wecom.simulator`: one chat record
per simulated message, its first callback sent with the platform's retries and verdicts).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import requests

from bot.channels.wecom.protocol import (
    CONTENT_LIMIT,
    ProtocolError,
    message_payload,
    new_msgid,
    read_reply,
    sign_callback,
    url_check,
)
from bot.core.settings import Settings
from bot.core.store import key
from bot.text.split import utf8_len

log = logging.getLogger(__name__)

WECOM_STREAM_LIMIT = 360.0  # WeCom stops refreshing a stream 6 minutes after the message
RESPONSE_URL_TTL = 3600  # a response_url works once, for an hour
EVENTS_TTL = 86400  # how long a chat's record is kept
MAX_RETRIES = 3
KINDS = ("text", "voice", "mixed", "image", "event")
DEFAULT_BOT_NAME = "MiMo"  # mentioned in groups when WECOM_BOT_NAME is empty
SANDBOX_BOT_ID = "AIBOT_SANDBOX"
SANDBOX_USER = "sandbox_user"
SANDBOX_GROUP = "sandbox_group"
# The sandbox's own calls wait long: under test load a slow answer is not what is tested there.
SANDBOX_CALL_TIMEOUT = 10.0

Reply = tuple[int | None, dict[str, Any] | str]  # (HTTP status or None, reply or why none)


class Refused(ValueError):
    """A request the sandbox cannot act on (the route answers 400)."""


# --- the chat record ---


@dataclass(frozen=True)
class ChatLog:
    """Where one fake chat is kept in Redis: what it showed, and its refresh loop's state."""

    events_key: str
    loop_key: str

    def record(self, client: redis.Redis, event: dict[str, Any]) -> dict[str, Any]:
        """Append one thing the chat showed; returns it with its time."""
        return _append(client, self.events_key, event)

    def events(self, client: redis.Redis) -> list[dict[str, Any]]:
        """Everything the chat showed, oldest first."""
        return [json.loads(e) for e in client.lrange(self.events_key, 0, -1)]

    def set_loop(self, client: redis.Redis, **fields: Any) -> None:
        """Update the refresh loop's state (state, refreshes, refreshed_at, ended_at)."""
        with client.pipeline(transaction=False) as pipe:
            pipe.hset(self.loop_key, mapping={k: str(v) for k, v in fields.items()})
            pipe.expire(self.loop_key, EVENTS_TTL)
            pipe.execute()

    def loop(self, client: redis.Redis) -> dict[str, str]:
        """The refresh loop's state: state is running | finished | error | stopped | expired
        (| none, set by the console when there was nothing to refresh)."""
        return {str(k): str(v) for k, v in client.hgetall(self.loop_key).items()}


def _append(client: redis.Redis, events_key: str, event: dict[str, Any]) -> dict[str, Any]:
    event = {"at": round(time.time(), 3), **event}
    with client.pipeline(transaction=False) as pipe:
        pipe.rpush(events_key, json.dumps(event, ensure_ascii=False))
        pipe.expire(events_key, EVENTS_TTL)
        pipe.execute()
    return event


def sandbox_chat(chat: str, msg_id: str = "") -> ChatLog:
    """A `/sandbox/wecom` chat (a group's id, or `single:<user>`); the loop is per message."""
    return ChatLog(key("sandbox", "wecom", "events", chat), key("sandbox", "wecom", "loop", msg_id))


# --- one callback, one reply ---


def deliver(
    settings: Settings,
    url: str,
    payload: dict[str, Any],
    *,
    timeout: float,
    http: Any = requests,
) -> Reply:
    """POST one callback to the robot's `url` as WeCom does: (HTTP status, decrypted reply),
    (status, error text) when refused, or (None, why) when no answer came."""
    token, aes_key = settings.wecom_bot_token, settings.wecom_bot_aes_key
    signed = sign_callback(token, aes_key, payload)
    try:
        res = http.post(
            url,
            params=signed.params,
            data=signed.body.encode(),
            headers={"Content-Type": "application/json"},
            timeout=(min(3.0, timeout), timeout),
            allow_redirects=False,  # WeCom does not follow redirects
        )
    except requests.Timeout:
        return None, "timeout"
    except requests.RequestException as exc:
        return None, type(exc).__name__
    if res.status_code != 200:
        return res.status_code, res.text[:300]
    try:
        return 200, read_reply(res.text, token=token, aes_key=aes_key)
    except ProtocolError as exc:  # what WeCom would refuse: recorded, the chat shows an error
        return 502, exc.reason


def reply_event(status: int | None, reply: dict[str, Any] | str, **context: Any) -> dict[str, Any]:
    """The chat's view of one reply: a stream version, a text, nothing, or an error."""
    if status != 200 or not isinstance(reply, dict):
        return {"kind": "error", "status": status, "body": str(reply)[:300], **context}
    if not reply:
        return {"kind": "empty", **context}
    if reply.get("msgtype") == "stream":
        stream = reply.get("stream") or {}
        return {
            "kind": "stream",
            "stream_id": str(stream.get("id", "")),
            "content": str(stream.get("content", "")),
            "finish": bool(stream.get("finish")),
            **context,
        }
    if reply.get("msgtype") == "text":
        return {"kind": "text", "content": str((reply.get("text") or {}).get("content")), **context}
    return {"kind": "other", "body": json.dumps(reply, ensure_ascii=False)[:300], **context}


def _shown(event: dict[str, Any]) -> str:
    """What the chat shows for a reply, whichever callback brought it and whenever."""
    return json.dumps(
        {k: v for k, v in event.items() if k not in ("at", "attempt", "refresh", "userid")},
        sort_keys=True,
    )


# --- the refresh loop ---


@dataclass(frozen=True)
class Stream:
    """An unfinished stream WeCom keeps refreshing: where, for whom, and what it showed first."""

    url: str  # the robot's /wecom
    user: str
    chat_id: str  # "" one to one
    stream_id: str
    bot_id: str
    started: float  # time.monotonic() when the user's message went out
    shown_first: str = ""  # the content of the reply that started it


def refresh_once(
    settings: Settings, stream: Stream, *, timeout: float, http: Any = requests
) -> Reply:
    """One stream-refresh callback as WeCom sends it."""
    payload = message_payload(
        stream.user,
        kind="stream",
        chat_id=stream.chat_id,
        bot_id=stream.bot_id,
        stream_id=stream.stream_id,
    )
    return deliver(settings, stream.url, payload, timeout=timeout, http=http)


def refresh_loop(
    settings: Settings,
    client: redis.Redis,
    chat: ChatLog,
    stream: Stream,
    *,
    timeout: float,
    limit: int | None = None,
    http: Any = requests,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Refresh a stream as WeCom does until it finishes, fails, WeCom's 6 minutes pass or
    `limit` refreshes were made; records each version that differs from the one before (the
    first is `stream.shown_first`): the chat shows the same text only once. Returns how it
    ended: finished | error | stopped | expired."""
    interval = max(0.05, settings.wecom_sandbox_refresh_interval)
    first = {"kind": "stream", "stream_id": stream.stream_id, "content": stream.shown_first}
    count, last = 0, _shown({**first, "finish": False})
    while True:
        if limit is not None and count >= limit:
            end = "stopped"
            break
        sleep(interval)
        if time.monotonic() - stream.started > WECOM_STREAM_LIMIT:
            end = "expired"
            break
        count += 1
        status, reply = refresh_once(settings, stream, timeout=timeout, http=http)
        chat.set_loop(client, refreshes=count, refreshed_at=f"{time.time():.3f}")
        event = reply_event(status, reply, userid=stream.user, refresh=count)
        finished = event["kind"] != "stream" or event["finish"]
        if (shown := _shown(event)) != last or finished:
            chat.record(client, event)
            last = shown
        if finished:
            end = "finished" if event["kind"] != "error" else "error"
            break
    chat.set_loop(client, state=end, ended_at=f"{time.time():.3f}")
    if end in ("stopped", "expired"):
        chat.record(
            client, {"kind": f"refresh_{end}", "stream_id": stream.stream_id, "refresh": count}
        )
    return end


def follow(
    settings: Settings,
    client: redis.Redis,
    chat: ChatLog,
    stream: Stream,
    *,
    timeout: float,
    limit: int | None = None,
    http: Any = requests,
) -> threading.Thread:
    """Run `refresh_loop` in a background thread, as WeCom refreshes while the chat is open;
    whatever happens in it is recorded in the chat, never raised."""

    def run() -> None:
        try:
            refresh_loop(settings, client, chat, stream, timeout=timeout, limit=limit, http=http)
        except Exception as exc:  # a thread has no caller: the chat record tells the operator
            log.exception("fake WeCom: the refresh loop of %s failed", stream.stream_id)
            try:
                chat.record(client, {"kind": "error", "status": None, "body": type(exc).__name__})
                chat.set_loop(client, state="error", ended_at=f"{time.time():.3f}")
            except redis.RedisError:
                pass

    chat.set_loop(client, state="running", refreshes=0)
    thread = threading.Thread(target=run, name=f"wecom-refresh-{stream.stream_id[:8]}", daemon=True)
    thread.start()
    return thread


# --- response_url ---


def _response_key(code: str) -> str:
    return key("sim", "wecom", "response", code)


def new_response_url(endpoint: str) -> tuple[str, str]:
    """A response_url on `endpoint` with a fresh one-use code: (url, code)."""
    code = secrets.token_urlsafe(24)
    return f"{endpoint}?response_code={code}", code


def open_response_url(client: redis.Redis, code: str, chat: ChatLog, **fields: str) -> None:
    """Let `code` post one message into `chat` within the hour; `fields` go with it."""
    ref_key = _response_key(code)
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(ref_key, mapping={"events": chat.events_key, "created": f"{time.time():.3f}"})
        for name, value in fields.items():  # the event the message becomes carries them
            pipe.hset(ref_key, name, value)
        pipe.expire(ref_key, RESPONSE_URL_TTL)
        pipe.execute()


def accept_response(client: redis.Redis, code: str, body: Any) -> tuple[int, str]:
    """A POST to a response_url, checked as WeCom does: (errcode, errmsg); a message that
    passes is recorded in its chat."""
    ref = {str(k): str(v) for k, v in client.hgetall(_response_key(code)).items()} if code else {}
    if not ref:
        return 40058, "invalid or expired response_code"
    markdown = body.get("markdown") if isinstance(body, dict) else None
    if not isinstance(markdown, dict) or body.get("msgtype") != "markdown":
        return 40008, "msgtype must be markdown"
    content = markdown.get("content")
    if not isinstance(content, str) or not content:
        return 44003, "empty content"
    if utf8_len(content) > CONTENT_LIMIT:
        return 45002, "content size out of limit"
    if not client.hsetnx(_response_key(code), "used", f"{time.time():.3f}"):
        return 40058, "response_code already used"
    fields = {k: v for k, v in ref.items() if k not in ("events", "created", "used")}
    _append(client, ref["events"], {"kind": "response_url", **fields, "content": content})
    return 0, "ok"


# --- the /sandbox/wecom front ---


def mention(text: str, settings: Settings) -> str:
    """The text as a group member types it: the robot's @mention first (unless already there)."""
    name = settings.wecom_bot_name or DEFAULT_BOT_NAME
    if text.lstrip().startswith(f"@{name}"):
        return text
    return f"@{name} {text}"


def _configured(settings: Settings) -> None:
    if not (settings.wecom_bot_token and settings.wecom_bot_aes_key):
        raise Refused("WECOM_BOT_TOKEN and WECOM_BOT_AES_KEY must be set")


def send(
    settings: Settings, client: redis.Redis, body: Any, *, webhook: str, responses: str
) -> dict[str, Any]:
    """Say something in a chat as WeCom would deliver it to `webhook` (the robot's /wecom);
    returns the robot's replies; an unfinished stream is then refreshed in the background.
    `responses` is the endpoint of this fake WeCom's response_url (`accept_response`).

    Body: text, userid, chatid (absent: a one-to-one chat; chattype "group" without one:
    the sandbox group), msgtype (text|voice|mixed|image|event), eventtype (event: enter_chat),
    msgid (to replay one), quote, mention (default true: `@<bot name>` first in groups),
    retries (0-3 extra deliveries of the same callback), refreshes (most stream refreshes;
    absent: until finished).
    """
    if not isinstance(body, dict):
        raise Refused("expected a JSON object")
    user = str(body.get("userid") or SANDBOX_USER)
    chat_id = str(body.get("chatid") or "")
    if body.get("chattype") == "group" and not chat_id:
        chat_id = SANDBOX_GROUP
    kind = str(body.get("msgtype") or "text")
    if kind not in KINDS:
        raise Refused(f"msgtype must be one of {', '.join(KINDS)}")
    retries, refreshes = body.get("retries", 0), body.get("refreshes")
    if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise Refused(f"retries must be an integer from 0 to {MAX_RETRIES}")
    if refreshes is not None and (not isinstance(refreshes, int) or refreshes < 0):
        raise Refused("refreshes must be a non-negative integer")
    _configured(settings)
    text = str(body.get("text") or "")
    if chat_id and kind in ("text", "mixed") and body.get("mention", True):
        text = mention(text, settings)
    name = chat_id or f"single:{user}"
    msg_id = str(body.get("msgid") or new_msgid())
    chat = sandbox_chat(name, msg_id)
    response_url, code = new_response_url(responses)
    open_response_url(client, code, chat, userid=user, msgid=msg_id)
    payload = message_payload(
        user,
        kind=kind,
        content=text,
        chat_id=chat_id,
        bot_id=SANDBOX_BOT_ID,
        msg_id=msg_id,
        response_url=response_url,
        quote=str(body.get("quote") or ""),
        event=str(body.get("eventtype") or "enter_chat"),
    )
    said = {"kind": "user", "userid": user, "msgtype": kind, "text": text, "msgid": msg_id}
    if body.get("quote"):
        said["quote"] = str(body["quote"])
    if kind == "event":
        said["event"] = payload["event"]["eventtype"]
    chat.record(client, said)
    started = time.monotonic()
    replies = [
        chat.record(
            client,
            reply_event(
                *deliver(settings, webhook, payload, timeout=SANDBOX_CALL_TIMEOUT),
                userid=user,
                attempt=attempt,
            ),
        )
        for attempt in range(1 + retries)
    ]
    first = replies[0]
    stream_id = str(first.get("stream_id", ""))
    if first["kind"] == "stream" and not first["finish"] and stream_id:
        stream = Stream(
            webhook, user, chat_id, stream_id, SANDBOX_BOT_ID, started, first["content"]
        )
        follow(settings, client, chat, stream, timeout=SANDBOX_CALL_TIMEOUT, limit=refreshes)
    return {
        "chat": name,
        "msgid": msg_id,
        "stream_id": stream_id,
        "replies": replies,
        "response_url": response_url,
    }


def verify(settings: Settings, webhook: str, http: Any = requests) -> dict[str, Any]:
    """Check the robot's callback URL as WeCom does when it is saved in the admin console."""
    _configured(settings)
    params, plain = url_check(settings.wecom_bot_token, settings.wecom_bot_aes_key)
    try:
        res = http.get(webhook, params=params, timeout=SANDBOX_CALL_TIMEOUT)
    except requests.RequestException as exc:
        return {"ok": False, "status": 0, "error": type(exc).__name__}
    return {"ok": res.status_code == 200 and res.text == plain, "status": res.status_code}


def fold(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat as people see it: each stream shown once, with its latest content."""
    messages: list[dict[str, Any]] = []
    streams: dict[str, dict[str, Any]] = {}
    for event in events:
        kind = event.get("kind")
        if kind == "stream":
            shown = streams.get(event["stream_id"])
            if shown is None:
                shown = {
                    "kind": "bot",
                    "stream_id": event["stream_id"],
                    "userid": event.get("userid", ""),
                    "updates": 0,
                    "at": event["at"],
                }
                streams[event["stream_id"]] = shown
                messages.append(shown)
            shown.update(content=event["content"], finish=event["finish"])
            shown["updates"] += 1
        elif kind in ("user", "text", "response_url"):
            messages.append(dict(event))
    return messages


def chat_seen(client: redis.Redis, chat_id: str, user: str) -> dict[str, Any]:
    """Everything a chat (a group's `chat_id`, or one to one with `user`) has seen: `events`
    (oldest first) and the folded `messages`."""
    if not (chat_id or user):
        raise Refused("chatid (a group) or userid (a one-to-one chat) is required")
    name = chat_id or f"single:{user}"
    events = sandbox_chat(name).events(client)
    return {"chat": name, "events": events, "messages": fold(events)}
