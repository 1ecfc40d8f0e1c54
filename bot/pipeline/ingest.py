"""Ingest: take a message in — ledger record, commands, enqueue — before the webhook acknowledges.

Adapters pass enqueueing in as a callable, so this module never imports Celery. The record is
created (with the dedupe) before anything else, and the job is written into it before it is
enqueued: whatever line fails, a retry of the message or the sweeper finds where it stopped.
A plain question takes one round trip (`_admit`: the ledger's admit script claims, reads and
enqueues in one atomic step); anything else two (claim and reads, then decide).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis

from bot.channels.signing import reused
from bot.channels.wechat import reply_mode
from bot.channels.wechat.mailbox import Mailbox, is_continue
from bot.core import jobs, logs
from bot.core.contracts import Envelope, IncomingMessage, Job, ReplyMode, message_key, new_id
from bot.core.settings import Settings
from bot.core.store import WriteOnce, WriteOnceConflict
from bot.pipeline import commands, guards, moderation, thinking
from bot.pipeline.conversations import conversations
from bot.pipeline.ledger import Gate, Ledger, Stamp

log = logging.getLogger(__name__)

Enqueue = Callable[[Job], None]


class Publisher(Protocol):
    """An enqueue function that can also build its broker message without sending it.

    Ingest then pushes that message inside the ledger's admit or enqueue script: no moment
    where the job is in the queue but its record does not say so.
    """

    def __call__(self, job: Job) -> None:
        """Publish the job now (room-checked); QueueFull when too many wait."""

    def envelope(self, job: Job) -> Envelope | None:
        """The broker's message for the job, unsent; None where the broker cannot hand one."""


REDECIDE_AFTER = 2.0  # seconds: a first try still "received" with no decision this late died

BUSY_TEXT = (
    "I'm answering a lot of questions right now. Please ask again in a minute. "
    "现在提问的人太多了，请一分钟后再问我一次。"
)


class QueueFull(Exception):
    """Raised by an enqueue function when too many questions already wait for a GPU."""


@dataclass
class Decision:
    """What ingest decided for one message (or one retry of it)."""

    reply: str | None = None  # text to answer at once, needing no model
    job: Job | None = None  # the job enqueued now (first try only)
    job_id: str | None = None  # the message's job, also known to retries
    duplicate: bool = False
    attempt: int = 1  # 1 for the platform's first try, 2.. for its retries
    take_pending: bool = False  # the user asked for the next waiting part
    busy: bool = False  # the queue was full: the reply says so and nothing was enqueued
    reply_mode: str = ""  # how the answer goes back (decided once, carried in the job)
    key: str = ""  # the message's ledger identity
    waiting: int | None = None  # parts in the user's mailbox at the first look (None: unread)


def ingest(
    message: IncomingMessage,
    *,
    settings: Settings,
    client: redis.Redis,
    enqueue: Enqueue,
    seals: Sequence[WriteOnce] = (),
) -> Decision:
    """Record, deduplicate, answer what needs no model, and enqueue the rest (before acking).

    Retries of one message get the first try's decision back: the same job, the same reply.
    `seals` (the call's signature bound to its body) are written with the claim, first: one
    bound to another body refuses the call (ProtocolError 403) and claims nothing.
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
    ledger = Ledger(client, settings)
    msg_key = message_key(message.channel, message.dedup_key)
    job_id = new_id()
    ready = _ready(message, msg_key, job_id, settings, enqueue)
    decision: Decision | None = None
    try:
        if ready is not None:
            look, decision = _admit(message, ready, settings, client, ledger, seals)
        else:
            look = _first_look(message, msg_key, job_id, settings, client, ledger, seals)
    except WriteOnceConflict:
        raise reused() from None
    if not look.created:
        log.info("retry %d of %s message %s", look.tries, message.channel, message.dedup_key)
        return _earlier(message, msg_key, look.tries, settings, client, ledger, enqueue)
    if decision is None:
        decision = _decide_or_release(
            message, msg_key, job_id, look, settings, client, ledger, enqueue
        )
    decision.attempt = look.tries
    if decision.waiting is None and message.channel == "wechat":
        decision.waiting = look.waiting
    return decision


@dataclass
class Look:
    """What ingest's first round trip learnt: the claim's outcome and what deciding reads."""

    created: bool
    tries: int
    blocked: bool = False
    passive_only: bool = False
    waiting: int = 0  # parts in the user's mailbox (read only for a "continue")


@dataclass(frozen=True)
class Ready:
    """A plain question's job, its broker message and timeline, made before its claim."""

    job: Job
    envelope: Envelope
    timeline: dict[str, str]


