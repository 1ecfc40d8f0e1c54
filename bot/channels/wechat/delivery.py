"""Delivery of an answer to a WeChat user: format, split, then send or keep for the next message.

Customer-service mode sends each part once (a retried delivery resumes after the last part
WeChat accepted) within the user's window of 5 sends; what does not fit, and anything WeChat
refuses for quota or permission (45015, 45047, 48001), waits in the user's mailbox and rides on
the passive reply to their next message. Passive mode puts the whole answer there at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis

from bot.channels.wechat import reply_mode
from bot.channels.wechat.api import WeChatAPI, WeChatAPIError
from bot.channels.wechat.mailbox import MORE_HINT, PART_LIMIT, Mailbox, Piece
from bot.core import jobs, metrics
from bot.core.contracts import Answer, Job
from bot.core.progress import read as read_progress
from bot.core.settings import Settings
from bot.core.store import key
from bot.pipeline import guards
from bot.pipeline.ledger import FINAL, Ledger
from bot.text.markdown import to_wechat_text
from bot.text.split import number_parts, split_text

log = logging.getLogger(__name__)

SENT_TTL = 7 * 86400
PARK_CODES = {
    45015: "the user's 48-hour reply window has closed",
    45047: "the 5-sends-per-message quota is used up",
    48001: "the account has no customer-service permission (unverified?)",
}
TYPING_EVERY = 15.0  # seconds; WeChat shows "typing…" for a while after each call
TYPING_MAX = 20


def wechat_parts(answer: str) -> list[str]:
    """The answer as WeChat text messages: plain text, split under the byte limit, numbered."""
    parts = split_text(to_wechat_text(answer), PART_LIMIT)
    return number_parts(parts, PART_LIMIT) or ["…"]


@dataclass
class Outcome:
    """What one delivery run did."""

    parts: int = 0
    sent_now: int = 0
    parked: int = 0
    uncertain: int = 0
    already: bool = False  # the message was delivered (or parked) before this run
    delivered_at: float = 0.0


def deliver(result: Answer, *, settings: Settings, client: redis.Redis, api: WeChatAPI) -> Outcome:
    """Send (or keep for the next message) every part not handled yet; the ledger says which.

    Raises WeChatAPIError for transient failures (the task retries); the parts before stay
    recorded as sent. A part whose send timed out after reaching WeChat is recorded as
    uncertain and never resent.
    """
    job = result.job
    ledger = Ledger(client, settings)
    moved = ledger.move(job.key, "delivering", since=("*",))
    if not moved.ok and moved.was in FINAL:
        log.info("job %s: message %s already %s", job.job_id, job.key, moved.was)
        return Outcome(already=True)
    result = guards.screen_answer(settings, result)  # the lists may have grown since generation
    parts = wechat_parts(result.answer)
    pieces = [Piece(job.job_id, p, job.question) for p in parts]
    box = Mailbox(client, job.channel, job.user, settings.pending_ttl)
    if job.reply_mode == reply_mode.PASSIVE:
        return park(client, box, result, pieces, "passive mode")
    sent_key = key("sent", job.job_id)
    already = client.hgetall(sent_key)
    window = reply_mode.ServiceWindow(settings, client, job.user)
    outcome = Outcome(parts=len(parts))
    for index, part in enumerate(parts):
        mark = already.get(str(index), "")
        if mark.startswith("sending"):
            # The last try died between asking WeChat and hearing back: it may be shown.
            _uncertain(client, job, sent_key, index, outcome)
            continue
        if mark:
            continue
        left = window.remaining()
        if left == 0:
            return park(client, box, result, pieces[index:], "no sends left in the window")
        more = len(parts) - index - 1
        text = f"{part}\n\n{MORE_HINT.format(n=more)}" if left == 1 and more else part
        # Written ahead: if this process or Redis dies after WeChat took the part, the retry
        # finds "sending" and does not send it again (at most once, and counted if unsure).
        client.hset(sent_key, str(index), f"sending {time.time():.3f}")
        client.expire(sent_key, SENT_TTL)
        try:
            api.send_text(job.user, text)
        except WeChatAPIError as exc:
            if exc.uncertain:
                _uncertain(client, job, sent_key, index, outcome)
                continue
            client.hdel(sent_key, str(index))  # WeChat answered: certainly not shown
            if exc.code not in PARK_CODES:
                raise
            if exc.code == 48001:
                reply_mode.mark_passive_only(settings, client)
            return park(client, box, result, pieces[index:], f"{exc.code}: {PARK_CODES[exc.code]}")
        # Recorded right after WeChat accepted it, so a retry resumes after this part.
        client.hset(sent_key, str(index), f"{time.time():.3f}")
        window.used_one()
        outcome.sent_now += 1
    final = "apologized" if result.apology else "delivered"
    ledger.move(
        job.key, final, since=("delivering",), via="customer_service", uncertain=outcome.uncertain
    )
    jobs.record(client, job.job_id, "delivered", parts=len(parts), via="customer_service")
    log.info(
        "delivered job %s: %d part(s) by customer service, %d sent now",
        job.job_id,
        len(parts),
        outcome.sent_now,
    )
    outcome.delivered_at = time.time()
    return outcome


def _uncertain(client: redis.Redis, job: Job, sent_key: str, index: int, outcome: Outcome) -> None:
    """A part WeChat may have shown: never sent twice blindly; counted and listed."""
    client.hset(sent_key, str(index), f"uncertain {time.time():.3f}")
    metrics.UNCERTAIN_SENDS.labels(job.channel).inc()
    jobs.record(client, job.job_id, "uncertain", part=index)
    log.warning(
        "job %s: part %d may or may not have reached the user: not resent", job.job_id, index
    )
    outcome.uncertain += 1


def park(
    client: redis.Redis, box: Mailbox, result: Answer, pieces: list[Piece], why: str
) -> Outcome:
    """Keep pieces for the user's next message (it carries them in its passive reply)."""
    if not pieces:
        pieces = [Piece(result.job_id, p, result.job.question) for p in wechat_parts(result.answer)]
    box.put(pieces)
    Ledger(client).move(result.job.key, "parked", since=("*",), reason=why)
    jobs.record(client, result.job_id, "delivered", parts=len(pieces), via="next_message")
    log.info(
        "job %s: %d part(s) wait for the user's next message (%s)",
        result.job_id,
        len(pieces),
        why,
    )
    return Outcome(parts=len(pieces), parked=len(pieces))


