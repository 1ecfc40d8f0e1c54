"""Logging shared by every process: one structured line per event, secrets never printed.

`MIMOCHAT_LOG_FORMAT` chooses `logfmt` (key=value) or `json` lines. Fields bound with `bind()`
(the request id of the message being handled) go on every line the same thread or task logs,
so one message can be followed from the webhook to its delivery across processes. `stage()`
writes the one line per message stage (received, enqueued, started, generated, delivered,
failed, busy). Users' text appears only when `MIMOCHAT_LOG_USER_TEXT` is on.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from typing import Any

from bot.core.settings import SECRET_FIELDS, Settings

_SECRET_PATTERNS = [
    re.compile(r"(access_token=)[^&\s\"']+"),
    re.compile(r"(secret=)[^&\s\"']+"),
    re.compile(r"(\"access_token\":\s*\")[^\"]+"),
    re.compile(r"('access_token':\s*')[^']+"),
]
# Fields of a stage line that carry what a user wrote or was told.
USER_TEXT_FIELDS = frozenset({"text", "answer", "reasoning", "content"})
FORMATS = ("logfmt", "json")

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "mimochat_log_context", default=None
)
_known_secrets: set[str] = set()
_options = {"user_text": False}
stage_log = logging.getLogger("mimochat.stage")


def add_secret(value: str | None) -> None:
    """Mask this exact value wherever it would appear in a log line (tokens fetched at run time)."""
    if value and len(value) >= 6:  # a short value would mask ordinary words
        _known_secrets.add(value)


def redact(text: str) -> str:
    """The text with access tokens, app secrets and every registered secret masked."""
    if "access_token" in text or "secret=" in text:  # every pattern holds one of the two
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(r"\1***", text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def bind(**fields: Any) -> None:
    """Add fields (request_id, job_id…) to every later line of this thread or task."""
    _context.set(
        {**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}}
    )


def clear() -> None:
    """Forget the bound fields (at the start and end of each request or task)."""
    _context.set({})


def bound() -> dict[str, str]:
    """The fields bound to this thread or task."""
    return dict(_context.get() or {})


def stage(name: str, **fields: Any) -> None:
    """Log the one structured line of a message stage; users' text only if allowed."""
    shown = {
        k: v
        for k, v in fields.items()
        if v is not None and (_options["user_text"] or k not in USER_TEXT_FIELDS)
    }
    stage_log.info(name, extra={"fields": {"stage": name, **shown}})


class RedactSecrets(logging.Filter):
    """Masks access tokens and app secrets that a library might put in a message (URLs, bodies)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_NEEDS_QUOTES = re.compile(r'[ ="\\\n\r\t]')


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


class StructuredFormatter(logging.Formatter):
    """One line per record, logfmt or JSON, with the bound fields; the whole line is redacted."""

    def __init__(self, fmt: str = "logfmt") -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"MIMOCHAT_LOG_FORMAT must be one of {FORMATS}, got {fmt!r}")
        self.fmt = fmt
        self._second, self._stamp = -1, ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))
        row: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        row.update(_context.get() or {})
        row.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            row["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            row["exc"] = record.exc_text
        if self.fmt == "json":
            line = json.dumps(row, ensure_ascii=False, default=str)
        else:
            line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in row.items())
        return redact(line)


def setup_logging(settings: Settings) -> None:
    """Configure the root logger once for this process; secrets of `settings` are masked."""
    for name in SECRET_FIELDS:
        add_secret(getattr(settings, name, ""))
    _options["user_text"] = settings.log_user_text
    root = logging.getLogger()
    if any(isinstance(h.formatter, StructuredFormatter) for h in root.handlers):
        return
    # The logging HOWTO's "Optimization" switches for what no line here shows: the caller's
    # file and line (a walk up the stack per record), thread and process names.
    logging._srcfile = None  # the documented way to skip the walk
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    # No RedactSecrets filter here: the formatter redacts the whole line, message included.
    handler.setFormatter(StructuredFormatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for noisy in ("urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
