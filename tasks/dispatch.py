"""Hand-offs between tasks (and from the sweeper): typed payloads onto the right queue."""

from __future__ import annotations

import logging

import redis
from celery import Celery

from bot.channels.wecom.streams import show_final
from bot.core.contracts import Answer, Job, StreamCheck
from bot.core.settings import Settings
from bot.pipeline.sweeper import Actions
from tasks.names import DELIVER, GENERATE, IO_QUEUE, ROUTES, WECOM_CHECK, WECOM_GENERATE

log = logging.getLogger(__name__)

# Transient failures a task retries with Celery's own backoff (Redis, the network).
TRANSIENT: tuple[type[BaseException], ...] = (redis.RedisError, ConnectionError, TimeoutError)


def retry_options(settings: Settings) -> dict[str, object]:
    """Celery's own retries for transient failures: doubling waits with jitter, bounded."""
    return {
        "autoretry_for": TRANSIENT,
        "retry_backoff": True,
        "retry_backoff_max": settings.retry_backoff_max,
        "retry_jitter": True,
        "max_retries": settings.task_retries,
    }


def requeue(app: Celery, job: Job) -> None:
    """Put a job (back) on the gpu queue."""
    name = WECOM_GENERATE if job.reply_mode == "stream" else GENERATE
    app.send_task(name, args=[job.wire()], queue=ROUTES[name])


def deliver(app: Celery, settings: Settings, client: redis.Redis, result: Answer) -> None:
    """Hand an answer to its channel's delivery: the WeChat send, or WeCom's stream check."""
    job = result.job
    if job.reply_mode == "stream":
        show_final(client, result)  # what the next stream refresh shows (apologies included)
        check = StreamCheck(key=job.key, stream_id=job.stream_id, job_id=job.job_id)
        app.send_task(
            WECOM_CHECK,
            args=[check.wire()],
            queue=IO_QUEUE,
            countdown=settings.wecom_fallback_grace,
        )
        return
    app.send_task(DELIVER, args=[result.wire()], queue=IO_QUEUE)


def sweeper_actions(app: Celery, settings: Settings, client: redis.Redis) -> Actions:
    """What the sweeper may do, bound to this app."""
    return Actions(
        requeue=lambda job: requeue(app, job),
        deliver=lambda result: deliver(app, settings, client, result),
    )
