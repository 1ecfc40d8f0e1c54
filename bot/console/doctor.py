"""Configuration and dependency checks behind `mimochat doctor` and the console, in plain words.

Each check names the setting or the part that is wrong and says what to do about it. Checks
that need Redis are skipped (and say so) when Redis is unreachable.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from bot.channels.wechat import reply_mode, simulator
from bot.channels.wechat.api import check_access_token
from bot.channels.wecom.probe import long_connection
from bot.console import workers
from bot.core.settings import BACKENDS, REPLY_MODES, WECOM_SCOPES, Settings
from bot.core.store import connect, resolve_url

QUEUES = ("gpu", "io")
ADMIN_TOKEN_MIN = 16


@dataclass
class Check:
    """One check's outcome; `skipped` checks could not run (ok is then False)."""

    name: str
    ok: bool
    detail: str
    skipped: bool = False

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)

    @property
    def label(self) -> str:
        """ok | FAIL | SKIP."""
        return "SKIP" if self.skipped else ("ok" if self.ok else "FAIL")


def aes_key_problem(value: str) -> str | None:
    """Why an EncodingAESKey is malformed, or None when it is fine."""
    if len(value) != 43:
        return f"must be 43 characters, got {len(value)}"
    try:
        raw = base64.b64decode(value + "=", validate=True)
    except (binascii.Error, ValueError):
        return "is not base64 (letters and digits only)"
    return None if len(raw) == 32 else f"decodes to {len(raw)} bytes instead of 32"


def token_problem(value: str) -> str | None:
    """Why a WeChat Token is not one the Official Account console accepts, or None."""
    if not value:
        return "missing: copy the Token from 设置与开发 → 基本配置 → 服务器配置"
    bad = sorted({c for c in value if not (c.isascii() and c.isalnum())})
    if bad:
        shown = " ".join(repr(c) for c in bad[:5])
        return f"may contain only letters and digits; it contains {shown}"
    if not 3 <= len(value) <= 32:
        return f"must be 3-32 characters, got {len(value)}"
    return None


def app_id_problem(value: str) -> str | None:
    """Why an AppID is malformed, or None."""
    if not value:
        return "missing: copy the AppID from 设置与开发 → 基本配置"
    if value != value.strip():
        return "has spaces around it"
    if not re.fullmatch(r"wx[0-9a-f]{16}", value):
        return f"must look like wx followed by 16 hex characters, got {len(value)} characters"
    return None


def _check(name: str, problem: str | None, fine: str) -> Check:
    return Check(name, problem is None, fine if problem is None else f"{name} {problem}")


def settings_checks(s: Settings) -> list[Check]:
    """Every setting present and well-formed."""
    out = [
        _check("WECHAT_TOKEN", token_problem(s.wechat_token), "set, well-formed"),
        _check("WECHAT_APP_ID", app_id_problem(s.wechat_app_id), s.wechat_app_id),
        _check(
            "WECHAT_APP_SECRET",
            None if s.wechat_app_secret else "missing: needed for the access token",
            "set",
        ),
    ]
    if s.wechat_aes_key:
        problem = aes_key_problem(s.wechat_aes_key)
        out.append(
            _check(
                "WECHAT_AES_KEY",
                None if problem is None else f"(EncodingAESKey) {problem}",
                "safe mode (43 characters, 32-byte key)",
            )
        )
    else:
        out.append(Check("WECHAT_AES_KEY", True, "empty: plaintext mode"))
    out.append(
        _check(
            "WECHAT_REPLY_MODE",
            None
            if s.wechat_reply_mode in REPLY_MODES
            else f"must be one of {', '.join(REPLY_MODES)}",
            s.wechat_reply_mode,
        )
    )
    base = urlsplit(s.wechat_api_base)
    out.append(
        _check(
            "WECHAT_API_BASE",
            None
            if base.scheme in ("http", "https") and base.hostname
            else "must be an http(s) URL such as https://api.weixin.qq.com/",
            s.wechat_api_base,
        )
    )
    if s.wecom_bot_aes_key:
        problem = aes_key_problem(s.wecom_bot_aes_key)
        out.append(_check("WECOM_BOT_AES_KEY", None if problem is None else problem, "well-formed"))
    out.append(
        _check(
            "MIMOCHAT_BACKEND",
            None if s.backend in BACKENDS else f"must be one of {', '.join(BACKENDS)}",
            s.backend,
        )
    )
    if not s.admin_token:
        out.append(Check("ADMIN_TOKEN", True, "empty: the admin console is off"))
    else:
        out.append(
            _check(
                "ADMIN_TOKEN",
                None
                if len(s.admin_token) >= ADMIN_TOKEN_MIN
                else f"is too short to guard the console: use at least {ADMIN_TOKEN_MIN} "
                "random characters",
                "set: the admin console is on",
            )
        )
    return out


def wecom_checks(s: Settings) -> list[Check]:
    """The WeCom robot's token and session scope, when the robot is configured at all.

    (Its EncodingAESKey is checked with the other keys in `settings_checks`.)
    """
    if not (s.wecom_bot_token or s.wecom_bot_aes_key):
        return [Check("WECOM_BOT", True, "not configured: /wecom answers 404")]
    token_ok = bool(re.fullmatch(r"[A-Za-z0-9]{3,32}", s.wecom_bot_token))
    return [
        _check(
            "WECOM_BOT_TOKEN",
            None if token_ok else "must be 3-32 letters or digits, as in the robot's settings",
            "set, well-formed",
        ),
        _check(
            "WECOM_SESSION_SCOPE",
            None
            if s.wecom_session_scope in WECOM_SCOPES
            else f"must be one of {', '.join(WECOM_SCOPES)}",
            s.wecom_session_scope,
        ),
    ]


