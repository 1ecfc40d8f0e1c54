"""Logging setup shared by every process: one line per event, secrets never printed."""

from __future__ import annotations

import logging
import re

from bot.settings import Settings

_SECRET_PATTERNS = [
    re.compile(r"(access_token=)[^&\s\"']+"),
    re.compile(r"(secret=)[^&\s\"']+"),
    re.compile(r"(\"access_token\":\s*\")[^\"]+"),
]


class RedactSecrets(logging.Filter):
    """Masks access tokens and app secrets that a library might put in a message (URLs, bodies)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for pattern in _SECRET_PATTERNS:
            redacted = pattern.sub(r"\1***", redacted)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def setup_logging(settings: Settings) -> None:
    """Configure the root logger once for this process."""
    root = logging.getLogger()
    if any(isinstance(f, RedactSecrets) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s")
    )
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for noisy in ("urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
