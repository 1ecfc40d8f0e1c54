"""Delivery of an answer to a WeChat user: format, split, then send or keep for the next message.

Customer-service mode sends each part once (a retried delivery resumes after the last part
WeChat accepted) within the user's window of 5 sends; what does not fit, and anything WeChat
refuses for quota or permission (45015, 45047, 48001), waits in the user's mailbox and rides on
the passive reply to their next message. Passive mode puts the whole answer there at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from bot.channels.wechat import reply_mode
from bot.channels.wechat.api import WeChatAPI, WeChatAPIError
from bot.channels.wechat.mailbox import MORE_HINT, PART_LIMIT, Mailbox, Piece
from bot.core import jobs
from bot.core.progress import read as read_progress
from bot.core.settings import Settings
from bot.core.store import key
from bot.text.formatting import number_parts, split_text, to_wechat_text

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


def deliver(
    result: dict[str, Any], *, settings: Settings, client: redis.Redis, api: WeChatAPI
) -> dict[str, Any]:
    """Send (or keep for the next message) every part not handled yet.

    Raises WeChatAPIError for transient failures (the task retries); the parts before stay
    recorded as sent.
    """
    parts = wechat_parts(result["answer"])
    pieces = [Piece(result["job_id"], p, result.get("question", "")) for p in parts]
    box = Mailbox(client, result["channel"], result["user"], settings.pending_ttl)
    if reply_mode.effective(settings, client) == reply_mode.PASSIVE:
        return _park(client, box, result, pieces, "passive mode")
    sent_key = key("sent", result["job_id"])
    already = client.hgetall(sent_key)
    window = reply_mode.ServiceWindow(settings, client, result["user"])
    sent_now = 0
    for index, part in enumerate(parts):
        if str(index) in already:
            continue
        left = window.remaining()
        if left == 0:
            return _park(client, box, result, pieces[index:], "no sends left in the window")
        more = len(parts) - index - 1
        text = f"{part}\n\n{MORE_HINT.format(n=more)}" if left == 1 and more else part
        try:
            api.send_text(result["user"], text)
        except WeChatAPIError as exc:
            if exc.code not in PARK_CODES:
                raise
            if exc.code == 48001:
                reply_mode.mark_passive_only(settings, client)
            return _park(client, box, result, pieces[index:], f"{exc.code}: {PARK_CODES[exc.code]}")
        # Recorded right after WeChat accepted it, so a retry resumes after this part.
        client.hset(sent_key, str(index), f"{time.time():.3f}")
        client.expire(sent_key, SENT_TTL)
        window.used_one()
        sent_now += 1
    jobs.record(client, result["job_id"], "delivered", parts=len(parts), via="customer_service")
    log.info(
        "delivered job %s: %d part(s) by customer service, %d sent now",
        result["job_id"],
        len(parts),
        sent_now,
    )
    return {"parts": len(parts), "sent_now": sent_now, "parked": 0}


def _park(
    client: redis.Redis, box: Mailbox, result: dict[str, Any], pieces: list[Piece], why: str
) -> dict[str, Any]:
    box.put(pieces)
    jobs.record(client, result["job_id"], "delivered", parts=len(pieces), via="next_message")
    log.info(
        "job %s: %d part(s) wait for the user's next message (%s)",
        result["job_id"],
        len(pieces),
        why,
    )
    return {"parts": len(pieces), "sent_now": 0, "parked": len(pieces)}


def record_failure(client: redis.Redis, result: dict[str, Any], exc: WeChatAPIError) -> None:
    """Note a delivery that will not be retried, with WeChat's error code, for operators."""
    jobs.record(client, result["job_id"], "failed", error_code=exc.code, error=exc.message[:200])


def typing(job: dict[str, Any], *, settings: Settings, client: redis.Redis, api: WeChatAPI) -> bool:
    """Show "typing…" while the job is being answered; True if it should be shown again later."""
    state = read_progress(client, job["job_id"]).get("state", "queued")
    if state in ("done", "failed"):
        return False
    if reply_mode.effective(settings, client) != reply_mode.CUSTOMER_SERVICE:
        return False
    try:
        api.typing(job["user"])
    except WeChatAPIError as exc:
        if exc.code == 48001:
            reply_mode.mark_passive_only(settings, client)
        log.info("typing indicator for job %s not shown: %s", job["job_id"], exc)
        return False
    return True
