"""The sweeper: moves on every message stuck in the ledger — requeue, redeliver, apologize, park.

Every worker runs one (a daemon thread); a Redis lease lets one sweep at a time. A record is
stuck when it is past its state's deadline, or when it is `generating` in a worker whose
heartbeat is gone (or belongs to a new process under the same name: a restarted worker).
Attempts are bounded: after MIMOCHAT_MAX_ATTEMPTS a question gets the apology and an answer that
cannot be delivered is parked for the user's next message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from bot.channels.wechat import delivery
from bot.channels.wechat.mailbox import Mailbox
from bot.console import workers
from bot.core import metrics
from bot.core.contracts import Answer, ContractError, Job
from bot.core.settings import Settings
from bot.core.store import key
from bot.pipeline.answer import apology
from bot.pipeline.conversations import conversations
from bot.pipeline.ledger import Ledger, Record

log = logging.getLogger(__name__)

LEASE_SECONDS = 15  # a sweeper that died lets another take over within this
LEASE_KEY = key("sweeper", "lease")


@dataclass
class Actions:
    """What the sweeper asks the queue to do (the tasks layer provides these)."""

    requeue: Callable[[Job], None]  # put a job back on the gpu queue
    deliver: Callable[[Answer], None]  # hand an answer to its channel's delivery


def sweep(
    client: redis.Redis,
    settings: Settings,
    actions: Actions,
    *,
    now: float | None = None,
) -> list[tuple[str, str, str]]:
    """One pass: (message key, state it was stuck in, what was done) for each record moved."""
    ledger = Ledger(client, settings)
    max_attempts = settings.max_attempts
    now = now or time.time()
    stuck = set(ledger.due(now, limit=200))
    alive = workers.alive_ids(client)
    for msg_key in ledger.in_state("generating", limit=1000):
        record = ledger.get(msg_key)
        if record is not None and record.state == "generating" and record.worker not in alive:
            stuck.add(msg_key)
    done = []
    for msg_key in sorted(stuck):
        record = ledger.get(msg_key)
        if record is None or record.state in ("delivered", "parked", "apologized"):
            continue
        try:
            action = _move_on(client, settings, ledger, record, actions, max_attempts)
        except (ContractError, ValueError) as exc:
            log.error("ledger record %s unreadable (%s): apologizing", msg_key, exc)
            action = "unreadable"
            ledger.move(msg_key, "apologized", since=(record.state,), reason=str(exc)[:200])
        if action:
            metrics.SWEEPER_ACTIONS.labels(record.state, action).inc()
            log.warning("sweeper: message %s stuck in %s: %s", msg_key, record.state, action)
            done.append((msg_key, record.state, action))
    return done


def _move_on(
    client: redis.Redis,
    settings: Settings,
    ledger: Ledger,
    record: Record,
    actions: Actions,
    max_attempts: int,
) -> str:
    state, attempts = record.state, record.attempts
    guard = {"worker": record.worker} if state == "generating" else None
    job = record.job or _job_from(record)
    if state in ("received", "queued", "generating"):
        why = f"stuck in {state}" + (f" held by {record.worker}" if state == "generating" else "")
        if attempts < max_attempts and record.job is not None:
            actions.requeue(job)
            moved = ledger.move(
                record.key, "queued", since=(state,), when=guard, attempts=attempts + 1, reason=why
            )
            return "requeue" if moved.ok else ""
        answer = apology(job, f"gave up after {attempts} attempts: {why}")
        moved = ledger.move(
            record.key,
            "answered",
            since=(state,),
            when=guard,
            attempts=attempts + 1,
            reason=why,
            apology=1,
        )
        if moved.ok:
            actions.deliver(answer)
        return "apologize" if moved.ok else ""
    # answered | delivering: the answer exists; its delivery stopped somewhere.
    answer = conversations(settings, client).stored_answer(job.job_id) or apology(
        job, "the answer was lost before delivery"
    )
    if attempts < max_attempts:
        moved = ledger.move(record.key, state, since=(state,), attempts=attempts + 1)
        if moved.ok:
            actions.deliver(answer)
        return "redeliver" if moved.ok else ""
    if job.channel == "wechat":
        box = Mailbox(client, job.channel, job.user, settings.pending_ttl)
        delivery.park(client, box, answer, [], f"delivery stuck in {state}")
    else:
        ledger.move(record.key, "parked", since=(state,), parked_because=f"stuck in {state}")
    return "park"


def _job_from(record: Record) -> Job:
    """A job rebuilt from a record that never got one (it died deciding): for the apology."""
    fields = record.fields
    channel = fields.get("channel", "wechat")
    return Job(
        key=record.key,
        job_id=fields.get("job_id", "") or record.key,
        request_id=fields.get("request_id", ""),
        channel=channel,
        user=fields.get("user", ""),
        text="",
        msg_id=fields.get("msg_id", ""),
        received_at=float(fields.get("created_at") or time.time()),
        reply_mode="stream" if channel == "wecom" else "customer_service",
        stream_id=fields.get("stream_id", ""),
    )


class Sweeper:
    """The worker's sweeper thread: takes the lease, sweeps every `interval` seconds."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        actions: Actions,
        owner: str,
    ) -> None:
        self.client = client
        self.settings = settings
        self.actions = actions
        self.owner = owner
        self.interval = settings.sweep_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mimochat-sweeper", daemon=True)

    def start(self) -> None:
        """Start sweeping in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop and give the lease back."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)
        try:
            if self.client.get(LEASE_KEY) == self.owner:
                self.client.delete(LEASE_KEY)
        except redis.RedisError:
            pass

    def holds_lease(self) -> bool:
        """Take or renew the lease; True when this sweeper is the one to sweep now."""
        if self.client.set(LEASE_KEY, self.owner, nx=True, ex=LEASE_SECONDS):
            return True
        if self.client.get(LEASE_KEY) == self.owner:
            self.client.expire(LEASE_KEY, LEASE_SECONDS)
            return True
        return False

    def run_once(self) -> list[tuple[str, str, str]]:
        """One sweep if this sweeper holds the lease (errors are logged, never raised)."""
        try:
            if not self.holds_lease():
                return []
            return sweep(self.client, self.settings, self.actions)
        except Exception:  # the sweeper must outlive any one bad pass (Redis down, a bug)
            log.exception("sweep failed; trying again in %.0fs", self.interval)
            return []

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()
