"""The generation tasks (gpu queue): answer one typed job, then hand the answer to delivery.

Transient errors retry with Celery's backoff; after the last try the user gets the apology
(`on_failure`); a payload that cannot be read runs the ledger's own copy of the job.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, Task

from bot.console.workers import worker_id
from bot.core import metrics
from bot.core.contracts import ContractError, Job
from bot.core.settings import Settings
from bot.pipeline.answer import answer, apology
from bot.pipeline.ledger import Ledger
from tasks import dispatch, runtime
from tasks.names import GENERATE, IO_QUEUE, TYPING, WECOM_GENERATE

log = logging.getLogger(__name__)


def read_job(settings: Settings, payload: Any) -> Job | None:
    """The job in a payload; a payload that cannot be read falls back to the ledger's copy."""
    try:
        return Job.from_wire(payload)
    except ContractError as exc:
        msg_key = payload.get("key") if isinstance(payload, dict) else None
        record = Ledger(runtime.redis_client(settings)).get(msg_key) if msg_key else None
        try:
            job = record.job if record else None
        except ContractError:
            job = None
        if job is None:
            log.error("job refused (%s); the sweeper apologizes for it if it is known", exc)
            return None
        log.error("job payload refused (%s); running the ledger's copy of %s", exc, msg_key)
        return job


def register(app: Celery, settings: Settings) -> None:
    """Define the generation tasks on `app`."""

    def failed(task: Task, exc: BaseException, _id: str, args: tuple, _kw: dict, _e: Any) -> None:
        """After the last retry: the apology, recorded with the reason (never silence)."""
        job = read_job(settings, args[0] if args else None)
        if job is None:
            return
        client = runtime.redis_client(settings)
        reason = f"generation failed after {task.request.retries} retries: {type(exc).__name__}"
        log.error("job %s: %s; apologizing", job.job_id, reason)
        moved = Ledger(client).move(
            job.key,
            "answered",
            since=("received", "queued", "generating"),
            reason=reason,
            apology=1,
        )
        if moved.ok:
            dispatch.deliver(app, settings, client, apology(job, reason))

    def run(task: Task, payload: Any) -> None:
        job = read_job(settings, payload)
        if job is None:
            return
        started = time.time()
        client = runtime.redis_client(settings)
        if job.reply_mode == "customer_service":
            app.send_task(TYPING, args=[job.wire()], queue=IO_QUEUE)
        with metrics.generating():
            result = answer(
                job,
                settings=settings,
                client=client,
                engine=runtime.engine(settings),
                worker=worker_id(task.request.hostname or "worker"),
            )
        if result is None:
            return  # another copy of this job owns the message
        if result.answered_at >= started:  # not an earlier try's answer
            metrics.generation_done(result)
        dispatch.deliver(app, settings, client, result)

    options = {**dispatch.retry_options(settings), "on_failure": failed}

    @app.task(name=GENERATE, bind=True, acks_late=True, **options)
    def generate(self: Task, payload: Any) -> None:
        run(self, payload)

    @app.task(name=WECOM_GENERATE, bind=True, acks_late=True, **options)
    def wecom_generate(self: Task, payload: Any) -> None:
        run(self, payload)
