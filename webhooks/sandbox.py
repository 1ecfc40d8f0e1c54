"""A fake WeChat API under /sandbox/wechat/ (demo and test mode only).

It checks what WeChat checks — the AppID/AppSecret pair, the access token (a new one
invalidates the old), the JSON shape, the content size — answers with WeChat's error codes,
and records what was sent so tests, the CLI and the console can read the user's screen.
State lives in Redis so every web process sees the same account.
"""

from __future__ import annotations

import json
import secrets
import time

from flask import Blueprint, jsonify, request

from bot.store import key
from webhooks.app import services

bp = Blueprint("sandbox", __name__, url_prefix="/sandbox/wechat")

TOKEN_TTL = 7200
CONTENT_LIMIT = 2048  # bytes of one customer-service text


def _err(code: int, message: str):  # noqa: ANN202
    return jsonify(errcode=code, errmsg=message)


def _token_key(appid: str) -> str:
    return key("sandbox", "token", appid)


@bp.get("/cgi-bin/token")
def token():  # noqa: ANN201
    """Issue an access token for the configured account; the previous one stops working."""
    s = services()
    args = request.args
    if args.get("grant_type") != "client_credential":
        return _err(40002, "invalid grant_type")
    if s.redis.get(key("sandbox", "ip-unlisted")):
        ip = request.remote_addr or "0.0.0.0"
        return _err(40164, f"invalid ip {ip} ipv6 ::ffff:{ip}, not in whitelist")
    if args.get("appid") != s.settings.wechat_app_id:
        return _err(40013, "invalid appid")
    if args.get("secret") != s.settings.wechat_app_secret:
        return _err(40125, "invalid appsecret")
    new = "SANDBOX_" + secrets.token_urlsafe(24)
    s.redis.set(_token_key(args["appid"]), new, ex=TOKEN_TTL)
    return jsonify(access_token=new, expires_in=TOKEN_TTL)


def _injected_fault():  # noqa: ANN202
    """The next planned failure, if a test or the console planned one (see `faults`)."""
    raw = services().redis.lpop(key("sandbox", "faults"))
    if raw is None:
        return None
    fault = json.loads(raw)
    if fault.get("delay"):
        time.sleep(float(fault["delay"]))
    if fault.get("status"):
        return jsonify(error="injected failure"), int(fault["status"])
    if fault.get("errcode"):
        return _err(int(fault["errcode"]), "injected failure")
    return None


def _check_token():  # noqa: ANN202
    if (fault := _injected_fault()) is not None:
        return fault
    s = services()
    given = request.args.get("access_token")
    if not given:
        return _err(41001, "access_token missing")
    current = s.redis.get(_token_key(s.settings.wechat_app_id))
    if given != current:
        return _err(40001, "invalid credential, access_token is invalid or not latest")
    return None


def _json_body() -> dict | None:
    try:
        body = json.loads(request.get_data().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return body if isinstance(body, dict) else None


@bp.post("/cgi-bin/message/custom/send")
def custom_send():  # noqa: ANN201
    """Customer-service message: text only here, recorded in the user's outbox."""
    if (failed := _check_token()) is not None:
        return failed
    body = _json_body()
    if body is None:
        return _err(47001, "data format error")
    touser, msgtype = body.get("touser"), body.get("msgtype")
    if not isinstance(touser, str) or not touser:
        return _err(40003, "invalid openid")
    if msgtype != "text":
        return _err(40008, "invalid message type")
    content = (
        (body.get("text") or {}).get("content") if isinstance(body.get("text"), dict) else None
    )
    if not isinstance(content, str) or not content:
        return _err(44003, "empty content")
    if len(content.encode("utf-8")) > CONTENT_LIMIT:
        return _err(45002, "content size out of limit")
    record = {"msgtype": "text", "content": content, "at": time.time()}
    services().redis.rpush(key("sandbox", "outbox", touser), json.dumps(record, ensure_ascii=False))
    return _err(0, "ok")


@bp.post("/cgi-bin/message/custom/typing")
def custom_typing():  # noqa: ANN201
    """Typing indicator: accepted and recorded."""
    if (failed := _check_token()) is not None:
        return failed
    body = _json_body()
    if body is None:
        return _err(47001, "data format error")
    if body.get("command") not in ("Typing", "CancelTyping") or not body.get("touser"):
        return _err(40001, "invalid command or touser")
    record = {"command": body["command"], "at": time.time()}
    services().redis.rpush(key("sandbox", "typing", body["touser"]), json.dumps(record))
    return _err(0, "ok")


@bp.post("/faults")
def faults():  # noqa: ANN201
    """Plan failures for the next API calls: a JSON list of {status|errcode|delay}."""
    plan = _json_body_list()
    if plan is None:
        return jsonify(error="expected a JSON list of {status, errcode, delay}"), 400
    client = services().redis
    client.delete(key("sandbox", "faults"))
    if plan:
        client.rpush(key("sandbox", "faults"), *(json.dumps(f) for f in plan))
    return jsonify(planned=len(plan))


def _json_body_list() -> list | None:
    try:
        body = json.loads(request.get_data().decode("utf-8") or "[]")
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, list) or not all(isinstance(f, dict) for f in body):
        return None
    return body


@bp.post("/ip-whitelist")
def ip_whitelist():  # noqa: ANN201
    """Take this server off (`{"listed": false}`) or back on the account's IP whitelist."""
    body = _json_body()
    if body is None or not isinstance(body.get("listed"), bool):
        return jsonify(error='expected {"listed": true|false}'), 400
    flag = key("sandbox", "ip-unlisted")
    if body["listed"]:
        services().redis.delete(flag)
    else:
        services().redis.set(flag, "1")
    return jsonify(listed=body["listed"])


@bp.get("/outbox")
def outbox():  # noqa: ANN201
    """What the user has received so far, oldest first."""
    touser = request.args.get("touser", "")
    if not touser:
        return jsonify(error="touser is required"), 400
    raw = services().redis.lrange(key("sandbox", "outbox", touser), 0, -1)
    return jsonify([json.loads(r) for r in raw])
