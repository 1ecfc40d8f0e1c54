"""Answer: generate one job's answer with the engine, once, and record the turn.

The ledger decides who generates: a job starts only from `received`/`queued` (or as the same
worker's own retry), so a second copy of a job — a redelivery, a sweeper's requeue, a WeChat
retry that re-sent it — finds the record moving and stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from bot.console import workers
from bot.core import jobs
from bot.core.contracts import Answer, Job
from bot.core.progress import ProgressWriter
from bot.core.settings import Settings
from bot.engine.base import Engine, Generation, GenerationRequest
from bot.pipeline import guards, thinking
from bot.pipeline.conversations import conversations
from bot.pipeline.ledger import Ledger
from bot.pipeline.prompting import prompt_budget, trim_history

log = logging.getLogger(__name__)

APOLOGY_TEXT = (
    "Sorry, something went wrong while I was thinking about that. Please ask again in a moment. "
    "抱歉，我刚才出了点问题，请稍后再问一次。"
)


def start(ledger: Ledger, job: Job, worker: str) -> bool:
    """Take the message for generation; False when another try already owns or finished it."""
    moved = ledger.move(
        job.key, "generating", since=("received", "queued"), worker=worker, started_at=time.time()
    )
    if moved.ok:
        return True
    if moved.was == "":
        # No record: a job queued before the ledger existed, or one whose record expired.
        ledger.claim(job.key, channel=job.channel, user=job.user, job_id=job.job_id, job=job)
        return ledger.move(job.key, "generating", since=("received",), worker=worker).ok
    if moved.was == "generating":
        record = ledger.get(job.key)
        if record is not None and record.worker == worker:
            return True  # this worker's own retry of the task
        if record is not None and record.worker not in workers.alive_ids(ledger.redis):
            # Its holder died (Celery redelivered the job, or a shutdown handed it back).
            return ledger.move(
                job.key,
                "generating",
                since=("generating",),
                when={"worker": record.worker},
                worker=worker,
                started_at=time.time(),
            ).ok
    log.info("job %s: message %s is %s already; this copy stops", job.job_id, job.key, moved.was)
    return False


def answer(
    job: Job, *, settings: Settings, client: redis.Redis, engine: Engine, worker: str = ""
) -> Answer | None:
    """Generate (once) the answer to a job and record the turn; None if another try owns it."""
    ledger = Ledger(client, settings)
    if not start(ledger, job, worker):
        return None
    store = conversations(settings, client)
    result = store.stored_answer(job.job_id)
    if result is not None:
        log.info("job %s already answered; handing the stored answer on", job.job_id)
    else:
        result = store.record(job, _generate(job, settings, client, engine, store.history))
    ledger.move(
        job.key,
        "answered",
        since=("generating",),
        when={"worker": worker},
        reason=result.error or None,
        apology=1 if result.apology else None,
    )
    return result


def _generate(
    job: Job,
    settings: Settings,
    client: redis.Redis,
    engine: Engine,
    history_of: Callable[[str, str], list[dict[str, Any]]],
) -> Answer:
    started = time.time()
    history = [
        {"role": m["role"], "content": m["content"]} for m in history_of(job.channel, job.user)
    ]
    request = GenerationRequest(
        messages=[*history, {"role": "user", "content": job.text}],
        max_new_tokens=settings.max_new_tokens,
        thinking_budget=thinking.budget(settings, client, job),  # the asker's /think
        temperature=settings.temperature,
        top_p=settings.top_p,
        request_id=job.request_id,
        deadline=started + settings.generation_timeout if settings.generation_timeout > 0 else None,
    )
    queue_wait = round(started - job.enqueued_at, 3)
    jobs.record(client, job.job_id, "started", queue_wait=queue_wait)
    progress = ProgressWriter(client, job.job_id)
    try:
        request.messages = _fit_window(engine, request, job.job_id)
        generation = _stream(engine, request, progress)
    except redis.RedisError:
        raise  # transient: the task retries the job (Redis holds the record it resumes from)
    except Exception as exc:
        log.exception("generation failed for job %s", job.job_id)
        result = apology(job, f"generation failed: {type(exc).__name__}")
        progress.finish(APOLOGY_TEXT, "", state="failed")
    else:
        result = Answer(
            job=job,
            answer=generation.answer,
            reasoning=generation.reasoning,
            prompt_tokens=generation.prompt_tokens,
            reasoning_tokens=generation.reasoning_tokens,
            answer_tokens=generation.answer_tokens,
            finish_reason=generation.finish_reason,
        )
        result = guards.check_answer(settings, client, result)  # before anyone sees it
        progress.finish(result.answer, result.reasoning)
    result.queue_wait = queue_wait
    result.generation_seconds = round(time.time() - started, 3)
    result.answered_at = time.time()
    jobs.record(
        client,
        job.job_id,
        "generated",
        generation_seconds=result.generation_seconds,
        prompt_tokens=result.prompt_tokens,
        reasoning_tokens=result.reasoning_tokens,
        answer_tokens=result.answer_tokens,
        finish_reason=result.finish_reason or None,
        error=result.error or None,
    )
    return result


def apology(job: Job, reason: str) -> Answer:
    """The answer a user gets when theirs could not be made: the apology, not remembered."""
    return Answer(job=job, answer=APOLOGY_TEXT, error=reason[:200], remember=False)


def _fit_window(engine: Engine, request: GenerationRequest, job_id: str) -> list[dict[str, str]]:
    """The conversation trimmed by tokens to leave room for the reasoning budget and answer."""
    limit = prompt_budget(engine.context_length, request.thinking_budget, request.max_new_tokens)
    window = trim_history(request.messages, engine.count_tokens, limit)
    if window.dropped_turns or window.cut_chars:
        log.info(
            "job %s: %d old turns dropped, %d characters cut from the question to fit %d tokens",
            job_id,
            window.dropped_turns,
            window.cut_chars,
            limit,
        )
    return window.messages


def _stream(engine: Engine, request: GenerationRequest, progress: ProgressWriter) -> Generation:
    """Run a streamed generation, publishing the text as it grows; returns the final result."""
    for event in engine.stream(request):
        if event.kind == "done" and event.generation is not None:
            return event.generation
        progress.add(event.kind, event.text)
    raise RuntimeError("the engine's stream ended without a result")
