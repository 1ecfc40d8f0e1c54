"""The delivery task (io queue): send an answer through the WeChat API, retry what is transient."""

from __future__ import annotations

import logging

from celery import Celery, Task

from bot.channels.wechat import delivery
from bot.channels.wechat.api import WeChatAPIError
from bot.core import jobs, metrics
from bot.core.settings import Settings
from tasks import runtime

log = logging.getLogger(__name__)

MAX_RETRIES = 8


def backoff(retries: int) -> float:
    """Seconds before retry number `retries` + 1: 1, 2, 4 … capped at 60."""
    return float(min(60, 2**retries))


def register(app: Celery, settings: Settings) -> None:
    """Define the delivery task on `app`."""

    @app.task(name="mimochat.deliver", bind=True, acks_late=True, max_retries=MAX_RETRIES)
    def deliver(self: Task, result: dict) -> None:
        client = runtime.redis_client(settings)
        try:
            outcome = delivery.deliver(
                result, settings=settings, client=client, api=runtime.wechat_api(settings)
            )
        except WeChatAPIError as exc:
            retry = exc.transient and self.request.retries < MAX_RETRIES
            metrics.delivery_error(exc.code, final=not retry)
            if retry:
                log.warning(
                    "delivery of job %s failed (%s), retry %d",
                    result["job_id"],
                    exc,
                    self.request.retries + 1,
                )
                raise self.retry(countdown=backoff(self.request.retries), exc=exc) from None
            log.error("delivery of job %s failed for good: %s", result["job_id"], exc)
            delivery.record_failure(client, result, exc)
        else:
            if isinstance(outcome, dict) and outcome.get("sent_now"):
                received_at = jobs.get(client, result["job_id"]).get("received_at")
                metrics.answered(received_at, outcome.get("delivered_at"))

    @app.task(name="mimochat.typing", acks_late=True, ignore_result=True)
    def typing(job: dict, shown: int = 0) -> None:
        again = delivery.typing(
            job,
            settings=settings,
            client=runtime.redis_client(settings),
            api=runtime.wechat_api(settings),
        )
        if again and shown + 1 < delivery.TYPING_MAX:
            typing.apply_async(args=[job, shown + 1], countdown=delivery.TYPING_EVERY, queue="io")
