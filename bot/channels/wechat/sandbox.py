"""The fake WeChat API's rules (demo and test mode only), as plain functions over Redis.

It checks what WeChat checks — the AppID/AppSecret pair, the access token (a new one
invalidates the old), the JSON shape, the content size, the account's customer-service
permission (48001 when switched to unverified), the user's 48-hour window (45015) and its
5 sends (45047) — answers with WeChat's error codes, and records what the user received
(passive replies and customer-service messages) so tests, the CLI and the console can read the
user's screen. `user_says` plays WeChat's server: it posts a user's message to the webhook
exactly as WeChat does, retries included (with `simulator`, the platform's side of the wire).
Tests and the console can plan failures of the next calls (`plan_faults`), take the server off
the IP whitelist, switch the account to unverified and slow the engine down.
State lives in Redis so every web process sees the same account; `webhooks/sandbox.py` only
routes HTTP to these functions.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

import redis

from bot.channels.wechat import simulator
from bot.core.contracts import IncomingMessage
from bot.core.settings import Settings
from bot.core.store import key
from bot.text.visible import visible

TOKEN_TTL = 7200
CONTENT_LIMIT = 2048  # bytes of one customer-service text
SEND_PATH = "/cgi-bin/message/custom/send"
TYPING_PATH = "/cgi-bin/message/custom/typing"
TYPING_COMMANDS = ("Typing", "CancelTyping")
# What WeChat shows the user when every try of a message failed.
SERVICE_FAILURE = "该公众号提供的服务出现故障，请稍后再试"
SANDBOX_ACCOUNT = "gh_sandbox"

Answer = tuple[int, str]  # WeChat's (errcode, errmsg)
OK: Answer = (0, "ok")


class HTTPFailure(Exception):
    """An injected server failure: the API answers this HTTP status instead of WeChat's JSON."""

    def __init__(self, status: int) -> None:
        super().__init__(f"injected HTTP {status}")
        self.status = status


class Refused(ValueError):
    """A request to the sandbox's own controls that it cannot act on (the route answers 400)."""


# --- Redis keys (the token, window and typing keys are read by tests as they are) ---


def _token_key(appid: str) -> str:
    return key("sandbox", "token", appid)


def _account_key(settings: Settings) -> str:
    return key("sandbox", "account", settings.wechat_app_id)


def _window_key(user: str) -> str:
    return key("sandbox", "window", user)


_FAULTS = key("sandbox", "faults")
_APPLIED = key("sandbox", "faults", "applied")
_IP_UNLISTED = key("sandbox", "ip-unlisted")
ENGINE_DELAY_KEY = key("sandbox", "engine-delay")  # bot.engine reads it per request


# --- the access token ---


def issue_token(
    settings: Settings, client: redis.Redis, args: Mapping[str, str], ip: str
) -> dict[str, Any]:
    """GET /cgi-bin/token: a new access token for the configured account (the previous one
    stops working), or WeChat's error for a wrong grant type, AppID, AppSecret or IP."""
    if args.get("grant_type") != "client_credential":
        return {"errcode": 40002, "errmsg": "invalid grant_type"}
    if client.get(_IP_UNLISTED):
        return {"errcode": 40164, "errmsg": f"invalid ip {ip} ipv6 ::ffff:{ip}, not in whitelist"}
    if args.get("appid") != settings.wechat_app_id:
        return {"errcode": 40013, "errmsg": "invalid appid"}
    if args.get("secret") != settings.wechat_app_secret:
        return {"errcode": 40125, "errmsg": "invalid appsecret"}
    new = "SANDBOX_" + secrets.token_urlsafe(24)
    client.set(_token_key(settings.wechat_app_id), new, ex=TOKEN_TTL)
    return {"access_token": new, "expires_in": TOKEN_TTL}


def check_token(settings: Settings, client: redis.Redis, token: str | None) -> Answer:
    """41001 without a token, 40001 for any but the latest, 48001 while unverified."""
    if not token:
        return 41001, "access_token missing"
    if token != client.get(_token_key(settings.wechat_app_id)):
        return 40001, "invalid credential, access_token is invalid or not latest"
    if client.hget(_account_key(settings), "verified") == "0":
        return 48001, "api unauthorized"
    return OK


# --- the user's 48-hour window and its 5 sends ---


