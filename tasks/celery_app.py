"""The Celery app: Redis broker, JSON only, late acks, one job at a time per slot."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError

from bot.core.contracts import Answer, Job
from bot.core.settings import Settings
from bot.core.store import Unavailable, celery_url, connect, resolve_url
from bot.pipeline.ingest import QueueFull
from tasks import deliver, generate
from tasks.names import DELIVER, GENERATE, GPU_QUEUE, IO_QUEUE, QUEUES, ROUTES, WECOM_GENERATE

log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    """A Celery app for these settings, with the generation and delivery tasks registered."""
    broker = celery_url(resolve_url(settings))
    app = Celery("mimochat", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        # A worker that dies mid-task hands the job back instead of acking it.
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
        task_default_queue=IO_QUEUE,
        task_routes={name: {"queue": queue} for name, queue in ROUTES.items()},
        task_create_missing_queues=False,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            **restore_sweep(settings.visibility_timeout),
            "socket_connect_timeout": 1,
            "socket_timeout": 5,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=False,
        enable_utc=True,
    )
    generate.register(app, settings)
    deliver.register(app, settings)
    return app


def restore_sweep(visibility_timeout: int) -> dict[str, int]:
    """How often workers look for jobs whose worker died: about a tenth of the timeout.

    kombu's default sweep runs every ~100 s, which would leave a short timeout (a test's, or a
    deployment of fast generations) waiting far longer than it says.
    """
    period = max(1, min(100, visibility_timeout // 10))
    interval = min(10, period)
    return {"unacked_restore_interval": interval, "unacked_restore_throttle": period // interval}


class Producer:
    """What the webhook uses to enqueue: publishes durably or raises (then the webhook says 503)."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        self.max_queue = settings.max_queue
        self._url = resolve_url(settings)
        self._redis: redis.Redis | None = None

    def queue_length(self, queue: str = GPU_QUEUE) -> int:
        """Jobs waiting in a queue (not yet taken by a worker)."""
        if self._redis is None:
            self._redis = connect(self._url)
        return int(self._redis.llen(queue))

    def _send(self, name: str, payload: dict[str, Any], queue: str) -> None:
        try:
            self.app.send_task(name, args=[payload], queue=queue, retry=False)
        except (OperationalError, redis.RedisError, OSError) as exc:
            raise Unavailable(f"cannot enqueue on {queue}: {type(exc).__name__}") from exc

    def _check_room(self) -> None:
        """Raise QueueFull when MIMOCHAT_MAX_QUEUE questions already wait for a GPU."""
        if self.max_queue:
            try:
                waiting = self.queue_length(GPU_QUEUE)
            except (redis.RedisError, OSError) as exc:
                raise Unavailable(
                    f"cannot read the {GPU_QUEUE} queue: {type(exc).__name__}"
                ) from exc
            if waiting >= self.max_queue:
                raise QueueFull(f"{waiting} waiting, limit {self.max_queue}")

    def generation(self, job: Job) -> None:
        """Put one generation job on the gpu queue; QueueFull past MIMOCHAT_MAX_QUEUE waiting."""
        self._check_room()
        self._send(
            WECOM_GENERATE if job.reply_mode == "stream" else GENERATE, job.wire(), GPU_QUEUE
        )

    def delivery(self, result: Answer) -> None:
        """Put one delivery job on the io queue (raises Unavailable if Redis is down)."""
        self._send(DELIVER, result.wire(), IO_QUEUE)

    def wecom_generation(self, job: Job) -> None:
        """Put one WeCom question on the gpu queue; QueueFull past MIMOCHAT_MAX_QUEUE waiting."""
        self.generation(job)
