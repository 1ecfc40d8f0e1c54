"""Typed contracts: the message a webhook parsed and what crosses the queue (versioned JSON)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError


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


# --- What crosses the queue: typed, versioned, one JSON form ---

SCHEMA_VERSION = 1
ReplyMode = Literal["passive", "customer_service", "stream"]


@dataclass(frozen=True)
class Envelope:
    """A broker message built for a job but not sent: the ledger's enqueue script pushes it.

    Built by the broker's own library (Celery and kombu in `tasks/`), so the message is exactly
    what its publish would have pushed; only the push moves into the ledger's atomic step.
    """

    queue: str  # the Redis list the workers read
    body: str | bytes  # the message as the broker's publish would push it
    limit: int = 0  # the most jobs that may wait on `queue` (0: no limit)


class ContractError(ValueError):
    """A payload that is not a readable job of this version (logged and refused, never a crash)."""


class _Wire(BaseModel):
    """Base of every queued payload: a schema version and one JSON form (`wire()`)."""

    model_config = ConfigDict(extra="ignore")

    v: int = SCHEMA_VERSION

    def wire(self) -> dict[str, Any]:
        """The one JSON form that crosses the queue (Celery's JSON serializer sends it)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_wire(cls, data: object) -> Self:
        """Read a payload of this version; ContractError names what is wrong."""
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise ContractError(f"{cls.__name__}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ContractError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        version = data.get("v")
        if version is None:
            data = cls._upgrade(data)
        elif version != SCHEMA_VERSION:
            raise ContractError(
                f"{cls.__name__} of schema version {version!r}; this process reads "
                f"version {SCHEMA_VERSION}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ContractError(f"{cls.__name__}: {problems}") from None

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A payload written before versions existed (v0): read it where the fields allow."""
        return {**data, "v": SCHEMA_VERSION}


def message_key(channel: str, dedup_key: str) -> str:
    """A message's identity across retries, redeliveries and processes: channel + MsgId."""
    return f"{channel}:{dedup_key}"


class Job(_Wire):
    """One question on the gpu queue: who asked, what, and how the answer goes back."""

    key: str  # the message's identity (ledger record): message_key(channel, dedup)
    job_id: str
    request_id: str
    channel: str
    user: str  # the conversation's key (WeCom: the thread's scope key)
    account: str = ""
    text: str
    msg_id: str = ""
    received_at: float
    enqueued_at: float = Field(default_factory=time.time)
    reply_mode: ReplyMode  # decided once, at ingest
    # WeCom only: the stream refreshes read, and who asked where.
    stream_id: str = ""
    asker: str = ""
    chat_id: str = ""
    chat_type: str = ""

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        channel = data.get("channel", "")
        dedup = data.get("msg_id") or data.get("job_id", "")
        mode = "stream" if data.get("stream_id") else "customer_service"
        return {
            "key": message_key(channel, dedup),
            "reply_mode": mode,
            **data,
            "v": SCHEMA_VERSION,
        }

    @property
    def question(self) -> str:
        """The question's start, as shown beside a parked answer."""
        return self.text[:200]


class Answer(_Wire):
    """One answer on the io queue: the job it answers, the text, and how it was made."""

    job: Job
    answer: str
    reasoning: str = ""
    prompt_tokens: int | None = None
    reasoning_tokens: int | None = None
    answer_tokens: int | None = None
    finish_reason: str = ""
    error: str = ""  # set when the answer is an apology: why
    remember: bool = True  # stored in the conversation history
    queue_wait: float = 0.0
    generation_seconds: float = 0.0
    answered_at: float = Field(default_factory=time.time)

    @property
    def job_id(self) -> str:
        """The answered job's id."""
        return self.job.job_id

    @property
    def apology(self) -> bool:
        """True when the answer is the apology for a failure, not the model's answer."""
        return bool(self.error)


class StreamCheck(_Wire):
    """The io-queue check that posts a WeCom answer to response_url if no refresh took it."""

    key: str
    stream_id: str
    job_id: str
