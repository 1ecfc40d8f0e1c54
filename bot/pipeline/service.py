"""The use cases: take a message in, answer a job with the engine, deliver an answer.

Adapters (the Flask views and the Celery tasks) call these functions and nothing else of
substance; enqueueing is passed in as a callable so that this module never imports Celery.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from bot.channels.wechat import reply_mode
from bot.channels.wechat.mailbox import PART_LIMIT, Mailbox, is_continue
from bot.channels.wechat.reply_mode import ServiceWindow
from bot.core import jobs, logs
from bot.core.contracts import IncomingMessage, new_id
from bot.core.progress import ProgressWriter
from bot.core.settings import Settings
from bot.core.store import key
from bot.engine.base import Engine, Generation, GenerationRequest
from bot.pipeline import commands, moderation
from bot.pipeline.conversations import Conversations
from bot.pipeline.prompting import prompt_budget, trim_history

log = logging.getLogger(__name__)

Job = dict[str, Any]
Enqueue = Callable[[Job], None]

BUSY_TEXT = (
    "I'm answering a lot of questions right now. Please ask again in a minute. "
    "现在提问的人太多了，请一分钟后再问我一次。"
)
APOLOGY_TEXT = (
    "Sorry, something went wrong while I was thinking about that. Please ask again in a moment. "
    "抱歉，我刚才出了点问题，请稍后再问一次。"
)


@dataclass
class Decision:
    """What ingest decided for one message (or one retry of it)."""

    reply: str | None = None  # text to answer at once, needing no model
    job: Job | None = None  # the job enqueued now (first try only)
    job_id: str | None = None  # the message's job, also known to retries
    duplicate: bool = False
    attempt: int = 1  # 1 for WeChat's first try, 2.. for its retries
    take_pending: bool = False  # the user asked for the next waiting part
    busy: bool = False  # the queue was full: the reply says so and nothing was enqueued


class QueueFull(Exception):
    """Raised by an enqueue function when too many questions already wait for a GPU."""


@dataclass
class PassiveReply:
    """What the webhook's HTTP response carries: a text, or nothing after `hold` seconds."""

    text: str | None = None
    hold: float = 0.0  # > 0: answer nothing until the platform gives up and retries


def conversations(settings: Settings, client: redis.Redis) -> Conversations:
    """The conversation store configured by settings."""
    return Conversations(client, settings.history_ttl, settings.history_max_turns)


def ingest(
    message: IncomingMessage, *, settings: Settings, client: redis.Redis, enqueue: Enqueue
) -> Decision:
    """Deduplicate, answer what needs no model, and enqueue the rest (durably, before acking).

    Retries of one message get the first try's decision back: the same job, the same reply.
    """
    logs.bind(request_id=message.request_id)
    logs.stage(
        "received",
        channel=message.channel,
        user=message.user,
        kind=message.kind,
        msg_id=message.msg_id,
        text=message.content,
    )
    dedup_key = key("dedup", message.channel, message.dedup_key)
    decision_key = key("decision", message.channel, message.dedup_key)
    attempt = int(client.incr(key("attempts", message.channel, message.dedup_key)))
    client.expire(key("attempts", message.channel, message.dedup_key), settings.dedup_ttl)
    job_id = new_id()
    if not client.set(dedup_key, job_id, nx=True, ex=settings.dedup_ttl):
        log.info("retry %d of %s message %s", attempt, message.channel, message.dedup_key)
        return _earlier_decision(client, dedup_key, decision_key, attempt)
    try:
        decision = _decide(message, job_id, settings, client, enqueue)
    except Exception:
        # Not acknowledged: let WeChat's retry try again instead of finding a stale claim.
        client.delete(dedup_key, key("attempts", message.channel, message.dedup_key))
        raise
    decision.attempt = attempt
    if decision.busy:
        # Not enqueued, so not seen: a retry of this message may go through once there is room.
        client.delete(dedup_key, key("attempts", message.channel, message.dedup_key))
        return decision
    client.set(
        decision_key,
        json.dumps({"reply": decision.reply, "job_id": decision.job_id}),
        ex=settings.dedup_ttl,
    )
    return decision