def _ready(
    message: IncomingMessage, msg_key: str, job_id: str, settings: Settings, enqueue: Enqueue
) -> Ready | None:
    """The job of a plain question, made before the claim so that one script claims and
    enqueues it (`_admit`); None where deciding needs more than that script reads: events,
    commands, a "continue", guards that count or ask, a publisher that hands no message.

    Made for a retry too, where it goes unused (the claim finds the record): retries are few.
    """
    text = message.content
    if message.kind not in ("text", "voice") or not text:
        return None
    if commands.match_command(text) or commands.think_choice(text) is not None:
        return None
    if is_continue(text) or not guards.passes_quietly(settings, user=message.user, text=text):
        return None
    build: Callable[[Job], Envelope | None] | None = getattr(enqueue, "envelope", None)
    if build is None:
        return None
    # `auto` starts from customer service; the script stops the job if the account turned out
    # passive-only, and the two-step path makes the passive one.
    mode: ReplyMode = (
        "passive" if settings.wechat_reply_mode == reply_mode.PASSIVE else "customer_service"
    )
    job = make_job(message, msg_key, job_id, mode)
    envelope = build(job)
    return Ready(job, envelope, _timeline(job, message.kind)) if envelope else None


def _admit(
    message: IncomingMessage,
    ready: Ready,
    settings: Settings,
    client: redis.Redis,
    ledger: Ledger,
    seals: Sequence[WriteOnce],
) -> tuple[Look, Decision | None]:
    """One round trip for a plain question: the claim, the reads and the enqueue in one script.

    The decision is None where the reads stopped the enqueue (a blocked user, a passive-only
    account): the record waits in `received` and `_decide` takes it from there with the reads.
    """
    job = ready.job
    auto = settings.wechat_reply_mode == "auto"
    gate = Gate(
        blocked=moderation.blocked_key(message.channel),
        member=message.user,
        stop_flag=reply_mode.passive_only_key(settings) if auto else None,
        count=Mailbox(client, message.channel, message.user, settings.pending_ttl).key,
    )
    got = ledger.admit(
        job,
        ready.envelope,
        jobs.stamp(job.job_id, "received", **ready.timeline),
        gate,
        stamps=_stamps(message, settings, client),
        once=seals,
        **_record_fields(message, job.job_id),
    )
    look = Look(got.created, got.tries, got.blocked, got.flagged, got.count)
    done = got.enqueued
    if not got.created or done is None:
        return look, None
    if done.full:
        decision = _busy(job, f"{done.waiting} waiting, limit {ready.envelope.limit}")
        ledger.forget(job.key)  # not enqueued, so not seen: a retry may go through later
        return look, decision
    guards.note_pass()
    return look, _queued(job, ready.timeline)


def _stamps(message: IncomingMessage, settings: Settings, client: redis.Redis) -> list[Stamp]:
    """What a message's claim writes on its first try: WeChat's customer-service window."""
    if message.channel != "wechat" or message.event == "unsubscribe":
        return []
    # WeChat opens the window on any message from the user, blocked or not.
    window = reply_mode.ServiceWindow(settings, client, message.user)
    return [Stamp(window.key, window.seconds, window.fresh())]


def _record_fields(message: IncomingMessage, job_id: str) -> dict[str, str | None]:
    """The fields a message's record starts with."""
    return {
        "channel": message.channel,
        "user": message.user,
        "kind": message.kind,
        "msg_id": message.msg_id,
        "job_id": job_id,
        "request_id": message.request_id,
    }


def _first_look(
    message: IncomingMessage,
    msg_key: str,
    job_id: str,
    settings: Settings,
    client: redis.Redis,
    ledger: Ledger,
    seals: Sequence[WriteOnce] = (),
) -> Look:
    """One round trip: the claim (the user's service window opened with it, first try only)
    and the reads the decision needs (block list, passive-only flag, mailbox size).

    Reads ride along even on a retry, where they go unused: cheaper than a second trip.
    """
    stamps = _stamps(message, settings, client)
    auto = settings.wechat_reply_mode == "auto"
    box = Mailbox(client, message.channel, message.user, settings.pending_ttl)
    # WeChat's passive reply carries waiting parts: their count rides along for it too.
    want_box = message.channel == "wechat" or (
        message.kind in ("text", "voice") and is_continue(message.content or "")
    )
    with client.pipeline(transaction=False) as pipe:
        ledger.claim_on(
            pipe,
            msg_key,
            stamps=stamps,
            once=seals,
            **_record_fields(message, job_id),
        )
        pipe.sismember(moderation.blocked_key(message.channel), message.user)
        if auto:
            pipe.exists(reply_mode.passive_only_key(settings))
        if want_box:
            pipe.llen(box.key)
        answers = pipe.execute()
    created, tries = ledger.claimed(answers[0])
    rest = iter(answers[2:])
    return Look(
        created,
        tries,
        blocked=bool(answers[1]),
        passive_only=bool(next(rest)) if auto else False,
        waiting=int(next(rest)) if want_box else 0,
    )


