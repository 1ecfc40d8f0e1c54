"""A fake WeCom under /sandbox/wecom/ (demo and test mode only) that drives the robot's `/wecom`.

It plays WeCom's part: `POST /sandbox/wecom/send` makes the callback a group member's @mention
(or a one-to-one message, event, voice, mixed message, quote) would make, encrypted and signed
with the robot's token and key, posts it to this server's `/wecom`, checks the reply's
signature, decrypts it, and — when the reply is an unfinished stream — keeps sending
stream-refresh callbacks in a background thread every WECOM_SANDBOX_REFRESH_INTERVAL seconds
until `finish` (or WeCom's 6-minute limit, or the `refreshes` the caller allowed). Each message
carries a one-use `response_url` pointing at `POST /sandbox/wecom/response`.

Everything the chat shows is recorded in Redis (every web process sees the same chat):
`GET /sandbox/wecom/chat?chatid=…` (or `?userid=…` for a one-to-one chat) returns the events
and the messages as the group sees them, each stream folded into its latest content.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from typing import Any

import requests
from flask import Blueprint, jsonify, request

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
from bot.text.formatting import utf8_len
from webhooks.services import services

log = logging.getLogger(__name__)

bp = Blueprint("sandbox_wecom", __name__, url_prefix="/sandbox/wecom")

WECOM_STREAM_LIMIT = 360.0  # WeCom stops refreshing 6 minutes after the user's message
RESPONSE_URL_TTL = 3600
EVENTS_TTL = 86400
MAX_RETRIES = 3
KINDS = ("text", "voice", "mixed", "image", "event")
DEFAULT_BOT_NAME = "MiMo"


def _chat_key(chat: str) -> str:
    return key("sandbox", "wecom", "events", chat)


def _record(client: Any, chat: str, event: dict[str, Any]) -> None:
    event = {"at": round(time.time(), 3), **event}
    with client.pipeline(transaction=False) as pipe:
        pipe.rpush(_chat_key(chat), json.dumps(event, ensure_ascii=False))
        pipe.expire(_chat_key(chat), EVENTS_TTL)
        pipe.execute()


def _call(base: str, settings: Settings, payload: dict[str, Any]) -> tuple[int, dict | str]:
    """POST one callback to /wecom as WeCom does; (HTTP status, decrypted reply or error text)."""
    signed = sign_callback(settings.wecom_bot_token, settings.wecom_bot_aes_key, payload)
    try:
        res = requests.post(
            f"{base}/wecom",
            params=signed.params,
            data=signed.body.encode(),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
    except requests.RequestException as exc:
        return 0, type(exc).__name__
    if res.status_code != 200:
        return res.status_code, res.text[:300]
    try:
        return 200, read_reply(
            res.text, token=settings.wecom_bot_token, aes_key=settings.wecom_bot_aes_key
        )
    except ProtocolError as exc:  # what WeCom would refuse: record it, the test will see it
        return 502, exc.reason


def _record_reply(
    client: Any, chat: str, status: int, reply: dict | str, **context: Any
) -> dict[str, Any]:
    """Record what the chat shows for one reply; returns the recorded event."""
    if status != 200:
        event = {"kind": "error", "status": status, "body": reply, **context}
    elif not reply:
        event = {"kind": "empty", **context}
    elif reply.get("msgtype") == "stream":
        stream = reply.get("stream") or {}
        event = {
            "kind": "stream",
            "stream_id": stream.get("id", ""),
            "content": stream.get("content", ""),
            "finish": bool(stream.get("finish")),
            **context,
        }
    elif reply.get("msgtype") == "text":
        event = {"kind": "text", "content": (reply.get("text") or {}).get("content", ""), **context}
    else:
        event = {"kind": "other", "reply": reply, **context}
    _record(client, chat, event)
    return event


def _refresh_loop(
    base: str,
    settings: Settings,
    client: Any,
    chat: str,
    chat_id: str,
    user: str,
    stream_id: str,
    limit: int | None,
    started: float,
) -> None:
    """Poll a stream as WeCom does until it finishes, the window ends or `limit` refreshes."""
    interval = max(0.05, settings.wecom_sandbox_refresh_interval)
    count, last = 0, None
    while True:
        if limit is not None and count >= limit:
            _record(client, chat, {"kind": "refresh_stopped", "stream_id": stream_id})
            return
        time.sleep(interval)
        if time.monotonic() - started > WECOM_STREAM_LIMIT:
            _record(client, chat, {"kind": "stream_expired", "stream_id": stream_id})
            return
        count += 1
        payload = message_payload(user, kind="stream", chat_id=chat_id, stream_id=stream_id)
        status, reply = _call(base, settings, payload)
        shown = (status, json.dumps(reply, sort_keys=True, ensure_ascii=False))
        finished = status == 200 and isinstance(reply, dict) and _finished(reply)
        if shown != last or finished:  # record changes only: the chat shows the same text
            _record_reply(client, chat, status, reply, userid=user, refresh=count)
            last = shown
        if finished or status != 200:
            return


def _finished(reply: dict) -> bool:
    return reply.get("msgtype") != "stream" or bool((reply.get("stream") or {}).get("finish"))


def _body() -> dict | None:
    try:
        body = json.loads(request.get_data().decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _bad(reason: str):  # noqa: ANN202
    return jsonify(error=reason), 400


@bp.post("/send")
def send():  # noqa: ANN201
    """Say something in a chat as WeCom would deliver it; returns the robot's first reply.

    JSON: text, userid, chatid (absent: a one-to-one chat), msgtype (text|voice|mixed|image|
    event), eventtype (event: enter_chat), msgid (to replay one), quote, mention (default true:
    prefix `@<bot name>` in groups), retries (0-3 extra deliveries of the same callback),
    refreshes (most stream refreshes; absent: until finished).
    """
    s = services()
    body = _body()
    if body is None:
        return _bad("expected a JSON object")
    user = str(body.get("userid") or "sandbox_user")
    chat_id = str(body.get("chatid") or "")
    if body.get("chattype") == "group" and not chat_id:
        chat_id = "sandbox_group"
    kind = str(body.get("msgtype") or "text")
    if kind not in KINDS:
        return _bad(f"msgtype must be one of {', '.join(KINDS)}")
    text = str(body.get("text") or "")
    retries = body.get("retries", 0)
    refreshes = body.get("refreshes")
    if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        return _bad(f"retries must be an integer from 0 to {MAX_RETRIES}")
    if refreshes is not None and (not isinstance(refreshes, int) or refreshes < 0):
        return _bad("refreshes must be a non-negative integer")
    if not (s.settings.wecom_bot_token and s.settings.wecom_bot_aes_key):
        return _bad("WECOM_BOT_TOKEN and WECOM_BOT_AES_KEY must be set")
    chat = chat_id or f"single:{user}"
    if chat_id and kind in ("text", "mixed") and body.get("mention", True):
        text = f"@{s.settings.wecom_bot_name or DEFAULT_BOT_NAME} {text}"
    msg_id = str(body.get("msgid") or new_msgid())
    base = request.host_url.rstrip("/")
    code = secrets.token_urlsafe(16)
    response_url = f"{base}/sandbox/wecom/response?response_code={code}"
    s.redis.hset(
        key("sandbox", "wecom", "response", code),
        mapping={"chat": chat, "userid": user, "msgid": msg_id, "created": f"{time.time():.3f}"},
    )
    s.redis.expire(key("sandbox", "wecom", "response", code), RESPONSE_URL_TTL)
    payload = message_payload(
        user,
        kind=kind,
        content=text,
        chat_id=chat_id,
        msg_id=msg_id,
        response_url=response_url,
        quote=str(body.get("quote") or ""),
        event=str(body.get("eventtype") or "enter_chat"),
    )
    user_event = {"kind": "user", "userid": user, "msgtype": kind, "text": text, "msgid": msg_id}
    if body.get("quote"):
        user_event["quote"] = str(body["quote"])
    if kind == "event":
        user_event["event"] = payload["event"]["eventtype"]
    _record(s.redis, chat, user_event)
    started = time.monotonic()
    replies = []
    for attempt in range(1 + retries):
        status, reply = _call(base, s.settings, payload)
        replies.append(_record_reply(s.redis, chat, status, reply, userid=user, attempt=attempt))
    first = replies[0]
    stream_id = first.get("stream_id", "")
    if first["kind"] == "stream" and not first["finish"] and stream_id:
        thread = threading.Thread(
            target=_refresh_loop,
            args=(base, s.settings, s.redis, chat, chat_id, user, stream_id, refreshes, started),
            name=f"sandbox-wecom-{stream_id[:8]}",
            daemon=True,
        )
        thread.start()
    return jsonify(
        chat=chat, msgid=msg_id, stream_id=stream_id, replies=replies, response_url=response_url
    )


@bp.post("/response")
def response():  # noqa: ANN201
    """A response_url: one Markdown message per code, within an hour, recorded in its chat."""
    s = services()
    code = request.args.get("response_code", "")
    ref_key = key("sandbox", "wecom", "response", code)
    ref = s.redis.hgetall(ref_key) if code else {}
    if not ref:
        return jsonify(errcode=40058, errmsg="invalid or expired response_code")
    body = _body()
    markdown = body.get("markdown") if body else None
    if not body or body.get("msgtype") != "markdown" or not isinstance(markdown, dict):
        return jsonify(errcode=40008, errmsg="msgtype must be markdown")
    content = markdown.get("content")
    if not isinstance(content, str) or not content:
        return jsonify(errcode=44003, errmsg="empty content")
    if utf8_len(content) > CONTENT_LIMIT:
        return jsonify(errcode=45002, errmsg="content size out of limit")
    if not s.redis.hsetnx(ref_key, "used", f"{time.time():.3f}"):
        return jsonify(errcode=40058, errmsg="response_code already used")
    _record(
        s.redis,
        ref["chat"],
        {
            "kind": "response_url",
            "userid": ref["userid"],
            "msgid": ref["msgid"],
            "content": content,
        },
    )
    return jsonify(errcode=0, errmsg="ok")


@bp.post("/verify")
def verify():  # noqa: ANN201
    """Check the robot's callback URL as WeCom does when the URL is saved in the admin console."""
    s = services()
    if not (s.settings.wecom_bot_token and s.settings.wecom_bot_aes_key):
        return _bad("WECOM_BOT_TOKEN and WECOM_BOT_AES_KEY must be set")
    params, plain = url_check(s.settings.wecom_bot_token, s.settings.wecom_bot_aes_key)
    try:
        res = requests.get(f"{request.host_url.rstrip('/')}/wecom", params=params, timeout=10)
    except requests.RequestException as exc:
        return jsonify(ok=False, status=0, error=type(exc).__name__)
    return jsonify(ok=res.status_code == 200 and res.text == plain, status=res.status_code)


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


@bp.get("/chat")
def chat():  # noqa: ANN201
    """Everything a chat has seen: `events` (oldest first) and the folded `messages`."""
    chat_id = request.args.get("chatid", "")
    user = request.args.get("userid", "")
    if not (chat_id or user):
        return _bad("chatid (a group) or userid (a one-to-one chat) is required")
    name = chat_id or f"single:{user}"
    events = [json.loads(r) for r in services().redis.lrange(_chat_key(name), 0, -1)]
    return jsonify(chat=name, events=events, messages=fold(events))
