"""WeCom long-connection frames: commands, the frame shapes, and what the errcodes mean.

Frames are JSON `{cmd, headers: {req_id}, body}` both ways; an ack has no `cmd`, only
`{headers: {req_id}, errcode, errmsg}` for the frame with that `req_id` (as in WeCom's own SDK,
`wecom-aibot-python-sdk`, `aibot/types.py` WsCmd).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

DEFAULT_URL = "wss://openws.work.weixin.qq.com"

SUBSCRIBE = "aibot_subscribe"
PING = "ping"
RESPOND = "aibot_respond_msg"
RESPOND_WELCOME = "aibot_respond_welcome_msg"
RESPOND_UPDATE = "aibot_respond_update_msg"
SEND_MSG = "aibot_send_msg"
MSG_CALLBACK = "aibot_msg_callback"
EVENT_CALLBACK = "aibot_event_callback"

ERR_OK = 0
ERR_BAD_SECRET = 40001  # the sandbox's code for a wrong bot_id/secret pair
ERR_BAD_FRAME = 40058  # the sandbox's code for a frame it cannot take (bad body, unknown req_id)
ERR_STREAM_EXPIRED = 846608  # "stream message update expired": past the stream's time limit
ERR_NOT_SUBSCRIBED = 846609  # the sandbox's code for a frame before a successful subscribe

ERRCODE_WORDS = {
    ERR_OK: "ok",
    ERR_BAD_SECRET: "the bot id or secret is wrong (check WECOM_BOT_ID / WECOM_BOT_SECRET)",
    ERR_BAD_FRAME: "WeCom refused the frame as malformed",
    ERR_STREAM_EXPIRED: "the stream's time limit passed (stream message update expired)",
    ERR_NOT_SUBSCRIBED: "the connection is not subscribed",
}


def explain(errcode: int) -> str:
    """An errcode in words, for logs and the doctor."""
    return ERRCODE_WORDS.get(errcode, f"errcode {errcode}")


def new_req_id(prefix: str) -> str:
    """A request id shaped like the SDK's: `{prefix}_{ms}_{random}`."""
    return f"{prefix}_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


def frame(cmd: str, body: dict[str, Any] | None = None, req_id: str = "") -> dict[str, Any]:
    """One frame; a fresh req_id unless the reply must carry a callback's."""
    out: dict[str, Any] = {"cmd": cmd, "headers": {"req_id": req_id or new_req_id(cmd)}}
    if body is not None:
        out["body"] = body
    return out


def ack(req_id: str, errcode: int = ERR_OK, errmsg: str = "ok") -> dict[str, Any]:
    """The answer to a frame (the server's side)."""
    return {"headers": {"req_id": req_id}, "errcode": errcode, "errmsg": errmsg}


def req_id_of(data: dict[str, Any]) -> str:
    """A frame's req_id ('' when it has none)."""
    headers = data.get("headers")
    value = headers.get("req_id", "") if isinstance(headers, dict) else ""
    return value if isinstance(value, str) else ""


def encode(data: dict[str, Any]) -> str:
    """Frame → wire text (UTF-8 JSON, non-ASCII kept as is)."""
    return json.dumps(data, ensure_ascii=False)


def decode(raw: str | bytes) -> dict[str, Any]:
    """Wire text → frame; ValueError if it is not a JSON object."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a frame must be a JSON object")
    return data


def stream_body(stream_id: str, content: str, finish: bool) -> dict[str, Any]:
    """The body of an aibot_respond_msg stream frame (content is the whole text so far)."""
    return {"msgtype": "stream", "stream": {"id": stream_id, "finish": finish, "content": content}}


def markdown_body(chat_id: str, content: str) -> dict[str, Any]:
    """The body of an aibot_send_msg markdown push (chat_id: the group, or the person's userid)."""
    return {"chatid": chat_id, "msgtype": "markdown", "markdown": {"content": content}}
