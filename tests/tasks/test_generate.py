"""The generation task's reading of its payload: never a crash, the ledger's copy as fallback."""

from __future__ import annotations

import logging

import pytest
import redis

from bot.core.settings import Settings
from bot.pipeline.ledger import Ledger
from tasks.generate import read_job
from tests.helpers import make_job, unique


def test_a_damaged_payload_runs_the_ledgers_copy(
    settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    job = make_job(unique())
    ledger = Ledger(redis_client)
    ledger.claim(job.key)
    ledger.move(job.key, "queued", job=job)
    damaged = {k: v for k, v in job.wire().items() if k != "text"}
    with caplog.at_level(logging.ERROR, logger="tasks.generate"):
        assert read_job(settings, damaged) == job
    assert "running the ledger's copy" in caplog.text


@pytest.mark.parametrize(
    "payload",
    [None, "nonsense", {"v": 99, "key": "wechat:nobody"}, {"key": "wechat:unknown"}],
    ids=["nothing", "text", "future-version", "unknown-message"],
)
def test_an_unreadable_payload_is_refused_with_a_log_line(
    settings: Settings, payload: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="tasks.generate"):
        assert read_job(settings, payload) is None
    assert "job refused" in caplog.text
