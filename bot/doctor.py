"""Configuration and dependency checks behind `mimochat doctor`, in plain words."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import asdict, dataclass

from bot.settings import BACKENDS, REPLY_MODES, WECOM_SCOPES, Settings
from bot.store import connect, resolve_url


@dataclass
class Check:
    """One check's outcome."""

    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)


def aes_key_problem(value: str) -> str | None:
    """Why an EncodingAESKey is malformed, or None when it is fine."""
    if len(value) != 43:
        return f"must be 43 characters, got {len(value)}"
    try:
        raw = base64.b64decode(value + "=", validate=True)
    except (binascii.Error, ValueError):
        return "is not base64 (letters and digits only)"
    return None if len(raw) == 32 else f"decodes to {len(raw)} bytes instead of 32"


def settings_checks(s: Settings) -> list[Check]:
    """Every setting present and well-formed."""
    out = []
    token_ok = bool(re.fullmatch(r"[A-Za-z0-9]{3,32}", s.wechat_token))
    out.append(
        Check(
            "WECHAT_TOKEN",
            token_ok,
            "set"
            if token_ok
            else "must be 3-32 letters or digits, as in the Official Account console",
        )
    )
    app_ok = bool(re.fullmatch(r"wx[0-9a-f]{16}", s.wechat_app_id))
    out.append(
        Check(
            "WECHAT_APP_ID",
            app_ok,
            s.wechat_app_id if app_ok else "must look like wx followed by 16 hex characters",
        )
    )
    out.append(
        Check(
            "WECHAT_APP_SECRET",
            bool(s.wechat_app_secret),
            "set" if s.wechat_app_secret else "missing: needed for the access token",
        )
    )
    if s.wechat_aes_key:
        problem = aes_key_problem(s.wechat_aes_key)
        out.append(
            Check(
                "WECHAT_AES_KEY",
                problem is None,
                "safe mode" if problem is None else f"EncodingAESKey {problem}",
            )
        )
    else:
        out.append(Check("WECHAT_AES_KEY", True, "empty: plaintext mode"))
    mode_ok = s.wechat_reply_mode in REPLY_MODES
    out.append(
        Check(
            "WECHAT_REPLY_MODE",
            mode_ok,
            s.wechat_reply_mode if mode_ok else f"must be one of {', '.join(REPLY_MODES)}",
        )
    )
    backend_ok = s.backend in BACKENDS
    out.append(
        Check(
            "MIMOCHAT_BACKEND",
            backend_ok,
            s.backend if backend_ok else f"must be one of {', '.join(BACKENDS)}",
        )
    )
    return out


def wecom_checks(s: Settings) -> list[Check]:
    """The WeCom robot's settings, when it is configured at all."""
    if not (s.wecom_bot_token or s.wecom_bot_aes_key):
        return [Check("WECOM_BOT", True, "not configured: /wecom answers 404")]
    token_ok = bool(re.fullmatch(r"[A-Za-z0-9]{3,32}", s.wecom_bot_token))
    problem = aes_key_problem(s.wecom_bot_aes_key)
    scope_ok = s.wecom_session_scope in WECOM_SCOPES
    return [
        Check(
            "WECOM_BOT_TOKEN",
            token_ok,
            "set" if token_ok else "must be 3-32 letters or digits, as in the robot's settings",
        ),
        Check(
            "WECOM_BOT_AES_KEY",
            problem is None,
            "set" if problem is None else f"EncodingAESKey {problem}",
        ),
        Check(
            "WECOM_SESSION_SCOPE",
            scope_ok,
            s.wecom_session_scope if scope_ok else f"must be one of {', '.join(WECOM_SCOPES)}",
        ),
    ]


def redis_check(s: Settings) -> Check:
    """Redis answers a PING."""
    try:
        url = resolve_url(s)
        connect(url).ping()
    except Exception as exc:  # any failure is the answer here
        where = "REDIS_URL" if s.redis_url else "the embedded Redis"
        return Check("redis", False, f"cannot reach {where}: {type(exc).__name__}")
    return Check("redis", True, "reachable" if s.redis_url else "embedded, reachable")


def run_checks(s: Settings) -> list[Check]:
    """All checks, settings first."""
    return [*settings_checks(s), *wecom_checks(s), redis_check(s)]