def open_window(settings: Settings, client: redis.Redis, user: str) -> None:
    """The user wrote: their customer-service window opens (again) with no send used."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(_window_key(user), mapping={"opened_at": f"{time.time():.3f}", "used": 0})
        pipe.expire(_window_key(user), settings.wechat_cs_window)
        pipe.execute()


def user_wrote(settings: Settings, client: redis.Redis, message: IncomingMessage) -> None:
    """A verified message reached the webhook: as on WeChat, the sender's window opens."""
    if message.event != "unsubscribe":
        open_window(settings, client, message.user)


def window_refusal(settings: Settings, client: redis.Redis, user: str, counts: bool) -> Answer:
    """45015 outside the user's 48-hour window, 45047 past its 5 sends (typing is free);
    a counted send that passes uses one of them."""
    state = client.hgetall(_window_key(user))
    if not state or time.time() - float(state["opened_at"]) > settings.wechat_cs_window:
        return 45015, "response out of time limit or subscription is canceled"
    if counts:
        if int(state["used"]) >= settings.wechat_cs_quota:
            return 45047, "out of response count limit"
        client.hincrby(_window_key(user), "used", 1)
    return OK


# --- planned failures ---


def plan_faults(client: redis.Redis, plan: Any) -> int:
    """Plan failures for the next API calls: a list of {status|errcode|delay[, on]}; replaces
    the plan and forgets the failures applied so far. Returns how many were planned."""
    if not isinstance(plan, list) or not all(isinstance(f, dict) for f in plan):
        raise Refused("expected a JSON list of {status, errcode, delay}")
    client.delete(_FAULTS, _APPLIED)
    if plan:
        client.rpush(_FAULTS, *(json.dumps(f) for f in plan))
    return len(plan)


def faults(client: redis.Redis) -> dict[str, list[dict[str, Any]]]:
    """The failures still planned and those applied so far (with the path and time of each)."""
    return {
        "planned": [json.loads(f) for f in client.lrange(_FAULTS, 0, -1)],
        "applied": [json.loads(f) for f in client.lrange(_APPLIED, 0, -1)],
    }


def injected_fault(client: redis.Redis, path: str) -> Answer | None:
    """Apply the next planned failure to a call of `path`: sleep its delay, raise HTTPFailure
    for a status, or return its errcode. A fault with `"on": "send"` (or `"typing"`) waits for
    a call of that kind; others pass it."""
    raw = client.lpop(_FAULTS)
    if not isinstance(raw, str):
        return None
    fault = json.loads(raw)
    if fault.get("on") and not path.endswith("/" + fault["on"]):
        client.lpush(_FAULTS, raw)  # for the next call of its kind
        return None
    client.rpush(_APPLIED, json.dumps({**fault, "path": path, "at": time.time()}))
    if fault.get("delay"):
        time.sleep(float(fault["delay"]))
    if fault.get("status"):
        raise HTTPFailure(int(fault["status"]))
    if fault.get("errcode"):
        return int(fault["errcode"]), "injected failure"
    return None


def _admitted(settings: Settings, client: redis.Redis, token: str | None, path: str) -> Answer:
    """What every message call passes first: a planned failure, then the token."""
    if (fault := injected_fault(client, path)) is not None:
        return fault
    return check_token(settings, client, token)


# --- the customer-service API ---


def send_custom(
    settings: Settings,
    client: redis.Redis,
    token: str | None,
    body: Any,
    *,
    path: str = SEND_PATH,
) -> Answer:
    """POST /cgi-bin/message/custom/send: a text (the only type here) checked as WeChat does,
    then recorded in the user's outbox. `body` is the parsed JSON (None when unreadable)."""
    if (refused := _admitted(settings, client, token, path)) != OK:
        return refused
    if not isinstance(body, dict):
        return 47001, "data format error"
    touser, text = body.get("touser"), body.get("text")
    if not isinstance(touser, str) or not touser:
        return 40003, "invalid openid"
    if body.get("msgtype") != "text":
        return 40008, "invalid message type"
    content = text.get("content") if isinstance(text, dict) else None
    if not isinstance(content, str) or not content:
        return 44003, "empty content"
    if len(content.encode("utf-8")) > CONTENT_LIMIT:
        return 45002, "content size out of limit"
    if (refused := window_refusal(settings, client, touser, counts=True)) != OK:
        return refused
    record(client, touser, {"msgtype": "text", "content": content, "via": "customer_service"})
    return OK


