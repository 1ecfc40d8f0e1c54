"""Routes of the fake WeChat API under /sandbox/wechat/ (demo and test mode only).

Each route parses the request, calls one function of `bot.channels.wechat.sandbox` (where the
rules live: tokens, the 48-hour window and its 5 sends, the error codes, injected failures, the
outbox) and answers JSON. `POST /sandbox/wechat/user` plays WeChat's server for one user message.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from bot.channels.wechat import sandbox
from webhooks.services import services

bp = Blueprint("sandbox", __name__, url_prefix="/sandbox/wechat")


def _json(empty: str = "null") -> Any:
    """The request's JSON body (`empty` when there is none), or None when it is unreadable."""
    try:
        return json.loads(request.get_data().decode("utf-8") or empty)
    except (UnicodeDecodeError, ValueError):
        return None


def _answer(answer: sandbox.Answer) -> ResponseReturnValue:
    errcode, errmsg = answer
    return jsonify(errcode=errcode, errmsg=errmsg)


@bp.errorhandler(sandbox.HTTPFailure)
def _failed(exc: sandbox.HTTPFailure) -> ResponseReturnValue:
    return jsonify(error="injected failure"), exc.status


@bp.errorhandler(sandbox.Refused)
def _refused(exc: sandbox.Refused) -> ResponseReturnValue:
    return jsonify(error=str(exc)), 400


@bp.get("/cgi-bin/token")
def token() -> ResponseReturnValue:
    """Issue an access token for the configured account; the previous one stops working."""
    s = services()
    ip = request.remote_addr or "0.0.0.0"
    return jsonify(sandbox.issue_token(s.settings, s.redis, request.args, ip))


@bp.post("/cgi-bin/message/custom/send")
def custom_send() -> ResponseReturnValue:
    """Customer-service message: text only here, recorded in the user's outbox."""
    s = services()
    token = request.args.get("access_token")
    return _answer(sandbox.send_custom(s.settings, s.redis, token, _json(), path=request.path))


@bp.post("/cgi-bin/message/custom/typing")
def custom_typing() -> ResponseReturnValue:
    """Typing indicator: accepted and recorded."""
    s = services()
    token = request.args.get("access_token")
    return _answer(sandbox.typing(s.settings, s.redis, token, _json(), path=request.path))


@bp.post("/faults")
def faults() -> ResponseReturnValue:
    """Plan failures for the next API calls: a JSON list of {status|errcode|delay[, on]}."""
    return jsonify(planned=sandbox.plan_faults(services().redis, _json(empty="[]")))


@bp.get("/faults")
def faults_seen() -> ResponseReturnValue:
    """The failures still planned and those applied so far (with the path and time of each)."""
    return jsonify(sandbox.faults(services().redis))


@bp.post("/ip-whitelist")
def ip_whitelist() -> ResponseReturnValue:
    """Take this server off (`{"listed": false}`) or back on the account's IP whitelist."""
    return jsonify(listed=sandbox.set_ip_listed(services().redis, _json()))


@bp.post("/account")
def account() -> ResponseReturnValue:
    """Switch the sandbox account: {"verified": false} makes the API answer 48001."""
    s = services()
    return jsonify(verified=sandbox.set_verified(s.settings, s.redis, _json()))


@bp.post("/engine")
def engine_delay() -> ResponseReturnValue:
    """Slow every answer down on purpose: {"delay": seconds} (0 to stop)."""
    return jsonify(delay=sandbox.set_engine_delay(services().redis, _json()))


@bp.post("/window")
def window() -> ResponseReturnValue:
    """Open a user's customer-service window as a user message would, without forwarding one."""
    s = services()
    sandbox.open_window_for(s.settings, s.redis, _json())
    return jsonify(opened=True)


@bp.post("/user")
def user_message() -> ResponseReturnValue:
    """Act as WeChat's server for one user message and return what the user sees.

    Body: {"user", "content", "account": optional, "webhook": URL (default: this server's
    /wechat)}.
    """
    s = services()
    webhook = request.host_url.rstrip("/") + "/wechat"
    return jsonify(sandbox.user_says(s.settings, s.redis, _json(), webhook))


@bp.get("/outbox")
def outbox() -> ResponseReturnValue:
    """What the user has received so far, oldest first."""
    return jsonify(sandbox.outbox(services().redis, request.args.get("touser", "")))
