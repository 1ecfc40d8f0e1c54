"""The console's WeCom robot simulator: WeCom's side of `/wecom`, for a local or a public URL.

`simulate` builds the encrypted, signed callback that a group member's @mention (or a one-to-one
message) makes, with the protocol's client side in `bot.channels.wecom.protocol`; `bot.channels.wechat.simulator.send`
posts it like the platform (a try slower than WECHAT_PLATFORM_TIMEOUT is abandoned and the same
msgid sent again) and this module reads the sealed reply as WeCom would. While the reply is an
unfinished stream a background thread keeps sending stream-refresh callbacks, as WeCom does,
every WECOM_SANDBOX_REFRESH_INTERVAL seconds until `finish` (or WeCom's 6 minutes). Each
message carries a one-use response_url that the console itself serves (`accept_response`), so
an answer that outlives its stream is seen arriving the late way too.

What the chat shows is recorded in Redis per simulation, so any web process can serve the page:
`transcript` folds it into what the group sees — the stream's latest text split into the
collapsible reasoning, the quoted question and the answer, how it grew refresh by refresh, and
the message posted to response_url.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import requests

from bot.channels.wechat import simulator
from bot.channels.wecom.protocol import (
    CONTENT_LIMIT,
    ProtocolError,
    encrypt,
    message_payload,
    new_msgid,
    read_reply,
    sign_callback,
)
from bot.channels.wecom.streams import HANDOVER_NOTE, THINKING_TEXT
from bot.core.contracts import new_id
from bot.core.settings import Settings
from bot.core.store import key
from bot.text.formatting import utf8_len

log = logging.getLogger(__name__)

WECOM_STREAM_LIMIT = 360.0  # WeCom stops refreshing a stream 6 minutes after the message
RESPONSE_URL_TTL = 3600  # a response_url works once, for an hour
DEFAULT_GROUP = "console_group"
DEFAULT_BOT_NAME = "MiMo"  # mentioned in groups when WECOM_BOT_NAME is empty
BOT_ID = "AIBOT_CONSOLE"

_THINK = re.compile(r"^<think>(.*?)</think>\s*", re.DOTALL)
_ASKER = re.compile(r"^> \*\*@(?P<asker>[^*]*)\*\*: (?P<question>[^\n]*)\n\n")


def _events_key(sim_id: str) -> str:
    return key("sim", "wecom", sim_id, "events")


def _loop_key(sim_id: str) -> str:
    return key("sim", "wecom", sim_id, "loop")


def _response_key(code: str) -> str:
    return key("sim", "wecom", "response", code)


def mention(text: str, settings: Settings) -> str:
    """The text as a group member types it: the robot's @mention first (unless already there)."""
    name = settings.wecom_bot_name or DEFAULT_BOT_NAME
    if text.lstrip().startswith(f"@{name}"):
        return text
    return f"@{name} {text}"


def _as_typed(
    settings: Settings, spec: simulator.SimChannel, chat_id: str, text: str
) -> tuple[str, str]:
    """The chat (a group's id, or "" one to one) and the text as its member types it."""
    if not spec.group:
        return "", text
    return chat_id or DEFAULT_GROUP, mention(text, settings)


def build(
    settings: Settings,
    channel: str,
    user: str,
    text: str,
    *,
    chat_id: str = "",
    response_url: str = "",
) -> simulator.Outgoing:
    """The callback WeCom makes for `user`'s message on `channel`, encrypted and signed per try."""
    spec = simulator.CHANNELS.get(channel)
    if spec is None or not channel.startswith("wecom"):
        raise simulator.SimulationError(f"not a WeCom channel: {channel!r}")
    if not user or not text:
        raise simulator.SimulationError("a user id and a message are needed")
    token, aes_key = settings.wecom_bot_token, settings.wecom_bot_aes_key
    if not (token and aes_key):
        raise simulator.SimulationError(
            "WECOM_BOT_TOKEN and WECOM_BOT_AES_KEY are not set: the console cannot sign or "
            "encrypt as WeCom does (use the robot's Token and EncodingAESKey)"
        )
    try:
        encrypt(aes_key, "")
    except ValueError as exc:
        raise simulator.SimulationError(f"WECOM_BOT_AES_KEY is malformed: {exc}") from exc
    chat_id, content = _as_typed(settings, spec, chat_id, text)
    payload = message_payload(
        user,
        content=content,
        chat_id=chat_id,
        bot_id=BOT_ID,
        msg_id=new_msgid(),
        response_url=response_url,
    )

    def signed() -> tuple[dict[str, str], str]:
        callback = sign_callback(token, aes_key, payload)
        return callback.params, callback.body

    def open_reply(body: str) -> dict[str, Any]:
        return read_reply(body, token=token, aes_key=aes_key)

    return simulator.Outgoing(
        channel,
        user,
        payload["msgid"],
        signed,
        open_reply,
        path="/wecom",
        content_type="application/json",
        judge=judge,
    )


