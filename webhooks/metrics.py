"""`/metrics` (Prometheus text): this web process's figures plus what Redis knows of the system.

Webhook calls are counted per channel and outcome as they finish. At each scrape, queue depth,
jobs taken but not acknowledged, workers online per queue, each worker's generations in flight
(from its heartbeat, a few seconds old at most), the stage of the newest jobs and the WeCom
long connection's feedback by rating are read from Redis, so one scrape of the web shows the whole system; each worker's own detailed figures
(tokens, tokens/s, time to answer, delivery errors) are on its `MIMOCHAT_METRICS_PORT`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator

import redis
from flask import Blueprint, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.channels.wecom.connector import FEEDBACK_KINDS
from bot.core import jobs, logs, metrics
from bot.core.store import key
from bot.pipeline.ingest import Decision
from tasks import inspect
from webhooks.services import services

bp = Blueprint("metrics", __name__)

# Blueprints that are not a messaging channel: their calls are not webhook calls.
NOT_CHANNELS = frozenset({"health", "metrics", "sandbox", "admin"})


def note(decision: Decision, held: bool = False) -> None:
    """Tell the request's metrics what the webhook decided (a view calls this)."""
    if held:  # passive mode: silent until WeChat retries, answered with a 503 on purpose
        g.mimochat_outcome = "held"
    elif decision.busy:
        g.mimochat_outcome = "busy"
    elif decision.duplicate:
        g.mimochat_outcome = "duplicate"
    elif decision.job is not None:
        g.mimochat_outcome = "enqueued"
    elif decision.reply is not None:
        g.mimochat_outcome = "replied"
    else:
        g.mimochat_outcome = "ignored"


def _outcome(status: int) -> str:
    if g.get("mimochat_outcome") == "held":
        return "held"
    if status == 503:
        return "unavailable"
    if status >= 500:
        return "error"
    if status >= 400:
        return "rejected"
    return g.get("mimochat_outcome", "ok")


@bp.before_app_request
def _start() -> None:
    logs.clear()  # threads serve many requests: no request id from the previous one
    g.mimochat_started = time.perf_counter()


@bp.after_app_request
def _count(response: Response) -> Response:
    channel = request.blueprint
    if channel and channel not in NOT_CHANNELS and "mimochat_started" in g:
        elapsed = time.perf_counter() - g.mimochat_started
        metrics.webhook_call(channel, _outcome(response.status_code), elapsed)
    return response


class RedisFigures(Collector):
    """Figures that belong to no one process, read from Redis at scrape time."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mimochat_redis_up", "1 if Redis answered this scrape.")
        try:
            families = list(self._figures())
        except (redis.RedisError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _figures(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "mimochat_queue_depth", "Jobs waiting in a queue, not yet taken.", labels=["queue"]
        )
        for queue, length in inspect.queue_depths(self.client).items():
            depth.add_metric([queue], length)
        yield depth
        yield GaugeMetricFamily(
            "mimochat_queue_unacked",
            "Jobs taken by workers and not acknowledged yet (running or reserved).",
            value=inspect.unacked(self.client),
        )
        online = GaugeMetricFamily(
            "mimochat_workers_online", "Workers with a live heartbeat, by queue.", labels=["queue"]
        )
        for queue, names in inspect.workers_online(self.client).items():
            online.add_metric([queue], len(names))
        yield online
        batch = GaugeMetricFamily(
            "mimochat_engine_batch_size",
            "Generations in flight in each worker, from its heartbeat (every few seconds).",
            labels=["worker"],
        )
        for worker in inspect.workers(self.client):
            if "gpu" in worker.get("queues", []):
                batch.add_metric([worker["hostname"]], inspect.generating(worker))
        yield batch
        by_stage = GaugeMetricFamily(
            "mimochat_jobs",
            f"The newest {jobs.RECENT_MAX} jobs by the stage they reached (received = queued, "
            "started = generating, generated = delivering).",
            labels=["stage"],
        )
        for stage, count in sorted(self._stages().items()):
            by_stage.add_metric([stage], count)
        yield by_stage
        feedback = CounterMetricFamily(
            "mimochat_wecom_feedback",
            "Thumbs up/down on answers over the WeCom long connection, by rating (good, bad, "
            "cancelled, other); kept in Redis, so it counts every connector of the deployment.",
            labels=["rating"],
        )
        counted = {rating: 0 for rating in (*FEEDBACK_KINDS.values(), "other")}
        counted.update(self.client.hgetall(key("wecom", "feedback")))
        for rating, count in sorted(counted.items()):
            feedback.add_metric([str(rating)], int(count))
        yield feedback

    def _stages(self) -> Counter:
        ids = self.client.lrange(key("jobs", "recent"), 0, jobs.RECENT_MAX - 1)
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(key("job", job_id), "stage")
            return Counter(stage for stage in pipe.execute() if stage)


class WebOnly(Collector):
    """A registry's families but the worker-only series (which would read 0 here, not absent)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name not in metrics.WORKER_ONLY:
                yield family


def _process_registry() -> CollectorRegistry:
    source = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)  # every gunicorn worker's figures
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WebOnly(source))
    return registry


@bp.get("/metrics")
def scrape() -> Response:
    """Prometheus text: this process (or all gunicorn workers) and the figures in Redis."""
    shared = CollectorRegistry(auto_describe=False)
    shared.register(RedisFigures(services().redis))
    body = generate_latest(_process_registry()) + generate_latest(shared)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})
