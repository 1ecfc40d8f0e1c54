"""A fake WeChat API under /sandbox/wechat/ (demo and test mode only).

It checks what WeChat checks — the AppID/AppSecret pair, the access token (a new one
invalidates the old), the JSON shape, the content size, the account's customer-service
permission (48001 when switched to unverified), the user's 48-hour window (45015) and its
5 sends (45047) — answers with WeChat's error codes, and records what the user received
(passive replies and customer-service messages) so tests, the CLI and the console can read the
user's screen. `POST /sandbox/wechat/user` plays WeChat's server: it posts a user's message
to the webhook exactly as WeChat does, retries included.
State lives in Redis so every web process sees the same account.
"""

from __future__ import annotations

import json
import secrets
import time

from flask import Blueprint, jsonify, request

from bot.channels.wechat import simulator
from bot.core.store import key
from webhooks.services import services

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
    """The next planned failure, if a test or the console planned one (see `faults`).

    A fault with `"on": "send"` (or `"typing"`) waits for a call of that kind; others pass it.
    """
    raw = services().redis.lpop(key("sandbox", "faults"))
    if raw is None:
        return None
    fault = json.loads(raw)
    if fault.get("on") and not request.path.endswith("/" + fault["on"]):
        services().redis.lpush(key("sandbox", "faults"), raw)  # for the next call of its kind
        return None
    applied = {**fault, "path": request.path, "at": time.time()}
    services().redis.rpush(key("sandbox", "faults", "applied"), json.dumps(applied))
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
    if s.redis.hget(_account_key(), "verified") == "0":
        return _err(48001, "api unauthorized")
    return None


def _account_key() -> str:
    return key("sandbox", "account", services().settings.wechat_app_id)


def _window_key(user: str) -> str:
    return key("sandbox", "window", user)


def _open_window(user: str) -> None:
    client = services().redis
    client.hset(_window_key(user), mapping={"opened_at": f"{time.time():.3f}", "used": 0})
    client.expire(_window_key(user), services().settings.wechat_cs_window)


def _window_refusal(user: str, counts: bool):  # noqa: ANN202
    """45015 outside the user's 48-hour window, 45047 past its 5 sends (typing is free)."""
    s = services()
    state = s.redis.hgetall(_window_key(user))
    if not state or time.time() - float(state["opened_at"]) > s.settings.wechat_cs_window:
        return _err(45015, "response out of time limit or subscription is canceled")
    if counts:
        if int(state["used"]) >= s.settings.wechat_cs_quota:
            return _err(45047, "out of response count limit")
        s.redis.hincrby(_window_key(user), "used", 1)
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
    if (refused := _window_refusal(touser, counts=True)) is not None:
        return refused
    _record(touser, {"msgtype": "text", "content": content, "via": "customer_service"})
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
    if (refused := _window_refusal(body["touser"], counts=False)) is not None:
        return refused
    record = {"command": body["command"], "at": time.time()}
    services().redis.rpush(key("sandbox", "typing", body["touser"]), json.dumps(record))
    return _err(0, "ok")


@bp.post("/faults")
def faults():  # noqa: ANN201
    """Plan failures for the next API calls: a JSON list of {status|errcode|delay[, on]}."""
    plan = _json_body_list()
    if plan is None:
        return jsonify(error="expected a JSON list of {status, errcode, delay}"), 400
    client = services().redis
    client.delete(key("sandbox", "faults"), key("sandbox", "faults", "applied"))
    if plan:
        client.rpush(key("sandbox", "faults"), *(json.dumps(f) for f in plan))
    return jsonify(planned=len(plan))


@bp.get("/faults")
def faults_seen():  # noqa: ANN201
    """The failures still planned and those applied so far (with the path and time of each)."""
    client = services().redis
    planned = client.lrange(key("sandbox", "faults"), 0, -1)
    applied = client.lrange(key("sandbox", "faults", "applied"), 0, -1)
    return jsonify(
        planned=[json.loads(f) for f in planned], applied=[json.loads(f) for f in applied]
    )


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


@bp.post("/account")
def account():  # noqa: ANN201
    """Switch the sandbox account: {"verified": false} makes the API answer 48001."""
    body = _json_body() or {}
    verified = "0" if body.get("verified") is False else "1"
    services().redis.hset(_account_key(), "verified", verified)
    return jsonify(verified=verified == "1")


@bp.post("/engine")
def engine_delay():  # noqa: ANN201
    """Slow every answer down on purpose: {"delay": seconds} (0 to stop)."""
    body = _json_body() or {}
    try:
        delay = max(0.0, float(body.get("delay", 0)))
    except (TypeError, ValueError):
        return jsonify(error="delay must be a number of seconds"), 400
    services().redis.set(key("sandbox", "engine-delay"), delay)
    return jsonify(delay=delay)


@bp.post("/window")
def window():  # noqa: ANN201
    """Open a user's customer-service window as a user message would, without forwarding one."""
    user = (_json_body() or {}).get("user")
    if not isinstance(user, str) or not user:
        return jsonify(error="user is required"), 400
    _open_window(user)
    return jsonify(opened=True)


@bp.post("/user")
def user_message():  # noqa: ANN201
    """Act as WeChat's server for one user message: open the window, post it to the webhook
    (signed, encrypted in safe mode), retry as WeChat does, and return what the user sees.

    Body: {"user", "content", "account": optional, "webhook": URL (default: this server's
    /wechat)}. The platform side of the wire is the console simulator's (bot/channels/wechat/simulator.py).
    """
    body = _json_body() or {}
    user, content = body.get("user"), body.get("content", "")
    if not isinstance(user, str) or not user or not isinstance(content, str):
        return jsonify(error="user and content are required"), 400
    s = services().settings
    _open_window(user)
    channel = "wechat_aes" if s.wechat_aes_key else "wechat_plain"
    try:
        out = simulator.build(s, channel, user, content, body.get("account") or "gh_sandbox")
    except simulator.SimulationError as exc:
        return jsonify(error=str(exc)), 400
    webhook = body.get("webhook") or request.host_url.rstrip("/") + "/wechat"
    sim = simulator.send(
        out, webhook, content, retry_after=s.wechat_platform_timeout, attempts=s.wechat_attempts
    )
    attempts = [{"status": a.status, "ms": round(a.seconds * 1000, 1)} for a in sim.attempts]
    if sim.passive_reply:
        _record(user, {"msgtype": "text", "content": sim.passive_reply, "via": "passive"})
    if not sim.ok:
        # What WeChat shows when every try failed.
        failure = "该公众号提供的服务出现故障，请稍后再试"
        _record(user, {"msgtype": "system", "content": failure, "via": "wechat"})
    return jsonify(attempts=attempts, reply=sim.passive_reply or None, failed=not sim.ok)


def _record(user: str, record: dict) -> None:
    record["at"] = time.time()
    services().redis.rpush(key("sandbox", "outbox", user), json.dumps(record, ensure_ascii=False))


@bp.get("/outbox")
def outbox():  # noqa: ANN201
    """What the user has received so far, oldest first."""
    touser = request.args.get("touser", "")
    if not touser:
        return jsonify(error="touser is required"), 400
    raw = services().redis.lrange(key("sandbox", "outbox", touser), 0, -1)
    return jsonify([json.loads(r) for r in raw])
