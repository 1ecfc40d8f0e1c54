"""The figures each process counts, as Prometheus metrics (no web or queue imports here).

Every process counts what it sees in its own registry: the web process counts webhook calls,
a worker counts generations, tokens, deliveries and WeChat errors. Prometheus scrapes each
process (the web at `/metrics`, each worker on `MIMOCHAT_METRICS_PORT`) and adds them up, which
keeps counters monotonic and needs no write to Redis per event. Figures that belong to no one
process (queue depth, workers online, jobs by stage) are read from Redis when the web's
`/metrics` is scraped (webhooks/metrics.py). Under gunicorn, set `PROMETHEUS_MULTIPROC_DIR`
(webhooks/gunicorn.conf.py does) so the web's worker processes share one view.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

from bot.core.contracts import Answer

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 4.5, 10.0)
ANSWER_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
RATE_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)

WEBHOOK_REQUESTS = Counter(
    "mimochat_webhook_requests",
    "Webhook calls by channel and outcome (enqueued, duplicate, replied, busy, ignored, held, "
    "rejected, unavailable, error).",
    ["channel", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "mimochat_webhook_request_seconds",
    "Time to answer a webhook call (WeChat gives up after 5 s).",
    ["channel", "outcome"],
    buckets=LATENCY_BUCKETS,
)
JOB_STAGES = Counter(
    "mimochat_job_stages",
    "Jobs that reached a stage in this process (received, started, generated, delivered, failed).",
    ["stage"],
)
GENERATIONS_IN_FLIGHT = Gauge(
    "mimochat_generations_in_flight",
    "Generations running in this worker now: the batch the engine serves at once.",
    multiprocess_mode="livesum",
)
GENERATIONS = Counter(
    "mimochat_generations", "Finished generations by finish reason (or error).", ["finish_reason"]
)
GENERATED_TOKENS = Counter(
    "mimochat_generated_tokens", "Tokens generated, by kind (reasoning, answer).", ["kind"]
)
GENERATION_SECONDS = Histogram(
    "mimochat_generation_seconds", "Seconds one generation took.", buckets=ANSWER_BUCKETS
)
TOKENS_PER_SECOND = Histogram(
    "mimochat_generation_tokens_per_second",
    "Generated tokens per second of one generation (rate(mimochat_generated_tokens_total) is "
    "the worker's throughput).",
    buckets=RATE_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "mimochat_queue_wait_seconds",
    "Seconds a question waited in the gpu queue before a worker started it.",
    buckets=ANSWER_BUCKETS,
)
TIME_TO_ANSWER = Histogram(
    "mimochat_time_to_answer_seconds",
    "Seconds from the webhook taking a question to the answer's delivery.",
    buckets=ANSWER_BUCKETS,
)
DELIVERY_ERRORS = Counter(
    "mimochat_delivery_errors",
    "Failed WeChat sends by WeChat errcode (`http` for HTTP/network failures) and whether the "
    "delivery was then given up (final) or retried.",
    ["code", "final"],
)
GUARD_DECISIONS = Counter(
    "mimochat_guard_decisions",
    "Guard decisions by stage (question, answer) and decision (pass, rate_limited, refused, "
    "masked, withheld, review_refused, review_withheld, review_failed_open, review_failed_closed).",
    ["stage", "decision"],
)
UNCERTAIN_SENDS = Counter(
    "mimochat_uncertain_sends",
    "Sends that reached the platform but got no answer in time: not resent (never doubled "
    "blindly), shown in the console.",
    ["channel"],
)
SWEEPER_ACTIONS = Counter(
    "mimochat_sweeper_actions",
    "Messages the sweeper moved on, by the state they were stuck in and what it did "
    "(requeue, redeliver, apologize, park).",
    ["state", "action"],
)
TOKEN_REFRESHES = Counter(
    "mimochat_wechat_token_refreshes", "Access tokens fetched from WeChat by this process."
)

# Series only a worker ever moves. Unlabelled ones are born at zero in every process that imports
# this module, so the web's /metrics leaves them out instead of publishing a worker-looking 0.
WORKER_ONLY = frozenset(
    m._name  # noqa: SLF001 (prometheus_client keeps the family name here)
    for m in (
        GENERATIONS_IN_FLIGHT,
        GENERATIONS,
        GENERATED_TOKENS,
        GENERATION_SECONDS,
        TOKENS_PER_SECOND,
        QUEUE_WAIT_SECONDS,
        TIME_TO_ANSWER,
        DELIVERY_ERRORS,
    )
)


_in_flight = {"count": 0}
_in_flight_lock = threading.Lock()


@contextmanager
def generating() -> Iterator[None]:
    """Count one generation in flight for as long as the block runs."""
    with _in_flight_lock:
        _in_flight["count"] += 1
    GENERATIONS_IN_FLIGHT.inc()
    try:
        yield
    finally:
        GENERATIONS_IN_FLIGHT.dec()
        with _in_flight_lock:
            _in_flight["count"] -= 1


def generations_in_flight() -> int:
    """Generations running in this process now (what the worker's heartbeat reports)."""
    return _in_flight["count"]


def webhook_call(channel: str, outcome: str, seconds: float) -> None:
    """Count one webhook call and its latency."""
    WEBHOOK_REQUESTS.labels(channel, outcome).inc()
    WEBHOOK_SECONDS.labels(channel, outcome).observe(seconds)


def generation_done(result: Answer) -> None:
    """Count one finished generation's tokens, speed and queue wait."""
    # An apology is counted by the exception it names last ("generation failed: RuntimeError").
    label = result.error.rsplit(" ", 1)[-1] if result.error else result.finish_reason
    GENERATIONS.labels(label or "unknown").inc()
    tokens = 0
    for kind, count in (("reasoning", result.reasoning_tokens), ("answer", result.answer_tokens)):
        GENERATED_TOKENS.labels(kind).inc(count or 0)
        tokens += count or 0
    GENERATION_SECONDS.observe(result.generation_seconds)
    if tokens and result.generation_seconds > 0:
        TOKENS_PER_SECOND.observe(tokens / result.generation_seconds)
    QUEUE_WAIT_SECONDS.observe(max(0.0, result.queue_wait))


def answered(received_at: float | str | None, delivered_at: float | None = None) -> None:
    """Observe the time to answer of a delivered job (received_at as recorded by bot.core.jobs)."""
    if received_at in (None, ""):
        return
    elapsed = (delivered_at or time.time()) - float(received_at)
    TIME_TO_ANSWER.observe(max(0.0, elapsed))


def delivery_error(code: int | None, final: bool) -> None:
    """Count one failed WeChat send by its errcode."""
    DELIVERY_ERRORS.labels(
        "http" if code is None else str(code), "true" if final else "false"
    ).inc()