def judge(
    sim: simulator.Simulation, out: simulator.Outgoing, res: requests.Response | None
) -> None:
    """What WeCom makes of the webhook's last answer, in plain words."""
    if res is None:
        if sim.attempts and sim.attempts[-1].outcome == "unreachable":
            sim.verdict = f"cannot reach {sim.url} ({sim.attempts[-1].body})"
        else:
            sim.verdict = (
                f"no answer in time on any of {len(sim.attempts)} tries: WeCom gives up and "
                "the chat shows no reply"
            )
        return
    status, body = res.status_code, res.text.strip()[:120]
    if status == 403:
        sim.verdict = (
            "the webhook refused the signature: its WECOM_BOT_TOKEN differs from this console's, "
            "or the clocks are more than WECHAT_TIMESTAMP_WINDOW apart"
        )
    elif status == 400:
        sim.verdict = (
            f"the webhook refused the callback ({body}): check WECOM_BOT_AES_KEY on both sides"
        )
    elif status == 404:
        sim.verdict = (
            f"not found ({body}): the robot is not configured on that server (WECOM_BOT_TOKEN, "
            "WECOM_BOT_AES_KEY), or the path is not its /wecom"
        )
    elif status in (301, 302, 303, 307, 308):
        sim.verdict = f"the URL redirects ({status}); WeCom does not follow redirects"
    elif status != 200:
        sim.verdict = f"the webhook answered HTTP {status}: {body}"
    else:
        try:
            reply = out.open_reply(res.text)
        except ProtocolError as exc:
            sim.reply_error = f"WeCom could not read the reply: {exc.reason}"
            sim.verdict = sim.reply_error
            return
        sim.ok, sim.reply = True, reply
        ms = f"{sim.attempts[-1].seconds * 1000:.0f} ms"
        stream = reply.get("stream") if reply.get("msgtype") == "stream" else None
        if not reply:
            sim.verdict = f"empty reply in {ms}: the chat shows nothing"
        elif isinstance(stream, dict):
            sim.stream_id = str(stream.get("id", ""))
            if stream.get("finish"):
                sim.verdict = f"answered at once in {ms} (a finished stream)"
            else:
                sim.verdict = f"stream started in {ms}; WeCom now refreshes it until it finishes"
        else:
            sim.verdict = f"{reply.get('msgtype', '?')} reply in {ms}"


# --- the chat record ---


def record(client: redis.Redis, sim_id: str, event: dict[str, Any]) -> None:
    """Append one thing the chat showed (kept as long as the simulation)."""
    event = {"at": round(time.time(), 3), **event}
    with client.pipeline(transaction=False) as pipe:
        pipe.rpush(_events_key(sim_id), json.dumps(event, ensure_ascii=False))
        pipe.expire(_events_key(sim_id), simulator.SIM_TTL)
        pipe.execute()


def _reply_event(status: int | None, reply: dict | str, **context: Any) -> dict[str, Any]:
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


def _shown_key(event: dict[str, Any]) -> str:
    """What the chat shows for a reply, whichever callback brought it."""
    return json.dumps(
        {k: v for k, v in event.items() if k not in ("refresh", "attempt")}, sort_keys=True
    )


