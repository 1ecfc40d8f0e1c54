"""Typed contracts: one JSON form with a version; what cannot be read is refused by name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.core.contracts import SCHEMA_VERSION, Answer, ContractError, Job, StreamCheck
from tests.helpers import make_answer, make_job


@pytest.mark.parametrize(
    "model",
    [
        make_job("alice", "what is 2+2?"),
        make_job("g:chat:u:bob", "hi", channel="wecom", mode="stream", stream_id="s1", asker="bob"),
        make_answer("carol", "4", reasoning="adding", answer_tokens=1, error=""),
        StreamCheck(key="wecom:m1", stream_id="s1", job_id="j1"),
    ],
    ids=["job", "wecom-job", "answer", "stream-check"],
)
def test_one_json_form_round_trips(model: Job | Answer | StreamCheck) -> None:
    wire = model.wire()
    assert wire["v"] == SCHEMA_VERSION
    text = json.dumps(wire)  # what Celery's JSON serializer sends
    assert type(model).from_wire(json.loads(text)) == model
    assert type(model).from_wire(text) == model


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({**make_job("u").wire(), "v": 2}, "schema version 2"),
        ({k: v for k, v in make_job("u").wire().items() if k != "text"}, "text: Field required"),
        ({**make_job("u").wire(), "reply_mode": "smoke"}, "reply_mode"),
        ([1, 2, 3], "expected an object"),
        ("{not json", "not JSON"),
        (None, "expected an object"),
    ],
    ids=["newer-version", "missing-field", "bad-choice", "a-list", "not-json", "nothing"],
)
def test_unreadable_jobs_are_refused_by_name(payload: Any, says: str) -> None:
    with pytest.raises(ContractError, match=says):
        Job.from_wire(payload)


def test_a_job_queued_before_versions_is_read() -> None:
    """What a worker finds in the queue right after the upgrade: the old plain dict."""
    old = {
        "job_id": "j0",
        "request_id": "r0",
        "channel": "wechat",
        "user": "dave",
        "account": "gh",
        "text": "still there?",
        "msg_id": "123",
        "received_at": 1.0,
        "enqueued_at": 2.0,
    }
    job = Job.from_wire(old)
    assert (job.key, job.reply_mode, job.text) == ("wechat:123", "customer_service", old["text"])
    wecom = Job.from_wire({**old, "channel": "wecom", "stream_id": "s9", "msg_id": ""})
    assert (wecom.key, wecom.reply_mode) == ("wecom:j0", "stream")
