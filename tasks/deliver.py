"""The delivery tasks (io queue): WeChat sends and typing, WeCom's response_url check.

Transient failures retry with Celery's backoff; a delivery that outlives its retries (or that
WeChat refuses for good) parks the answer for the user's next message (`on_failure`).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from celery import Celery, Task

from bot.channels.wechat import delivery
from bot.channels.wechat.api import WeChatAPIError
from bot.channels.wecom import streams
from bot.channels.wecom.api import WeComAPIError, post_markdown
from bot.core import jobs, metrics
from bot.core.contracts import Answer, ContractError, Job, StreamCheck
from bot.core.settings import Settings
from tasks import dispatch, runtime
from tasks.names import DELIVER, IO_QUEUE, TYPING, WECOM_CHECK

log = logging.getLogger(__name__)


Payload = TypeVar("Payload", Answer, StreamCheck)


def _read(model: type[Payload], payload: Any) -> Payload | None:
    """The payload as `model`, or None with a log line (the ledger's sweeper redelivers it)."""
    try:
        return model.from_wire(payload)
    except ContractError as exc:
        log.error("%s payload refused (%s); the sweeper redelivers it", model.__name__, exc)
        return None


class Retry(Exception):
    """A transient platform failure: Celery retries the task with backoff."""


def register(app: Celery, settings: Settings) -> None:
    """Define the delivery tasks on `app`."""
    options = {**dispatch.retry_options(settings), "autoretry_for": (*dispatch.TRANSIENT, Retry)}

    def undelivered(
        task: Task, exc: BaseException, _id: str, args: tuple, _kw: dict, _e: Any
    ) -> None:
        """After the last retry (or a refusal for good): park the answer for the next message."""
        try:
            result = Answer.from_wire(args[0])
        except (ContractError, IndexError) as err:
            log.error("undeliverable payload refused (%s); the sweeper redelivers it", err)
            return
        cause = exc.__cause__ if isinstance(exc, Retry) and exc.__cause__ else exc
        log.error("delivery of job %s failed for good: %s", result.job_id, cause)
        delivery.park_after_failure(settings, runtime.redis_client(settings), result, cause)

    @app.task(name=DELIVER, bind=True, acks_late=True, on_failure=undelivered, **options)
    def deliver(self: Task, payload: Any) -> None:
        result = _read(Answer, payload)
        if result is None:
            return
        client = runtime.redis_client(settings)
        try:
            outcome = delivery.deliver(
                result, settings=settings, client=client, api=runtime.wechat_api(settings)
            )
        except WeChatAPIError as exc:
            retry = exc.transient and self.request.retries < settings.task_retries
            metrics.delivery_error(exc.code, final=not retry)
            if retry:
                log.warning("delivery of job %s failed (%s), retrying", result.job_id, exc)
                raise Retry(str(exc)) from exc
            raise
        if outcome.sent_now:
            received_at = jobs.get(client, result.job_id).get("received_at")
            metrics.answered(received_at, outcome.delivered_at)

    @app.task(name=TYPING, acks_late=True, ignore_result=True)
    def typing(payload: Any, shown: int = 0) -> None:
        try:
            job = Job.from_wire(payload)
        except ContractError as exc:
            log.info("typing payload refused (%s)", exc)
            return
        again = delivery.typing(
            job,
            settings=settings,
            client=runtime.redis_client(settings),
            api=runtime.wechat_api(settings),
        )
        if again and shown + 1 < delivery.TYPING_MAX:
            typing.apply_async(
                args=[payload, shown + 1], countdown=delivery.TYPING_EVERY, queue=IO_QUEUE
            )

    def not_posted(
        task: Task, exc: BaseException, _id: str, args: tuple, _kw: dict, _e: Any
    ) -> None:
        """response_url refused for good: the record keeps the answer, parked, with why."""
        log.error("response_url post failed for good: %s", exc.__cause__ or exc)
        try:
            check = StreamCheck.from_wire(args[0])
        except (ContractError, IndexError):
            return
        streams.give_up(runtime.redis_client(settings), check.stream_id, f"response_url: {exc}")

    @app.task(name=WECOM_CHECK, bind=True, acks_late=True, on_failure=not_posted, **options)
    def check(self: Task, payload: Any) -> str:
        job = _read(StreamCheck, payload)
        if job is None:
            return "refused"
        try:
            return streams.check_stream(
                job.stream_id,
                settings=settings,
                client=runtime.redis_client(settings),
                post=post_markdown,
            )
        except WeComAPIError as exc:
            if exc.transient:
                log.warning("response_url post for %s failed (%s), retrying", job.stream_id, exc)
                raise Retry(str(exc)) from exc
            raise
