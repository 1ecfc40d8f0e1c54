"""WeCom tasks: generate an answer that stream refreshes read (gpu), post it late if needed (io)."""

from __future__ import annotations

import logging
import time

from celery import Celery, Task

from bot.channels.wecom import streams as wecom
from bot.channels.wecom.api import WeComAPIError, post_markdown
from bot.core import metrics
from bot.core.settings import Settings
from bot.pipeline import service
from tasks import runtime
from tasks.celery_app import IO_QUEUE
from tasks.celery_app import WECOM_CHECK as CHECK
from tasks.celery_app import WECOM_GENERATE as GENERATE

log = logging.getLogger(__name__)
MAX_RETRIES = 8


def register(app: Celery, settings: Settings) -> None:
    """Define the WeCom tasks on `app`."""

    @app.task(name=GENERATE, acks_late=True)
    def generate(job: dict) -> None:
        started = time.time()
        with metrics.generating():
            result = service.answer(
                job,
                settings=settings,
                client=runtime.redis_client(settings),
                engine=runtime.engine(settings),
            )
        if float(result.get("answered_at") or 0) >= started:  # not an earlier try's answer
            metrics.generation_done(result)
        # Stream refreshes read the answer from Redis; if none takes it in the grace period,
        # the check posts it to response_url.
        check = {"stream_id": job["stream_id"], "job_id": job["job_id"]}
        app.send_task(CHECK, args=[check], queue=IO_QUEUE, countdown=settings.wecom_fallback_grace)

    @app.task(name=CHECK, bind=True, acks_late=True, max_retries=MAX_RETRIES)
    def check(self: Task, payload: dict) -> str:
        try:
            return wecom.check_stream(
                payload["stream_id"],
                settings=settings,
                client=runtime.redis_client(settings),
                post=post_markdown,
            )
        except WeComAPIError as exc:
            if exc.transient and self.request.retries < MAX_RETRIES:
                log.warning("response_url post for job %s failed (%s), retrying", payload, exc)
                raise self.retry(countdown=min(60, 2**self.request.retries), exc=exc) from None
            log.error("response_url post for job %s failed for good: %s", payload, exc)
            return "failed"