def _decide_or_release(
    message: IncomingMessage,
    msg_key: str,
    job_id: str,
    look: Look,
    settings: Settings,
    client: redis.Redis,
    ledger: Ledger,
    enqueue: Enqueue,
) -> Decision:
    try:
        decision = _decide(message, msg_key, job_id, look, settings, client, ledger, enqueue)
    except Exception:
        # Not acknowledged: the platform retries. A job that may be in the queue keeps its
        # record (the retry re-sends the same job; the worker runs it once); otherwise the
        # retry starts anew.
        try:
            record = ledger.get(msg_key)
            if record is not None and "job" not in record.fields:
                ledger.forget(msg_key)
        except redis.RedisError:
            pass  # the sweeper finds the record past its deadline
        raise
    if decision.busy:
        # Not enqueued, so not seen: a retry of this message may go through once there is room.
        ledger.forget(msg_key)
    return decision


def _earlier(
    message: IncomingMessage,
    msg_key: str,
    tries: int,
    settings: Settings,
    client: redis.Redis,
    ledger: Ledger,
    enqueue: Enqueue,
) -> Decision:
    record = ledger.get(msg_key)
    if record is None:  # expired between the claim and now: treat as new
        return Decision(duplicate=True, attempt=tries)
    fields = record.fields
    job = record.job
    mode = fields.get("reply_mode", "")
    if "reply" in fields:
        return Decision(
            reply=fields["reply"] or None,
            duplicate=True,
            attempt=tries,
            key=msg_key,
            take_pending=fields.get("take_pending") == "1",
        )
    if record.state == "received" and job is not None:
        # The first try failed after writing its job (the webhook said 503): send it again.
        # If it had reached the queue, the worker finds the record moving and runs it once.
        try:
            enqueue(job)
            ledger.move(msg_key, "queued", since=("received",))
        except QueueFull:
            pass  # the record still holds the job: the sweeper queues it once there is room
    elif record.state == "received" and _stale(fields):
        log.warning("message %s: the first try died before deciding; deciding now", msg_key)
        look = _look_again(message, settings, client)
        job_id = fields.get("job_id") or new_id()
        decision = _decide_or_release(
            message, msg_key, job_id, look, settings, client, ledger, enqueue
        )
        decision.attempt = tries
        return decision
    return Decision(
        job_id=fields.get("job_id"), duplicate=True, attempt=tries, reply_mode=mode, key=msg_key
    )


def _look_again(message: IncomingMessage, settings: Settings, client: redis.Redis) -> Look:
    """The reads of the first look, for a first try that died before deciding (rare)."""
    box = Mailbox(client, message.channel, message.user, settings.pending_ttl)
    return Look(
        created=True,
        tries=1,
        blocked=moderation.is_blocked(client, message.channel, message.user),
        passive_only=reply_mode.effective(settings, client) == reply_mode.PASSIVE,
        waiting=box.size(),
    )


def _stale(fields: dict[str, str]) -> bool:
    return time.time() - float(fields.get("updated_at") or 0) > REDECIDE_AFTER


