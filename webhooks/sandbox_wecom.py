"""Routes of the fake WeCom under /sandbox/wecom/ (demo and test mode only).

The fake WeCom itself — callbacks, the stream-refresh loop, response_url, the chat record — is
`bot.channels.wecom.sandbox`, shared with the console's simulator; each route here parses the
request, calls one of its functions and answers JSON. `POST /sandbox/wecom/send` makes the
callback a chat message would make to this server's `/wecom` (its stream then refreshed in the
background), `GET /sandbox/wecom/chat?chatid=…` (or `?userid=…`) shows what the chat saw,
`POST /sandbox/wecom/response` is each message's one-use response_url and
`POST /sandbox/wecom/verify` checks `/wecom` as WeCom does when the URL is saved.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from bot.channels.wecom import sandbox
from webhooks.services import services

bp = Blueprint("sandbox_wecom", __name__, url_prefix="/sandbox/wecom")


def _json() -> Any:
    """The request's JSON body ({} when there is none), or None when it is unreadable."""
    try:
        return json.loads(request.get_data().decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError):
        return None


def _webhook() -> str:
    return request.host_url.rstrip("/") + "/wecom"


@bp.errorhandler(sandbox.Refused)
def _refused(exc: sandbox.Refused) -> ResponseReturnValue:
    return jsonify(error=str(exc)), 400


@bp.post("/send")
def send() -> ResponseReturnValue:
    """Say something in a chat as WeCom would deliver it; returns the robot's first replies.

    JSON: text, userid, chatid, msgtype, eventtype, msgid, quote, mention, retries, refreshes
    (see `bot.channels.wecom.sandbox.send`).
    """
    s = services()
    responses = url_for("sandbox_wecom.response", _external=True)
    return jsonify(
        sandbox.send(s.settings, s.redis, _json(), webhook=_webhook(), responses=responses)
    )


@bp.post("/response")
def response() -> ResponseReturnValue:
    """A response_url: one Markdown message per code, within an hour, recorded in its chat."""
    code = request.args.get("response_code", "")
    errcode, errmsg = sandbox.accept_response(services().redis, code, _json())
    return jsonify(errcode=errcode, errmsg=errmsg)


@bp.post("/verify")
def verify() -> ResponseReturnValue:
    """Check the robot's callback URL as WeCom does when the URL is saved in the admin console."""
    return jsonify(sandbox.verify(services().settings, _webhook()))


@bp.get("/chat")
def chat() -> ResponseReturnValue:
    """Everything a chat has seen: `events` (oldest first) and the folded `messages`."""
    chat_id, user = request.args.get("chatid", ""), request.args.get("userid", "")
    return jsonify(sandbox.chat_seen(services().redis, chat_id, user))
