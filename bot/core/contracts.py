"""Protocol-neutral message types: what the webhook parsed and what crosses the queue as JSON."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any


def new_id() -> str:
    """A fresh job / request id (32 hex chars)."""
    return uuid.uuid4().hex


@dataclass
class IncomingMessage:
    """One message or event from a user, as any channel delivers it."""

    channel: str  # wechat | wecom
    user: str  # the sender (OpenID for WeChat)
    account: str  # the bot's own id (the Official Account's original id)
    kind: str  # text | voice | image | event | video | location | link | ...
    content: str = ""  # the text (voice: the platform's recognition)
    msg_id: str = ""
    create_time: int = 0
    event: str = ""  # subscribe | unsubscribe | ... when kind == "event"
    # WeCom intelligent robot only: where the message was said and how to answer it later.
    chat_id: str = ""  # the group chat's id ("" in a one-to-one chat)
    chat_type: str = ""  # single | group
    quote: str = ""  # text of the message the user quoted, if any
    response_url: str = ""  # one-use URL for a later answer (valid 1 h); never logged
    stream_id: str = ""  # kind == "stream": the stream a refresh callback asks about
    request_id: str = field(default_factory=new_id)
    received_at: float = field(default_factory=time.time)

    @property
    def dedup_key(self) -> str:
        """Same for every retry of one message: MsgId, or sender + CreateTime for events."""
        return self.msg_id or f"{self.user}:{self.create_time}:{self.event or self.kind}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IncomingMessage:
        """Rebuild from `to_dict()` output, ignoring unknown keys."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in data.items() if k in names})