def typing(
    settings: Settings,
    client: redis.Redis,
    token: str | None,
    body: Any,
    *,
    path: str = TYPING_PATH,
) -> Answer:
    """POST /cgi-bin/message/custom/typing: accepted inside the window (free) and recorded."""
    if (refused := _admitted(settings, client, token, path)) != OK:
        return refused
    if not isinstance(body, dict):
        return 47001, "data format error"
    user, command = body.get("touser"), body.get("command")
    if command not in TYPING_COMMANDS or not isinstance(user, str) or not user:
        return 40001, "invalid command or touser"
    if (refused := window_refusal(settings, client, user, counts=False)) != OK:
        return refused
    client.rpush(
        key("sandbox", "typing", user), json.dumps({"command": command, "at": time.time()})
    )
    return OK


# --- what the user sees ---


def record(client: redis.Redis, user: str, message: dict[str, Any]) -> None:
    """Add one message to what `user` has received (control characters shown as □)."""
    message = {**message, "at": time.time()}
    if isinstance(message.get("content"), str):
        message["content"] = visible(message["content"])
    client.rpush(key("sandbox", "outbox", user), json.dumps(message, ensure_ascii=False))


def outbox(client: redis.Redis, user: str) -> list[dict[str, Any]]:
    """What the user has received so far, oldest first."""
    if not user:
        raise Refused("touser is required")
    return [json.loads(r) for r in client.lrange(key("sandbox", "outbox", user), 0, -1)]


def user_says(settings: Settings, client: redis.Redis, body: Any, webhook: str) -> dict[str, Any]:
    """Act as WeChat's server for one user message: open the window, post it to the webhook
    (signed, encrypted in safe mode; `body["webhook"]` or `webhook`), retry as WeChat does,
    and record what the user sees. Body: {"user", "content", "account": optional}."""
    body = body if isinstance(body, dict) else {}
    user, content = body.get("user"), body.get("content", "")
    if not isinstance(user, str) or not user or not isinstance(content, str):
        raise Refused("user and content are required")
    open_window(settings, client, user)
    channel = "wechat_aes" if settings.wechat_aes_key else "wechat_plain"
    try:
        out = simulator.build(
            settings, channel, user, content, body.get("account") or SANDBOX_ACCOUNT
        )
    except simulator.SimulationError as exc:
        raise Refused(str(exc)) from exc
    sim = simulator.send(
        out,
        str(body.get("webhook") or webhook),
        content,
        retry_after=settings.wechat_platform_timeout,
        attempts=settings.wechat_attempts,
    )
    if sim.passive_reply:
        record(client, user, {"msgtype": "text", "content": sim.passive_reply, "via": "passive"})
    if not sim.ok:
        record(client, user, {"msgtype": "system", "content": SERVICE_FAILURE, "via": "wechat"})
    return {
        "attempts": [{"status": a.status, "ms": round(a.seconds * 1000, 1)} for a in sim.attempts],
        "reply": sim.passive_reply or None,
        "failed": not sim.ok,
    }


# --- the sandbox's own controls ---


def open_window_for(settings: Settings, client: redis.Redis, body: Any) -> None:
    """{"user"}: open a user's window as a message from them would, without forwarding one."""
    user = body.get("user") if isinstance(body, dict) else None
    if not isinstance(user, str) or not user:
        raise Refused("user is required")
    open_window(settings, client, user)


def set_ip_listed(client: redis.Redis, body: Any) -> bool:
    """{"listed": false} takes this server off the account's IP whitelist (40164), true puts it
    back on."""
    listed = body.get("listed") if isinstance(body, dict) else None
    if not isinstance(listed, bool):
        raise Refused('expected {"listed": true|false}')
    if listed:
        client.delete(_IP_UNLISTED)
    else:
        client.set(_IP_UNLISTED, "1")
    return listed


def set_verified(settings: Settings, client: redis.Redis, body: Any) -> bool:
    """{"verified": false} switches the account to unverified (the API answers 48001);
    anything else verifies it again."""
    verified = not (isinstance(body, dict) and body.get("verified") is False)
    client.hset(_account_key(settings), "verified", "1" if verified else "0")
    return verified


def set_engine_delay(client: redis.Redis, body: Any) -> float:
    """{"delay": seconds}: slow every answer down on purpose (0 to stop)."""
    try:
        delay = max(0.0, float((body if isinstance(body, dict) else {}).get("delay", 0)))
    except (TypeError, ValueError) as exc:
        raise Refused("delay must be a number of seconds") from exc
    client.set(ENGINE_DELAY_KEY, delay)
    return delay
