"""Small helpers and constants shared by the tests."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlparse

from bot.core.contracts import Answer, Job, message_key

TOKEN = "mimochattest"
APP_ID = "wx00112233445566ff"
APP_SECRET = "test-secret-00112233445566778899"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
ACCOUNT = "gh_test_account"
# WeCom's published callback sample (token, EncodingAESKey): the robot under test uses them.
WECOM_TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
WECOM_AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_db(url: str, db: int) -> str:
    """The same Redis server, another logical database."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return f"unix://{parsed.path}?db={db}"
    return parsed._replace(path=f"/{db}").geturl()


def unique(prefix: str = "o") -> str:
    """A fresh user id so tests never see each other's conversations."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def queued_jobs(client: Any, queue: str = "gpu") -> list[dict]:
    """The jobs waiting in a Celery queue, decoded from the broker's JSON envelopes."""
    jobs = []
    for raw in client.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        assert envelope["content-type"] == "application/json"  # never pickle
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        jobs.append(args[0])
    return jobs


def user_with_window(base: str) -> str:
    """A fresh user who just wrote to the account: the sandbox lets us send to them."""
    import requests

    user = unique()
    requests.post(
        f"{base}/sandbox/wechat/window", json={"user": user}, timeout=5
    ).raise_for_status()
    return user


def make_job(
    user: str,
    text: str = "a question",
    *,
    channel: str = "wechat",
    mode: str = "customer_service",
    msg_id: str | None = None,
    **extra: Any,
) -> Job:
    """A typed job as ingest would build it (its own message identity unless given)."""
    msg_id = msg_id or unique("m")
    return Job(
        key=message_key(channel, msg_id),
        job_id=unique("job"),
        request_id=unique("req"),
        channel=channel,
        user=user,
        text=text,
        msg_id=msg_id,
        received_at=time.time(),
        reply_mode=mode,  # type: ignore[arg-type]
        **extra,
    )


def make_answer(
    user: str, answer: str, *, question: str = "q", job: dict[str, Any] | None = None, **fields: Any
) -> Answer:
    """A typed answer to a fresh job, ready for delivery (`fields`: the answer's own)."""
    return Answer(job=make_job(user, question, **(job or {})), answer=answer, **fields)
