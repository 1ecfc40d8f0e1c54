"""What settings are made of: the choices, checked strings and bounds, and their words.

`bot.core.settings` declares every setting with `setting()`; `describe()` words what a field
allows for the error that refuses a bad value and for `.env.example`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    HttpUrl,
    JsonValue,
    TypeAdapter,
    ValidationError,
)
from pydantic.fields import FieldInfo

ReplyMode = Literal["auto", "customer_service", "passive"]
WecomScope = Literal["user_in_group", "group", "user"]
Backend = Literal["transformers", "openai"]
# The engine's own spellings (bot/engine/transformers/engine.py DTYPES), plus auto.
Dtype = Literal["auto", "bfloat16", "bf16", "float16", "fp16", "half", "float32", "fp32", "float"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["logfmt", "json"]

ADMIN_TOKEN_MIN = 16

_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _http_url(value: str) -> str:
    # Validated as a URL but kept as the string given: callers join paths onto it.
    try:
        _HTTP_URL.validate_python(value)
    except ValidationError:
        raise ValueError("not an http(s) URL") from None
    return value


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if value and not (
        (parts.scheme in ("redis", "rediss") and parts.netloc)
        or (parts.scheme == "unix" and parts.path)
    ):
        raise ValueError("not a redis URL")
    return value


def _ws_url(value: str) -> str:
    parts = urlsplit(value)
    if not (parts.scheme in ("ws", "wss") and parts.netloc):
        raise ValueError("not a WebSocket URL")
    return value


def _device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise ValueError("not a device")
    return value


def _admin_token(value: str) -> str:
    if value and len(value) < ADMIN_TOKEN_MIN:
        raise ValueError("too short")
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


HttpUrlStr = Annotated[str, AfterValidator(_http_url)]
RedisUrlStr = Annotated[str, AfterValidator(_redis_url)]
WsUrlStr = Annotated[str, AfterValidator(_ws_url)]
DeviceStr = Annotated[str, BeforeValidator(_lower), AfterValidator(_device)]
AdminTokenStr = Annotated[str, AfterValidator(_admin_token)]
# The engine and the logger have always read these two in any case; keep accepting that.
DtypeName = Annotated[Dtype, BeforeValidator(_lower)]
LogLevelName = Annotated[LogLevel, BeforeValidator(_upper)]

HTTP_URL_WORDS = "an http(s) URL"


def setting(env: str, default: Any, doc: str, allowed: str = "", **bounds: Any) -> Any:
    """A field read from environment variable `env`; `allowed` words a custom rule."""
    extra: dict[str, JsonValue] | None = {"allowed": allowed} if allowed else None
    return Field(default, validation_alias=env, description=doc, json_schema_extra=extra, **bounds)


def describe(info: FieldInfo) -> str:
    """What a field accepts, in words (`one of transformers, openai`, `a whole number >= 1`)."""
    extra = info.json_schema_extra
    if isinstance(extra, dict) and extra.get("allowed"):
        return str(extra["allowed"])
    kind = info.annotation
    choices = get_args(kind)
    if choices and all(isinstance(c, str) for c in choices):
        return "one of " + ", ".join(choices)
    if kind is bool:
        return "a boolean: 1/0, true/false, yes/no or on/off"
    words = "a whole number" if kind is int else "a number" if kind is float else "text"
    limits = {
        attr: getattr(rule, attr)
        for rule in info.metadata
        for attr in ("ge", "gt", "le", "lt")
        if getattr(rule, attr, None) is not None
    }
    if {"ge", "le"} <= set(limits):
        return f"{words} from {limits['ge']} to {limits['le']}"
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    bounds = " and ".join(f"{signs[attr]} {limit}" for attr, limit in limits.items())
    return f"{words} {bounds}" if bounds else words


# --- guards (bot/core/guard_settings.py) ---

Thinking = Literal["off", "on", "deep"]
ReviewFail = Literal["open", "closed"]
SAFETY_ACTIONS = ("refuse", "mask", "withhold")


def _rate_limits(value: str) -> str:
    # The `limits` library's notation ("5/minute;100/day"); parsed here so a typo stops start.
    if value.strip():
        try:
            parse_many(value)
        except ValueError:
            raise ValueError("not a rate limit") from None
    return value.strip()


def _safety_lists(value: str) -> str:
    for pair in filter(None, (p.strip() for p in value.split(","))):
        action, _, path = pair.partition(":")
        if action.strip() not in SAFETY_ACTIONS or not path.strip():
            raise ValueError(f"{pair!r} is not action:path")
    return value


def _optional_http_url(value: str) -> str:
    return _http_url(value) if value else value


RateLimitStr = Annotated[str, AfterValidator(_rate_limits)]
SafetyListsStr = Annotated[str, AfterValidator(_safety_lists)]
OptionalHttpUrlStr = Annotated[str, AfterValidator(_optional_http_url)]
RATE_LIMIT_WORDS = "limits in the `limits` notation separated by ';' (5/minute;100/day), or empty"
SAFETY_LISTS_WORDS = "action:path pairs separated by commas (action: refuse, mask, withhold)"