def _earlier_decision(
    client: redis.Redis, dedup_key: str, decision_key: str, attempt: int
) -> Decision:
    raw = client.get(decision_key)
    if raw is None:  # the first try is still deciding (a few ms): attach to its job id
        return Decision(duplicate=True, attempt=attempt, job_id=client.get(dedup_key))
    earlier = json.loads(raw)
    return Decision(
        reply=earlier["reply"], job_id=earlier["job_id"], duplicate=True, attempt=attempt
    )


def _decide(
    message: IncomingMessage, job_id: str, settings: Settings, client: redis.Redis, enqueue: Enqueue
) -> Decision:
    store = conversations(settings, client)
    if message.kind != "event" and moderation.is_blocked(client, message.channel, message.user):
        return Decision(reply=moderation.BLOCKED_TEXT)
    if message.channel == "wechat" and message.event != "unsubscribe":
        ServiceWindow(settings, client, message.user).open()
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
    if is_continue(message.content) and _mailbox(settings, client, message).size():
        return Decision(take_pending=True)
    job = make_job(message, job_id)
    try:
        enqueue(job)
    except QueueFull as exc:
        logs.stage("busy", channel=message.channel, user=message.user, reason=str(exc))
        return Decision(reply=BUSY_TEXT, busy=True)
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
    return Decision(job=job, job_id=job["job_id"])


def _mailbox(settings: Settings, client: redis.Redis, message: IncomingMessage) -> Mailbox:
    return Mailbox(client, message.channel, message.user, settings.pending_ttl)


def respond(
    message: IncomingMessage,
    decision: Decision,
    *,
    settings: Settings,
    client: redis.Redis,
    started: float,
) -> PassiveReply:
    """The passive reply to one webhook call.

    Waiting answers ride on it (a passive reply costs no customer-service quota). In passive
    mode it waits for this message's own answer until shortly before WeChat gives up; on
    WeChat's last try it says honestly that the answer is on its way.
    """
    if decision.reply is not None:
        return PassiveReply(decision.reply)
    box = _mailbox(settings, client, message)
    if decision.take_pending:
        text, _remaining = box.take(PART_LIMIT)
        return PassiveReply(text or commands.NOTHING_PENDING_TEXT)
    job_id = decision.job_id
    if job_id is None or reply_mode.effective(settings, client) != reply_mode.PASSIVE:
        waiting = box.take(PART_LIMIT)[0] if box.size() else ""
        return PassiveReply(waiting or None)
    deadline = started + settings.wechat_passive_wait
    while not box.has_job(job_id) and time.time() < deadline:
        time.sleep(0.05)
    ready = box.has_job(job_id)
    if not ready and decision.attempt < settings.wechat_attempts:
        # Say nothing: WeChat retries after its timeout and the retry waits again.
        return PassiveReply(
            None, hold=max(0.0, started + settings.wechat_platform_timeout + 0.5 - time.time())
        )
    text, _remaining = box.take(PART_LIMIT)
    if not ready:
        text = f"{text}\n\n{commands.STILL_THINKING_TEXT}" if text else commands.STILL_THINKING_TEXT
        jobs.record(client, job_id, "notice", attempt=decision.attempt)
    return PassiveReply(text or None)


def make_job(message: IncomingMessage, job_id: str | None = None) -> Job:
    """The small JSON job that crosses the queue for one question."""
    return {
        "job_id": job_id or new_id(),
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
        deadline=started + settings.generation_timeout if settings.generation_timeout > 0 else None,
    )
    result: Job = {
        "job_id": job["job_id"],
        "request_id": job["request_id"],
        "channel": job["channel"],
        "user": job["user"],
        "account": job.get("account", ""),
        "question": job["text"][:200],
        "queue_wait": round(started - job.get("enqueued_at", started), 3),
    }
    jobs.record(client, job["job_id"], "started", queue_wait=result["queue_wait"])
    progress = ProgressWriter(client, job["job_id"])
    try:
        request.messages = _fit_window(engine, request, job["job_id"])
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
