"""The console's WeCom robot simulator: the console's front on the fake WeCom, for any URL.

`simulate` builds the encrypted, signed callback that a group member's @mention (or a one-to-one
message) makes, with the protocol's client side in `bot.channels.wecom.protocol`;
`bot.channels.wechat.simulator.send` posts it like the platform (a try slower than
WECHAT_PLATFORM_TIMEOUT is abandoned and the same msgid sent again) and `judge` reads the sealed
reply as WeCom would, in plain words. The rest is the one fake WeCom's
(`bot.channels.wecom.sandbox`), shared with the `/sandbox/wecom` routes: while the reply is an
unfinished stream its refresh loop keeps sending stream-refresh callbacks, and the one-use
response_url each message carries is served by the console (`sandbox.accept_response`), so an
answer that outlives its stream is seen arriving the late way too.

What the chat shows is recorded in Redis per simulation, so any web process can serve the page:
`transcript` folds it into what the group sees — the stream's latest text split into the
collapsible reasoning, the quoted question and the answer, how it grew refresh by refresh, and
the message posted to response_url.
"""

from __future__ import annotations

import re
import time
from typing import Any

import redis
import requests

from bot.channels.wechat import simulator
from bot.channels.wecom import sandbox
from bot.channels.wecom.protocol import (
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

DEFAULT_GROUP = "console_group"
BOT_ID = "AIBOT_CONSOLE"

_THINK = re.compile(r"^<think>(.*?)</think>\s*", re.DOTALL)
_ASKER = re.compile(r"^> \*\*@(?P<asker>[^*]*)\*\*: (?P<question>[^\n]*)\n\n")


def chat_log(sim_id: str) -> sandbox.ChatLog:
    """Where one simulated message's chat is kept (as long as the simulation)."""
    return sandbox.ChatLog(
        key("sim", "wecom", sim_id, "events"), key("sim", "wecom", sim_id, "loop")
    )


def record(client: redis.Redis, sim_id: str, event: dict[str, Any]) -> None:
    """Append one thing the chat of simulation `sim_id` showed."""
    chat_log(sim_id).record(client, event)


def _as_typed(
    settings: Settings, spec: simulator.SimChannel, chat_id: str, text: str
) -> tuple[str, str]:
    """The chat (a group's id, or "" one to one) and the text as its member types it."""
    if not spec.group:
        return "", text
    return chat_id or DEFAULT_GROUP, sandbox.mention(text, settings)


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
    response_url, code = sandbox.new_response_url(sink)
    out = build(settings, channel, user, text, chat_id=chat_id, response_url=response_url)
    chat_id, typed = _as_typed(settings, simulator.CHANNELS[channel], chat_id, text)
    chat = chat_log(sim_id)
    sandbox.open_response_url(client, code, chat, userid=user, msgid=out.msg_id)
    chat.record(client, {"kind": "user", "userid": user, "text": typed, "msgid": out.msg_id})
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
        first = sandbox.reply_event(200, sim.reply or {}, userid=user, attempt=len(sim.attempts))
        chat.record(client, first)
    else:
        last = sim.attempts[-1] if sim.attempts else None
        status = last.status if last else None
        chat.record(client, {"kind": "error", "status": status, "body": sim.verdict})
    simulator.save(client, sim)
    stream = (sim.reply or {}).get("stream") or {}
    if sim.stream_id and not stream.get("finish"):
        shown_first = str(stream.get("content", ""))
        followed = sandbox.Stream(url, user, chat_id, sim.stream_id, BOT_ID, started, shown_first)
        sandbox.follow(
            settings,
            client,
            chat,
            followed,
            timeout=settings.wechat_platform_timeout,
            limit=refreshes,
            http=http,
        )
    else:
        chat.set_loop(client, state="none", refreshes=0, ended_at=f"{time.time():.3f}")
    return sim


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
    chat = chat_log(sim_id)
    events, loop = chat.events(client), chat.loop(client)
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
    return sim is not None and str(sim.get("channel", "")).startswith("wecom")
