"""The WeCom HTTP client (the only module that calls it): a message's one-use response_url.

A response_url is a capability (anyone holding it can post into the chat), so it never
appears in logs or errors: failures name only the host.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import requests

from bot.channels.wecom.protocol import markdown_message

log = logging.getLogger(__name__)

HTTP_TIMEOUT = 10.0
TRANSIENT_ERRORS = frozenset({-1})  # WeCom's "system busy"


class WeComAPIError(Exception):
    """A failed call: `code` is WeCom's errcode (None for HTTP/network failures)."""

    def __init__(self, code: int | None, message: str, transient: bool) -> None:
        super().__init__(f"{code}: {message}" if code is not None else message)
        self.code = code
        self.message = message
        self.transient = transient


def post_markdown(response_url: str, content: str, timeout: float = HTTP_TIMEOUT) -> None:
    """Post one Markdown message to a response_url (usable once, for an hour)."""
    host = urlsplit(response_url).netloc or "?"
    try:
        res = requests.post(response_url, json=markdown_message(content), timeout=timeout)
    except requests.RequestException as exc:
        raise WeComAPIError(None, f"{type(exc).__name__} posting to {host}", True) from exc
    if res.status_code >= 500:
        raise WeComAPIError(None, f"HTTP {res.status_code} from {host}", True)
    try:
        data = res.json()
    except ValueError as exc:
        raise WeComAPIError(None, f"HTTP {res.status_code}, not JSON, from {host}", False) from exc
    code = int(data.get("errcode", 0)) if isinstance(data, dict) else None
    if res.status_code >= 400 or code is None or code != 0:
        message = str(data.get("errmsg", "")) if isinstance(data, dict) else "bad reply"
        raise WeComAPIError(code, message[:200], code in TRANSIENT_ERRORS)
    log.debug("response_url post to %s accepted", host)