def _set_loop(client: redis.Redis, sim_id: str, **fields: Any) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(_loop_key(sim_id), mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(_loop_key(sim_id), simulator.SIM_TTL)
        pipe.execute()


def refresh_once(
    settings: Settings,
    url: str,
    user: str,
    chat_id: str,
    stream_id: str,
    *,
    timeout: float,
    http: Any = requests,
) -> tuple[int | None, dict | str]:
    """One stream-refresh callback as WeCom sends it: (HTTP status, decrypted reply or error)."""
    payload = message_payload(user, kind="stream", chat_id=chat_id, stream_id=stream_id)
    payload["aibotid"] = BOT_ID
    signed = sign_callback(settings.wecom_bot_token, settings.wecom_bot_aes_key, payload)
    try:
        res = http.post(
            url,
            params=signed.params,
            data=signed.body.encode(),
            headers={"Content-Type": "application/json"},
            timeout=(min(3.0, timeout), timeout),
            allow_redirects=False,
        )
    except requests.Timeout:
        return None, "timeout"
    except requests.RequestException as exc:
        return None, type(exc).__name__
    if res.status_code != 200:
        return res.status_code, res.text[:300]
    try:
        return 200, read_reply(
            res.text, token=settings.wecom_bot_token, aes_key=settings.wecom_bot_aes_key
        )
    except ProtocolError as exc:
        return 502, exc.reason


def refresh_loop(
    settings: Settings,
    client: redis.Redis,
    sim_id: str,
    url: str,
    *,
    user: str,
    chat_id: str,
    stream_id: str,
    started: float,
    limit: int | None = None,
    shown_first: str = "",
    http: Any = requests,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Refresh a stream as WeCom does until it finishes, fails, WeCom's 6 minutes pass or
    `limit` refreshes were made; records each version that differs from the one before (the
    first is `shown_first`). Returns how it ended."""
    interval = max(0.05, settings.wecom_sandbox_refresh_interval)
    first = {"kind": "stream", "stream_id": stream_id, "content": shown_first, "finish": False}
    count, last = 0, _shown_key(first)
    while True:
        if limit is not None and count >= limit:
            end = "stopped"
            break
        sleep(interval)
        if time.monotonic() - started > WECOM_STREAM_LIMIT:
            end = "expired"
            break
        count += 1
        status, reply = refresh_once(
            settings,
            url,
            user,
            chat_id,
            stream_id,
            timeout=settings.wechat_platform_timeout,
            http=http,
        )
        _set_loop(client, sim_id, refreshes=count, refreshed_at=f"{time.time():.3f}")
        event = _reply_event(status, reply, refresh=count)
        shown = _shown_key(event)
        finished = event["kind"] != "stream" or event["finish"]
        if shown != last or finished:  # the chat shows the same text: record changes only
            record(client, sim_id, event)
            last = shown
        if finished:
            end = "finished" if event["kind"] != "error" else "error"
            break
    _set_loop(client, sim_id, state=end, ended_at=f"{time.time():.3f}")
    if end in ("stopped", "expired"):
        record(client, sim_id, {"kind": f"refresh_{end}", "refresh": count})
    return end


def _follow(settings: Settings, client: redis.Redis, sim_id: str, url: str, **kwargs: Any) -> None:
    """The refresh loop in its thread: whatever happens is recorded, never raised."""
    try:
        refresh_loop(settings, client, sim_id, url, **kwargs)
    except Exception as exc:  # a thread has no caller: the chat record tells the operator
        log.exception("wecom simulation %s: the refresh loop failed", sim_id)
        try:
            record(client, sim_id, {"kind": "error", "status": None, "body": type(exc).__name__})
            _set_loop(client, sim_id, state="error", ended_at=f"{time.time():.3f}")
        except redis.RedisError:
            pass


def simulate(
    settings: Settings,
    client: redis.Redis,
    channel: str,
    user: str,
    text: str,
    *,
    url: str,
    sink: str,
    chat_id: str = "",
    refreshes: int | None = None,
    http: Any = requests,
) -> simulator.Simulation:
    """Send one WeCom message to `url` as WeCom does and keep refreshing its stream in the
    background; `sink` is the console's response_url endpoint (a one-use code is added)."""
    simulator.check_url(url)
    simulator.check_url(sink)
    sim_id = new_id()
    code = secrets.token_urlsafe(24)
    out = build(
        settings,
        channel,
        user,
        text,
        chat_id=chat_id,
        response_url=f"{sink}?response_code={code}",
    )
    chat_id, shown = _as_typed(settings, simulator.CHANNELS[channel], chat_id, text)
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(_response_key(code), mapping={"sim_id": sim_id, "created": f"{time.time():.3f}"})
        pipe.expire(_response_key(code), RESPONSE_URL_TTL)
        pipe.execute()
    record(client, sim_id, {"kind": "user", "userid": user, "text": shown, "msgid": out.msg_id})
    started = time.monotonic()
    sim = simulator.send(
        out,
        url,
        text,
        retry_after=settings.wechat_platform_timeout,
        attempts=settings.wechat_attempts,
        http=http,
    )
    sim.sim_id, sim.chat_id = sim_id, chat_id
    if sim.ok:
        sim.job_id = simulator.find_job(client, "wecom", user, out.msg_id)
        record(client, sim_id, _reply_event(200, sim.reply or {}, attempt=len(sim.attempts)))
    else:
        last = sim.attempts[-1] if sim.attempts else None
        record(
            client,
            sim_id,
            {"kind": "error", "status": last.status if last else None, "body": sim.verdict},
        )
    simulator.save(client, sim)
    stream = (sim.reply or {}).get("stream") or {}
    if sim.stream_id and not stream.get("finish"):
        _set_loop(client, sim_id, state="running", refreshes=0)
        threading.Thread(
            target=_follow,
            args=(settings, client, sim_id, url),
            kwargs={
                "user": user,
                "chat_id": chat_id,
                "stream_id": sim.stream_id,
                "started": started,
                "limit": refreshes,
                "shown_first": str(stream.get("content", "")),
                "http": http,
            },
            name=f"sim-wecom-{sim_id[:8]}",
            daemon=True,
        ).start()
    else:
        _set_loop(client, sim_id, state="none", refreshes=0, ended_at=f"{time.time():.3f}")
    return sim


def accept_response(client: redis.Redis, code: str, body: Any) -> tuple[int, str]:
    """A POST to the console's response_url, checked as WeCom does: (errcode, errmsg)."""
    ref = client.hgetall(_response_key(code)) if code else {}
    if not ref:
        return 40058, "invalid or expired response_code"
    markdown = body.get("markdown") if isinstance(body, dict) else None
    if (
        not isinstance(body, dict)
        or body.get("msgtype") != "markdown"
        or not isinstance(markdown, dict)
    ):
        return 40008, "msgtype must be markdown"
    content = markdown.get("content")
    if not isinstance(content, str) or not content:
        return 44003, "empty content"
    if utf8_len(content) > CONTENT_LIMIT:
        return 45002, "content size out of limit"
    if not client.hsetnx(_response_key(code), "used", f"{time.time():.3f}"):
        return 40058, "response_code already used"
    record(client, ref["sim_id"], {"kind": "response_url", "content": content})
    return 0, "ok"


# --- what the group sees ---


def shown(content: str) -> dict[str, str]:
    """A stream's or a Markdown message's parts: reasoning, the asker and question, the answer."""
    reasoning, asker, question = "", "", ""
    if match := _THINK.match(content):
        reasoning, content = match.group(1).strip(), content[match.end() :]
    if match := _ASKER.match(content):
        asker, question = match.group("asker"), match.group("question")
        content = content[match.end() :]
    answer = "" if content.strip() == THINKING_TEXT else content
    return {"reasoning": reasoning, "asker": asker, "question": question, "answer": answer}


def transcript(client: redis.Redis, sim_id: str) -> dict[str, Any]:
    """The chat as the group saw this message: the stream's versions, the last one split into
    its parts, a response_url message, and how the refreshing ended."""
    events = [json.loads(e) for e in client.lrange(_events_key(sim_id), 0, -1)]
    loop = client.hgetall(_loop_key(sim_id))
    versions = [e for e in events if e["kind"] == "stream"]
    latest = versions[-1] if versions else None
    late = next((e for e in events if e["kind"] == "response_url"), None)
    stream = None
    if latest is not None:
        content = latest["content"]
        stream = {
            "id": latest["stream_id"],
            "content": content,
            "finish": latest["finish"],
            "handed_over": latest["finish"] and content.rstrip().endswith(HANDOVER_NOTE),
            "versions": [
                {
                    "at": v["at"],
                    "refresh": v.get("refresh", 0),
                    "chars": len(v["content"]),
                    "finish": v["finish"],
                }
                for v in versions
            ],
            **shown(content),
        }
    texts = [e["content"] for e in events if e["kind"] == "text"]
    return {
        "events": events,
        "stream": stream,
        "text": texts[-1] if texts else None,
        "response_url": {**late, **shown(late["content"])} if late else None,
        "errors": [e for e in events if e["kind"] == "error"],
        "refreshes": int(loop.get("refreshes", 0) or 0),
        "loop": loop.get("state", ""),  # running | finished | error | stopped | expired | none
        "loop_ended_at": float(loop["ended_at"]) if loop.get("ended_at") else None,
    }


def is_wecom(sim: dict[str, Any] | None) -> bool:
    """True for a saved WeCom simulation."""
    return bool(sim) and str(sim.get("channel", "")).startswith("wecom")