def _decide(
    message: IncomingMessage,
    msg_key: str,
    job_id: str,
    look: Look,
    settings: Settings,
    client: redis.Redis,
    ledger: Ledger,
    enqueue: Enqueue,
) -> Decision:
    def at_once(text: str | None, via: str = "immediate", reason: str | None = None) -> Decision:
        ledger.move(
            msg_key, "delivered", since=("received",), reply=text or "", via=via, reason=reason
        )
        return Decision(reply=text, key=msg_key)

    store = conversations(settings, client)
    if message.kind != "event" and look.blocked:
        return at_once(moderation.BLOCKED_TEXT)
    if message.kind == "event":
        if message.event == "subscribe":
            return at_once(commands.WELCOME_TEXT)
        if message.event == "unsubscribe":
            store.reset(message.channel, message.user)
        return at_once(None)
    if message.kind == "image":
        return at_once(commands.IMAGE_TEXT)
    if message.kind not in ("text", "voice"):
        return at_once(None)
    if not message.content:
        return at_once(commands.EMPTY_VOICE_TEXT if message.kind == "voice" else None)
    command = commands.match_command(message.content)
    if command == "help":
        return at_once(commands.HELP_TEXT)
    if command == "reset":
        store.reset(message.channel, message.user)
        return at_once(commands.RESET_TEXT)
    if (choice := commands.think_choice(message.content)) is not None:
        user = message.user
        return at_once(thinking.choose(settings, client, message.channel, user, user, choice))
    if is_continue(message.content) and look.waiting:
        ledger.move(msg_key, "delivered", since=("received",), reply="", take_pending=1)
        return Decision(take_pending=True, key=msg_key)
    verdict = guards.check_question(
        settings, client, channel=message.channel, user=message.user, text=message.content
    )
    if verdict is not None:  # rate limit or content safety: a polite notice, nothing queued
        return at_once(verdict.reply, verdict.via, reason=verdict.rule)
    mode: ReplyMode = (
        "passive"
        if reply_mode.mode_for(settings, look.passive_only) == reply_mode.PASSIVE
        else "customer_service"
    )
    job = make_job(message, msg_key, job_id, mode)
    return enqueue_job(job, ledger, client, enqueue, kind=message.kind)


def enqueue_job(
    job: Job, ledger: Ledger, client: redis.Redis, enqueue: Enqueue, kind: str = "text"
) -> Decision:
    """Write the job into its record, enqueue it, mark it queued; a full queue says busy.

    With a publisher that builds its broker message (`Publisher`), all of it is one atomic
    round trip; with a plain callable, three (the record, the publish, the mark).
    """
    timeline = _timeline(job, kind)
    # getattr, not isinstance(enqueue, Publisher): a runtime Protocol check costs 5-10 us.
    build: Callable[[Job], Envelope | None] | None = getattr(enqueue, "envelope", None)
    envelope = build(job) if build is not None else None
    if envelope is not None:
        done = ledger.enqueue(job, envelope, jobs.stamp(job.job_id, "received", **timeline))
        if done.full:
            return _busy(job, f"{done.waiting} waiting, limit {envelope.limit}")
        if not done.queued:
            # Another try of this message moved the record on first: its job is the one.
            log.info("message %s already %s; not enqueued again", job.key, done.was)
            return Decision(job_id=job.job_id, reply_mode=job.reply_mode, key=job.key)
        return _queued(job, timeline)
    ledger.move(job.key, "received", since=("received",), job=job, reply_mode=job.reply_mode)
    try:
        enqueue(job)
    except QueueFull as exc:
        return _busy(job, str(exc))
    # The mark and the console's timeline share one round trip; the ack waits for both, so a
    # retry never finds a queued job still marked received (it would send it again).
    with client.pipeline(transaction=False) as pipe:
        ledger.move_on(pipe, job.key, "queued", since=("received",))
        jobs.record_on(pipe, job.job_id, "received", **timeline)
        pipe.execute()
    return Decision(job=job, job_id=job.job_id, reply_mode=job.reply_mode, key=job.key)


def _queued(job: Job, timeline: dict[str, str]) -> Decision:
    """A job just enqueued: its stage line and count, and the decision that says so."""
    jobs.announce(job.job_id, "received", **timeline)
    return Decision(job=job, job_id=job.job_id, reply_mode=job.reply_mode, key=job.key)


def _timeline(job: Job, kind: str) -> dict[str, str]:
    """What the console's timeline shows of a job from the start (the text cut to 500)."""
    fields = {
        "channel": job.channel,
        "user": job.asker or job.user,
        "kind": kind,
        "msg_id": job.msg_id,
        "text": job.text[:500],
        "key": job.key,
    }
    if job.stream_id:
        fields.update(scope=job.user, chat_id=job.chat_id, stream_id=job.stream_id)
    return fields


def _busy(job: Job, reason: str) -> Decision:
    logs.stage("busy", channel=job.channel, user=job.user, reason=reason)
    return Decision(reply=BUSY_TEXT, busy=True, key=job.key)


def make_job(
    message: IncomingMessage, msg_key: str, job_id: str | None = None, mode: ReplyMode = "passive"
) -> Job:
    """The small typed job that crosses the queue for one question."""
    return Job(
        key=msg_key,
        job_id=job_id or new_id(),
        request_id=message.request_id,
        channel=message.channel,
        user=message.user,
        account=message.account,
        text=message.content,
        msg_id=message.msg_id,
        received_at=message.received_at,
        reply_mode=mode,
    )
