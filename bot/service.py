"""The use cases: take a message in, answer a job with the engine, deliver an answer.

Adapters (the Flask views and the Celery tasks) call these functions and nothing else of
substance; enqueueing is passed in as a callable so that this module never imports Celery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from bot import commands, jobs, moderation
from bot.conversations import Conversations
from bot.engine.base import Engine, Generation, GenerationRequest
from bot.messages import IncomingMessage, new_id
from bot.progress import ProgressWriter
from bot.settings import Settings
from bot.store import key

log = logging.getLogger(__name__)

Job = dict[str, Any]
Enqueue = Callable[[Job], None]

APOLOGY_TEXT = (
    "Sorry, something went wrong while I was thinking about that. Please ask again in a moment. "
    "抱歉，我刚才出了点问题，请稍后再问一次。"
)


@dataclass
class Decision:
    """What the webhook answers now: a passive text, or nothing (`success`)."""

    reply: str | None = None
    job: Job | None = None
    duplicate: bool = False


def conversations(settings: Settings, client: redis.Redis) -> Conversations:
    """The conversation store configured by settings."""
    return Conversations(client, settings.history_ttl, settings.history_max_turns)


def ingest(
    message: IncomingMessage, *, settings: Settings, client: redis.Redis, enqueue: Enqueue
) -> Decision:
    """Deduplicate, answer what needs no model, and enqueue the rest (durably, before acking)."""
    dedup_key = key("dedup", message.channel, message.dedup_key)
    if not client.set(dedup_key, message.request_id, nx=True, ex=settings.dedup_ttl):
        log.info("duplicate %s message %s ignored", message.channel, message.dedup_key)
        return Decision(duplicate=True)
    try:
        return _decide(message, settings, client, enqueue)
    except Exception:
        # Not acknowledged: let WeChat's retry try again instead of finding a stale claim.
        client.delete(dedup_key)
        raise


def _decide(
    message: IncomingMessage, settings: Settings, client: redis.Redis, enqueue: Enqueue
) -> Decision:
    store = conversations(settings, client)
    if message.kind != "event" and moderation.is_blocked(client, message.channel, message.user):
        return Decision(reply=moderation.BLOCKED_TEXT)
    if message.kind == "event":
        if message.event == "subscribe":
            return Decision(reply=commands.WELCOME_TEXT)
        if message.event == "unsubscribe":
            store.reset(message.channel, message.user)
        return Decision()
    if message.kind == "image":
        return Decision(reply=commands.IMAGE_TEXT)
    if message.kind not in ("text", "voice"):
        return Decision()
    if not message.content:
        return Decision(reply=commands.EMPTY_VOICE_TEXT if message.kind == "voice" else None)
    command = commands.match_command(message.content)
    if command == "help":
        return Decision(reply=commands.HELP_TEXT)
    if command == "reset":
        store.reset(message.channel, message.user)
        return Decision(reply=commands.RESET_TEXT)
    job = make_job(message)
    enqueue(job)
    jobs.record(
        client,
        job["job_id"],
        "received",
        channel=message.channel,
        user=message.user,
        kind=message.kind,
        msg_id=message.msg_id,
        text=message.content[:500],
    )
    return Decision(job=job)


def make_job(message: IncomingMessage) -> Job:
    """The small JSON job that crosses the queue for one question."""
    return {
        "job_id": new_id(),
        "request_id": message.request_id,
        "channel": message.channel,
        "user": message.user,
        "account": message.account,
        "text": message.content,
        "msg_id": message.msg_id,
        "received_at": message.received_at,
        "enqueued_at": time.time(),
    }


def answer(job: Job, *, settings: Settings, client: redis.Redis, engine: Engine) -> Job:
    """Generate (once) the answer to a job and record the turn; returns the delivery job."""
    store = conversations(settings, client)
    existing = store.stored_answer(job["job_id"])
    if existing:
        log.info("job %s already answered; handing the stored answer on", job["job_id"])
        return existing
    started = time.time()
    history = [
        {"role": m["role"], "content": m["content"]}
        for m in store.history(job["channel"], job["user"])
    ]
    request = GenerationRequest(
        messages=[*history, {"role": "user", "content": job["text"]}],
        max_new_tokens=settings.max_new_tokens,
        thinking_budget=settings.thinking_budget,
        temperature=settings.temperature,
        top_p=settings.top_p,
        request_id=job["request_id"],
    )
    if settings.generation_delay:
        time.sleep(settings.generation_delay)
    result: Job = {
        "job_id": job["job_id"],
        "request_id": job["request_id"],
        "channel": job["channel"],
        "user": job["user"],
        "account": job.get("account", ""),
        "queue_wait": round(started - job.get("enqueued_at", started), 3),
    }
    jobs.record(client, job["job_id"], "started", queue_wait=result["queue_wait"])
    progress = ProgressWriter(client, job["job_id"])
    try:
        generation = _stream(engine, request, progress)
    except Exception as exc:
        log.exception("generation failed for job %s", job["job_id"])
        result.update(answer=APOLOGY_TEXT, reasoning="", error=type(exc).__name__, remember=False)
        progress.finish(APOLOGY_TEXT, "", state="failed")
    else:
        result.update(
            answer=generation.answer,
            reasoning=generation.reasoning,
            prompt_tokens=generation.prompt_tokens,
            reasoning_tokens=generation.reasoning_tokens,
            answer_tokens=generation.answer_tokens,
            finish_reason=generation.finish_reason,
        )
        progress.finish(generation.answer, generation.reasoning)
    result["generation_seconds"] = round(time.time() - started, 3)
    result["answered_at"] = time.time()
    jobs.record(
        client,
        job["job_id"],
        "generated",
        generation_seconds=result["generation_seconds"],
        prompt_tokens=result.get("prompt_tokens"),
        reasoning_tokens=result.get("reasoning_tokens"),
        answer_tokens=result.get("answer_tokens"),
        finish_reason=result.get("finish_reason"),
        error=result.get("error"),
    )
    return store.record(job, result)


def _stream(engine: Engine, request: GenerationRequest, progress: ProgressWriter) -> Generation:
    """Run a streamed generation, publishing the text as it grows; returns the final result."""
    for event in engine.stream(request):
        if event.kind == "done" and event.generation is not None:
            return event.generation
        progress.add(event.kind, event.text)
    raise RuntimeError("the engine's stream ended without a result")