def park_after_failure(
    settings: Settings, client: redis.Redis, result: Answer, exc: BaseException
) -> Outcome:
    """Delivery outlived its retries: the answer waits for the user's next message."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", type(exc).__name__)
    jobs.record(client, result.job_id, "failed", error_code=code, error=str(message)[:200])
    result = guards.screen_answer(settings, result)
    box = Mailbox(client, result.job.channel, result.job.user, settings.pending_ttl)
    sent = client.hgetall(key("sent", result.job_id))
    parts = wechat_parts(result.answer)
    pieces = [
        Piece(result.job_id, p, result.job.question)
        for i, p in enumerate(parts)
        if str(i) not in sent
    ]
    return park(client, box, result, pieces, f"delivery failed: {code or message}")


def typing(job: Job, *, settings: Settings, client: redis.Redis, api: WeChatAPI) -> bool:
    """Show "typing…" while the job is being answered; True if it should be shown again later."""
    state = read_progress(client, job.job_id).get("state", "queued")
    if state in ("done", "failed"):
        return False
    if job.reply_mode != reply_mode.CUSTOMER_SERVICE:
        return False
    try:
        api.typing(job.user)
    except WeChatAPIError as exc:
        if exc.code == 48001:
            reply_mode.mark_passive_only(settings, client)
        log.info("typing indicator for job %s not shown: %s", job.job_id, exc)
        return False
    return True
