"""Live-view figures: aggregation over job records (table-driven) and queue depths in Redis."""

from __future__ import annotations

import pytest
import redis

from bot.console import stats
from tests.helpers import unique

NOW = 1_800_000_000.0


def job(stage: str, received_ago: float, **fields: float | str) -> dict[str, str]:
    record = {"stage": stage, "received_at": str(NOW - received_ago)}
    if stage != "received":  # every stage is stamped, as bot.core.jobs.record does
        record[f"{stage}_at"] = str(NOW - received_ago + 0.1)
    record.update({k: str(v) for k, v in fields.items()})
    return record


def delivered(received_ago: float, took: float) -> dict[str, str]:
    return job("delivered", received_ago, delivered_at=NOW - received_ago + took)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], {"in_flight": 0, "answers_per_minute": 0.0, "p50": None, "p95": None, "errors": []}),
        (
            [job("received", 5), job("started", 10), job("generated", 12), job("received", 7200)],
            {"in_flight": 3, "answers_per_minute": 0.0, "p50": None, "p95": None, "errors": []},
        ),
        (
            [delivered(60, t) for t in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)],
            {"in_flight": 0, "answers_per_minute": 2.0, "p50": 5.0, "p95": 10.0, "errors": []},
        ),
        (
            [delivered(600, 2.0), delivered(30, 4.0), delivered(7200, 99.0)],
            {"in_flight": 0, "answers_per_minute": 0.2, "p50": 2.0, "p95": 4.0, "errors": []},
        ),
        (
            [
                job("failed", 50, error_code="45047"),
                job("failed", 40, error_code="45047"),
                job("failed", 30, error_code="48001"),
                job("failed", 20),
                job("delivered", 10, delivered_at=NOW - 5, error="RuntimeError"),
                job("failed", 200_000, error_code="40001"),
            ],
            {
                "in_flight": 0,
                "answers_per_minute": 0.2,
                "p50": 5.0,
                "p95": 5.0,
                "errors": [
                    ("45047", 2),
                    ("48001", 1),
                    ("network", 1),
                    ("generation: RuntimeError", 1),
                ],
            },
        ),
    ],
)
def test_aggregate(records: list[dict[str, str]], expected: dict) -> None:
    out = stats.aggregate(records, now=NOW)
    assert out["in_flight"] == expected["in_flight"]
    assert out["answers_per_minute"] == expected["answers_per_minute"]
    assert out["time_to_answer"]["p50"] == expected["p50"]
    assert out["time_to_answer"]["p95"] == expected["p95"]
    assert [(e["code"], e["count"]) for e in out["errors"]] == expected["errors"]


def test_error_codes_are_explained() -> None:
    out = stats.aggregate([job("failed", 1, error_code="45047")], now=NOW)
    assert "5 customer-service messages" in out["errors"][0]["meaning"]


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [([], 50, None), ([3.0], 95, 3.0), ([1, 2, 3, 4], 50, 2), ([1, 2, 3, 4], 95, 4)],
)
def test_percentile(values: list[float], p: float, expected: float | None) -> None:
    assert stats.percentile(values, p) == expected


def test_queue_depths_add_up_priority_lists(redis_client: redis.Redis) -> None:
    q, empty = unique("queue"), unique("empty")
    redis_client.rpush(q, "a", "b")
    redis_client.rpush(f"{q}\x06\x169", "c")  # kombu's list for priority 9
    try:
        assert stats.queue_depths(redis_client, (q, empty)) == {q: 3, empty: 0}
    finally:
        redis_client.delete(q, f"{q}\x06\x169")
