"""The console's live view: queue depths, jobs in flight, answer rate, latency, errors.

Figures come from the job timelines `bot.core.jobs` keeps (the newest `SAMPLE` jobs) and from the
broker's queues: Celery's Redis transport keeps each queue as a Redis list named after it
(plus one list per priority step, `<queue>\\x06\\x16<n>`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import redis

from bot.channels.wechat.api import explain
from bot.console import workers
from bot.core import jobs

QUEUES = ("gpu", "io")
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)  # kombu's default steps besides 0 (which is the plain list name)
SAMPLE = 1000  # newest jobs looked at (bot.core.jobs keeps at most this many ids)
RATE_WINDOW = 300  # seconds over which answers per minute is averaged
LATENCY_WINDOW = 3600  # seconds of delivered answers behind p50/p95
ERROR_WINDOW = 86400  # seconds of failures counted by error code
STALE_AFTER = 3600  # a job unfinished this long is lost, not in flight (see the visibility timeout)


def queue_depths(client: redis.Redis, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """Jobs waiting in each Celery queue (all priority lists added up)."""
    names = [(q, q) for q in queues] + [
        (q, f"{q}{PRIORITY_SEP}{step}") for q in queues for step in PRIORITY_STEPS
    ]
    with client.pipeline(transaction=False) as pipe:
        for _q, name in names:
            pipe.llen(name)
        lengths = pipe.execute()
    out = dict.fromkeys(queues, 0)
    for (q, _name), n in zip(names, lengths, strict=True):
        out[q] += int(n)
    return out


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _f(record: dict[str, str], name: str) -> float | None:
    try:
        return float(record[name])
    except (KeyError, ValueError):
        return None


def aggregate(records: list[dict[str, str]], now: float | None = None) -> dict[str, Any]:
    """Figures over job records (as `bot.core.jobs.recent` returns them)."""
    now = time.time() if now is None else now
    in_flight: Counter[str] = Counter()
    latencies: list[float] = []
    answered_recently = 0
    errors: Counter[str] = Counter()
    for r in records:
        received = _f(r, "received_at")
        if received is None:
            continue
        stage = r.get("stage", "")
        delivered = _f(r, "delivered_at")
        if now - received < STALE_AFTER and delivered is None and "failed_at" not in r:
            # From the stamps, not `stage`: a late stamp (the webhook's "notice") may come last.
            if "generated_at" in r:
                in_flight["delivering"] += 1
            elif "started_at" in r:
                in_flight["generating"] += 1
            else:
                in_flight["queued"] += 1
        if delivered is not None:
            if now - delivered <= RATE_WINDOW:
                answered_recently += 1
            if now - delivered <= LATENCY_WINDOW:
                latencies.append(delivered - received)
        if now - received <= ERROR_WINDOW:
            if stage == "failed" and r.get("error_code"):
                errors[r["error_code"]] += 1
            elif stage == "failed":
                errors["network"] += 1
            elif r.get("error"):  # generation failed; the user got the apology
                errors[f"generation: {r['error']}"] += 1
    return {
        "in_flight": sum(in_flight.values()),
        "in_flight_by_stage": {k: in_flight[k] for k in ("queued", "generating", "delivering")},
        "answers_per_minute": round(answered_recently * 60 / RATE_WINDOW, 2),
        "rate_window_seconds": RATE_WINDOW,
        "time_to_answer": {
            "p50": _round(percentile(latencies, 50)),
            "p95": _round(percentile(latencies, 95)),
            "count": len(latencies),
            "window_seconds": LATENCY_WINDOW,
        },
        "errors": [
            {"code": code, "count": n, "meaning": _meaning(code)}
            for code, n in errors.most_common()
            if n
        ],
        "jobs_sampled": len(records),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _meaning(code: str) -> str:
    if code.startswith("generation: "):
        return "the model failed; the user got an apology"
    if code == "network":
        return "the WeChat API could not be reached"
    try:
        return explain(int(code)).split(": ", 1)[1]
    except ValueError:
        return ""


def collect(client: redis.Redis, now: float | None = None) -> dict[str, Any]:
    """The live view: queues, workers per queue and the figures over recent jobs."""
    out = aggregate(jobs.recent(client, SAMPLE), now)
    out["queues"] = queue_depths(client)
    out["workers"] = workers.by_queue(workers.online(client), QUEUES)
    out["at"] = time.time() if now is None else now
    return out