def shown_url(url: str) -> str:
    """A URL without its password, safe to print."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def redis_check(s: Settings, client: redis.Redis | None = None) -> tuple[Check, redis.Redis | None]:
    """Redis answers a PING; returns the client the other checks use."""
    where = f"REDIS_URL {shown_url(s.redis_url)}" if s.redis_url else "the embedded Redis"
    try:
        client = client or connect(resolve_url(s))
        client.ping()
    except Exception as exc:  # any failure is the answer here
        return Check("redis", False, f"cannot reach {where} ({type(exc).__name__})"), None
    return Check("redis", True, f"{where} answers"), client


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return ""


def describe_engine(info: dict[str, Any]) -> str:
    """An engine's info() in one line: model, device, dtype, weights, GPU memory."""
    text = f"{info.get('model', info.get('engine', '?'))} on {info.get('device', '?')}"
    if info.get("dtype"):
        text += f" ({info['dtype']})"
    if info.get("weight_bytes"):
        text += f", {_size(info['weight_bytes'])} of weights"
    cuda = info.get("cuda")
    if isinstance(cuda, dict) and cuda.get("total_bytes"):
        text += (
            f", {cuda.get('name', 'GPU')}: {_size(cuda.get('reserved_bytes', 0))} of "
            f"{_size(cuda['total_bytes'])} in use"
        )
    return text


_QUEUE_ROLE = {
    "gpu": "questions wait unanswered; start `mimochat worker --queues gpu` on the GPU machine",
    "io": "answers are generated but never sent; start `mimochat worker --queues io`",
}


def worker_checks(s: Settings, online: list[dict[str, Any]]) -> list[Check]:
    """Workers online per queue (from their heartbeats) and the model the gpu workers loaded."""
    out = []
    per_queue = workers.by_queue(online, QUEUES)
    for queue in QUEUES:
        names = per_queue[queue]
        if names:
            out.append(Check(f"workers: {queue}", True, f"{len(names)} online: {', '.join(names)}"))
        else:
            out.append(
                Check(
                    f"workers: {queue}",
                    False,
                    f"no worker is consuming the {queue} queue: {_QUEUE_ROLE[queue]}",
                )
            )
    gpu = [w for w in online if "gpu" in w.get("queues", [])]
    if not gpu:
        out.append(Check("model", False, "not loaded: no worker serves the gpu queue", True))
        return out
    loading = [w["hostname"] for w in gpu if w.get("state") != "ready"]
    ready = [w for w in gpu if w.get("state") == "ready"]
    if not ready:
        out.append(Check("model", False, f"still loading on {', '.join(loading)}"))
        return out
    lines = [f"{w['hostname']}: {describe_engine(w.get('engine') or {})}" for w in ready]
    models = {(w.get("engine") or {}).get("model") for w in ready}
    if s.model not in models:
        lines.append(f"(MIMOCHAT_MODEL here is {s.model})")
    if loading:
        lines.append(f"still loading on {', '.join(loading)}")
    out.append(Check("model", True, "; ".join(lines)))
    return out


def reply_mode_check(s: Settings, client: redis.Redis | None = None) -> Check:
    """The reply mode configured and the one in effect now (auto may have switched)."""
    meaning = {
        "customer_service": "answers are sent through the customer-service API "
        "(needs a verified service account)",
        "passive": "answers come back in the webhook's reply within WeChat's retries, "
        "or with the user's next message",
        "auto": "customer-service API, switching to passive replies on 48001",
    }
    mode = s.wechat_reply_mode
    if mode not in meaning:
        return Check("reply mode", False, f"{mode}: unknown mode: see WECHAT_REPLY_MODE")
    detail = f"{mode}: {meaning[mode]}"
    if mode == "auto" and client is not None:
        try:
            now = reply_mode.effective(s, client)
        except redis.RedisError:
            now = None
        if now == reply_mode.PASSIVE:
            detail += (
                "; in effect now: passive (WeChat answered 48001: the account is not verified)"
            )
        elif now is not None:
            detail += "; in effect now: customer service"
    return Check("reply mode", True, detail)


def webhook_check(s: Settings, url: str) -> Check:
    """WeChat's URL-verification handshake against the webhook with this WECHAT_TOKEN."""
    try:
        result = simulator.verify_url(url, s.wechat_token)
    except simulator.SimulationError as exc:
        return Check("webhook URL", False, str(exc))
    detail = f"{url}: {result['diagnosis']}"
    if result["status"] == 403:
        detail += " — the webhook's WECHAT_TOKEN differs from this one"
    return Check("webhook URL", result["ok"], detail)


def run_checks(
    s: Settings, *, client: redis.Redis | None = None, webhook_url: str | None = None
) -> list[Check]:
    """All checks: settings, Redis, workers and model, access token, reply mode, webhook."""
    checks = settings_checks(s) + wecom_checks(s)
    redis_result, client = redis_check(s, client)
    checks.append(redis_result)
    if client is None:
        checks += [
            Check(name, False, "needs Redis, which is unreachable", True)
            for name in ("workers: gpu", "workers: io", "model", "access token")
        ]
    else:
        try:
            online = workers.online(client)
        except redis.RedisError as exc:
            checks.append(Check("workers", False, f"cannot read heartbeats: {exc}", True))
        else:
            checks += worker_checks(s, online)
        if s.wechat_app_id and s.wechat_app_secret:
            ok, detail = check_access_token(s, client)
            checks.append(Check("access token", ok, detail))
        else:
            checks.append(
                Check("access token", False, "needs WECHAT_APP_ID and WECHAT_APP_SECRET", True)
            )
    checks.append(reply_mode_check(s, client))
    checks.append(Check("WeCom long connection", *long_connection(s, client)))
    if webhook_url:
        checks.append(webhook_check(s, webhook_url))
    return checks
