"""The passive reply: what the Official Account webhook's HTTP response carries.

Waiting answers ride on it (a passive reply costs no customer-service quota). In passive mode
it waits for this message's own answer until shortly before WeChat gives up; on WeChat's last
try it says honestly that the answer is on its way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from bot.channels.wechat.mailbox import PART_LIMIT, Mailbox
from bot.channels.wechat.reply_mode import PASSIVE
from bot.core import jobs
from bot.core.contracts import IncomingMessage
from bot.core.settings import Settings
from bot.pipeline import commands
from bot.pipeline.ingest import Decision
from bot.pipeline.ledger import Ledger


@dataclass
class PassiveReply:
    """What the webhook's HTTP response carries: a text, or nothing after `hold` seconds."""

    text: str | None = None
    hold: float = 0.0  # > 0: answer nothing until the platform gives up and retries


def respond(
    message: IncomingMessage,
    decision: Decision,
    *,
    settings: Settings,
    client: redis.Redis,
    started: float,
) -> PassiveReply:
    """The passive reply to one webhook call (see the module's docstring)."""
    if decision.reply is not None:
        return PassiveReply(decision.reply)
    box = Mailbox(client, message.channel, message.user, settings.pending_ttl)
    if decision.take_pending:
        text, _remaining = box.take(PART_LIMIT)
        return PassiveReply(text or commands.NOTHING_PENDING_TEXT)
    job_id = decision.job_id
    if job_id is None or decision.reply_mode != PASSIVE:
        size = box.size() if decision.waiting is None else decision.waiting
        waiting = box.take(PART_LIMIT)[0] if size else ""
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
    if ready and text and decision.key:
        ledger = Ledger(client, settings)
        record = ledger.get(decision.key)
        final = "apologized" if record is not None and record.fields.get("apology") else "delivered"
        ledger.move(decision.key, final, since=("parked",), via="passive")
    if not ready:
        text = f"{text}\n\n{commands.STILL_THINKING_TEXT}" if text else commands.STILL_THINKING_TEXT
        jobs.record(client, job_id, "notice", attempt=decision.attempt)
    return PassiveReply(text or None)
