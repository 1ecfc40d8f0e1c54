"""The message ledger: one Redis record per accepted message that owns its state.

received → queued → generating (held by a named worker) → answered → delivering →
delivered | parked | apologized. The record is created in the same atomic step as the dedupe
(a retry of the message finds it), every transition is one Lua script conditional on the state
before it, and every non-final state carries a deadline, so the sweeper can find whatever is
stuck. Celery's visibility timeout is only a backstop behind this. The scripts are in
`ledger_lua`; `admit` is a plain question's claim and enqueue in one of them.

Indexes: `ledger:due` (sorted by deadline: records in a non-final state) and
`ledger:state:<state>` (sorted by last change, capped: what the console lists).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script

from bot.core import jobs
from bot.core.contracts import Envelope, Job
from bot.core.settings import Settings
from bot.core.store import WriteOnce, WriteOnceConflict, key
from bot.pipeline.ledger_lua import ADMIT, ADMIT_SHA, CLAIM, ENQUEUE, ENQUEUE_SHA, MOVE

STATES = (
    "received",
    "queued",
    "generating",
    "answered",
    "delivering",
    "delivered",
    "parked",
    "apologized",
)
FINAL = frozenset({"delivered", "parked", "apologized"})
RECORD_TTL = 2 * 86400  # longer than any platform retries a message; the console's recent past
STATE_INDEX_MAX = 1000  # records listed per state in the console
# The webhook's two scripts trim the lists they grow one call in TRIM_ONE_IN (a list may hold a
# few dozen over its size between trims): trimming is a Redis call of its own, ~3 us each.
TRIM_ONE_IN = 16

# Seconds a record may stay in a state before the sweeper moves it on (shipped defaults).
DEADLINES = {
    "received": 30.0,  # the webhook enqueues within milliseconds; 30 s means it died mid-way
    "queued": 900.0,  # waiting for a GPU; the job is re-sent (duplicates stop at the ledger)
    "generating": 900.0,  # past the generation timeout; a dead holder is found much sooner
    "answered": 30.0,  # the hand-over to delivery is immediate
    "delivering": 600.0,  # longer than the delivery task's own retries
}


def record_key(msg_key: str) -> str:
    """Where a message's record lives."""
    return key("msg", msg_key)


_DUE = key("ledger", "due")


def _state_index(state: str) -> str:
    return key("ledger", "state", state)


@dataclass
class Record:
    """A message's record as read from Redis."""

    key: str
    state: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def job(self) -> Job | None:
        """The job the message became, once decided (None for commands and events)."""
        raw = self.fields.get("job")
        return Job.from_wire(raw) if raw else None

    @property
    def attempts(self) -> int:
        """How many times the sweeper has moved this message on."""
        return int(self.fields.get("attempts") or 0)

    @property
    def worker(self) -> str:
        """`hostname:pid` of the worker generating it (while generating)."""
        return self.fields.get("worker", "")

    @property
    def deadline(self) -> float | None:
        """When the sweeper moves it on (None in a final state)."""
        raw = self.fields.get("deadline")
        return float(raw) if raw else None

    def view(self) -> dict[str, Any]:
        """What the console shows: the state, reason, times, attempts (no job body)."""
        shown = {k: v for k, v in self.fields.items() if k not in ("job", "reply")}
        return {"key": self.key, **shown}


@dataclass(frozen=True)
class Stamp:
    """A hash written with a message's claim, atomically and on its first try only.

    A WeChat message opens the user's customer-service window: folded into the claim, that costs
    no round trip of its own, and a retry of the message never opens it again.
    """

    key: str
    ttl: int
    fields: dict[str, str]


@dataclass
class Moved:
    """The outcome of a conditional transition: whether it happened, and the state before."""

    ok: bool
    was: str


@dataclass(frozen=True)
class Enqueued:
    """The outcome of `Ledger.enqueue`: queued, refused for room, or the record had moved on."""

    queued: bool
    full: bool
    was: str
    waiting: int


@dataclass(frozen=True)
class Gate:
    """The reads that decide whether a new question may be enqueued in its claim's own step.

    It may unless `member` is in the `blocked` set or the `stop_flag` key (when given) exists;
    the length of the `count` list is read along (the user's waiting parts).
    """

    blocked: str
    member: str
    stop_flag: str | None
    count: str


@dataclass(frozen=True)
class Admission:
    """The outcome of `Ledger.admit`: the claim's, the gate's reads, and the enqueue's (None
    when no record was made or the gate stopped it: the record waits in `received`)."""

    created: bool
    tries: int
    blocked: bool = False
    flagged: bool = False
    count: int = 0
    enqueued: Enqueued | None = None


class Ledger:
    """The records of every accepted message, on one Redis."""

    def __init__(self, client: redis.Redis, settings: Settings | None = None) -> None:
        self.redis = client
        self.deadlines = dict(DEADLINES)
        # The record is the dedupe: it lives at least as long as MIMOCHAT_DEDUP_TTL says.
        self.ttl = max(RECORD_TTL, settings.dedup_ttl) if settings is not None else RECORD_TTL
        if settings is not None:
            stuck = settings.stuck_after
            self.deadlines.update(queued=stuck, generating=stuck, delivering=stuck)

    @cached_property
    def _claim(self) -> Script:
        # Registered when first used: webhook calls build a Ledger each and use neither.
        return self.redis.register_script(CLAIM)

    @cached_property
    def _move(self) -> Script:
        return self.redis.register_script(MOVE)

    def deadline(self, state: str, now: float | None = None) -> float:
        """When a record entering `state` now is due for the sweeper."""
        return (now or time.time()) + self.deadlines[state]

    def claim(
        self,
        msg_key: str,
        *,
        stamps: Sequence[Stamp] = (),
        once: Sequence[WriteOnce] = (),
        **fields: Any,
    ) -> tuple[bool, int]:
        """Create the record in `received` unless it exists; (created, how many tries so far).

        `once` keys are written first; one holding another value raises WriteOnceConflict.
        """
        return self.claimed(
            self._claim(
                keys=self._claim_keys(msg_key, stamps, once),
                args=self._claim_args(msg_key, stamps, once, fields),
            )
        )

    def claim_on(
        self,
        pipe: Pipeline,
        msg_key: str,
        *,
        stamps: Sequence[Stamp] = (),
        once: Sequence[WriteOnce] = (),
        **fields: Any,
    ) -> None:
        """`claim`, queued on a pipeline (read its result with `claimed`).

        EVAL, not EVALSHA: a pipeline holding a registered script first asks SCRIPT EXISTS, a
        round trip of its own; the script's text costs less than that.
        """
        keys = self._claim_keys(msg_key, stamps, once)
        pipe.eval(CLAIM, len(keys), *keys, *self._claim_args(msg_key, stamps, once, fields))

    @staticmethod
    def claimed(raw: Any) -> tuple[bool, int]:
        """(created, tries) from the claim script's answer; WriteOnceConflict on a conflict."""
        created, tries = raw
        if int(created) < 0:
            raise WriteOnceConflict(int(tries) - 1)
        return bool(created), int(tries)

    def _claim_keys(
        self, msg_key: str, stamps: Sequence[Stamp], once: Sequence[WriteOnce]
    ) -> list[str]:
        return [*self._keys(msg_key), *(stamp.key for stamp in stamps), *(o.key for o in once)]

    def _claim_args(
        self,
        msg_key: str,
        stamps: Sequence[Stamp],
        once: Sequence[WriteOnce],
        fields: dict[str, Any],
    ) -> list[Any]:
        now = time.time()
        return [
            msg_key,
            f"{now:.3f}",
            self.ttl,
            f"{self.deadline('received', now):.3f}",
            _keep(STATE_INDEX_MAX),
            json.dumps([[stamp.ttl, stamp.fields] for stamp in stamps]),
            json.dumps({name: _text(value) for name, value in fields.items() if value is not None}),
            json.dumps([[o.value, o.ttl] for o in once]),
        ]

    def move(
        self,
        msg_key: str,
        to: str,
        *,
        since: tuple[str, ...] = ("*",),
        when: dict[str, str] | None = None,
        deadline: float | None = None,
        **fields: Any,
    ) -> Moved:
        """Move to `to` if the state is one of `since` (and fields match `when`); atomic.

        A non-final target gets its state's deadline unless one is given; a final one leaves
        the sweeper's index.
        """
        args = self._move_args(msg_key, to, since, when, deadline, fields)
        return self.moved(self._move(keys=self._keys(msg_key), args=args))

    def move_on(
        self,
        pipe: Pipeline,
        msg_key: str,
        to: str,
        *,
        since: tuple[str, ...] = ("*",),
        when: dict[str, str] | None = None,
        deadline: float | None = None,
        **fields: Any,
    ) -> None:
        """`move`, queued on a pipeline (read its result with `moved`)."""
        args = self._move_args(msg_key, to, since, when, deadline, fields)
        pipe.eval(MOVE, 3, *self._keys(msg_key), *args)

    @staticmethod
    def moved(raw: Any) -> Moved:
        """The outcome of a move from the move script's answer."""
        ok, was = raw
        return Moved(bool(ok), was.decode() if isinstance(was, bytes) else str(was))

    def _move_args(
        self,
        msg_key: str,
        to: str,
        since: tuple[str, ...],
        when: dict[str, str] | None,
        deadline: float | None,
        fields: dict[str, Any],
    ) -> list[Any]:
        if to not in STATES:
            raise ValueError(f"unknown ledger state {to!r}")
        now = time.time()
        due = "" if to in FINAL else f"{deadline or self.deadline(to, now):.3f}"
        args: list[Any] = [msg_key, to, f"{now:.3f}", due, self.ttl, STATE_INDEX_MAX]
        args += [len(since), *since]
        checks = when or {}
        args.append(len(checks))
        for name, value in checks.items():
            args += [name, value]
        for name, value in fields.items():
            if value is not None:
                args += [name, _text(value)]
        return args

    def enqueue(self, job: Job, envelope: Envelope, timeline: jobs.Stamp) -> Enqueued:
        """One round trip from `received`: the job into its record, the room check, the push
        of the broker's message and the `queued` mark, atomically (see `ledger_lua.ENQUEUE`)."""
        keys = [*self._keys(job.key), *self._enqueue_keys(envelope, timeline)]
        done, was, waiting = self._run(
            ENQUEUE_SHA, ENQUEUE, keys, self._enqueue_args(job, envelope, timeline)
        )
        was = was.decode() if isinstance(was, bytes) else str(was)
        return Enqueued(done == 1, done == 2, was, int(waiting))

    def admit(
        self,
        job: Job,
        envelope: Envelope,
        timeline: jobs.Stamp,
        gate: Gate,
        *,
        stamps: Sequence[Stamp] = (),
        once: Sequence[WriteOnce] = (),
        **fields: Any,
    ) -> Admission:
        """A plain question in one round trip: `claim`, the reads `gate` names and, when they
        let it through, `enqueue`, atomically (see `ledger_lua.ADMIT`).

        `once` keys holding another value raise WriteOnceConflict (nothing claimed).
        """
        claim_keys = self._claim_keys(job.key, stamps, once)
        keys = [*claim_keys, gate.blocked, gate.stop_flag or gate.blocked, gate.count]
        keys += self._enqueue_keys(envelope, timeline)
        args = [len(claim_keys), gate.member, 1 if gate.stop_flag else 0]
        args += self._claim_args(job.key, stamps, once, fields)
        args += self._enqueue_args(job, envelope, timeline)
        raw = self._run(ADMIT_SHA, ADMIT, keys, args)
        created, tries = self.claimed(raw[:2])
        if not created:
            return Admission(False, tries)
        outcome, waiting, blocked, flagged, count = (int(x) for x in raw[2:])
        enqueued = None
        if outcome != 3:
            enqueued = Enqueued(outcome == 1, outcome == 2, "received", waiting)
        return Admission(True, 1, bool(blocked), bool(flagged), count, enqueued)

    @staticmethod
    def _enqueue_keys(envelope: Envelope, timeline: jobs.Stamp) -> list[str]:
        return [envelope.queue, timeline.key, jobs.RECENT]

    def _enqueue_args(self, job: Job, envelope: Envelope, timeline: jobs.Stamp) -> list[Any]:
        now = time.time()
        return [
            job.key,
            f"{now:.3f}",
            f"{self.deadline('queued', now):.3f}",
            keep := _keep(STATE_INDEX_MAX),
            job.model_dump_json(),
            job.reply_mode,
            envelope.limit,
            envelope.body,
            jobs.JOB_TTL,
            jobs.RECENT_MAX if keep else 0,
            job.job_id,
            json.dumps(timeline.fields),
        ]

    def _run(self, sha: str, script: str, keys: list[str], args: list[Any]) -> Any:
        # EVALSHA: the text (1.5-3 kB) is neither sent nor hashed by Redis on every question.
        # NOSCRIPT (a restarted or flushed Redis) means nothing ran: load it and run it once.
        try:
            return self.redis.evalsha(sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.redis.script_load(script)
            return self.redis.evalsha(sha, len(keys), *keys, *args)

    def get(self, msg_key: str) -> Record | None:
        """The record, or None if there is none (never accepted, forgotten or expired)."""
        data = self.redis.hgetall(record_key(msg_key))
        if not data or "state" not in data:
            return None
        return Record(msg_key, data["state"], data)

    def forget(self, msg_key: str) -> None:
        """Drop a record whose message was not accepted (the platform's retry starts anew)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(record_key(msg_key))
            pipe.zrem(_DUE, msg_key)
            for state in STATES:
                pipe.zrem(_state_index(state), msg_key)
            pipe.execute()

    def due(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Records past their deadline, oldest first."""
        return list(self.redis.zrangebyscore(_DUE, "-inf", now or time.time(), 0, limit))

    def in_state(self, state: str, limit: int = 100) -> list[str]:
        """The newest records in a state (the console's lists; the sweeper's view of holders)."""
        return list(self.redis.zrevrange(_state_index(state), 0, max(0, limit - 1)))

    def counts(self) -> dict[str, int]:
        """Records per state (capped at the index size), for the console and /metrics."""
        with self.redis.pipeline(transaction=False) as pipe:
            for state in STATES:
                pipe.zcard(_state_index(state))
            sizes = pipe.execute()
        return dict(zip(STATES, (int(n) for n in sizes), strict=True))

    @staticmethod
    def _keys(msg_key: str) -> list[str]:
        return [record_key(msg_key), _DUE, _state_index("")]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if hasattr(value, "model_dump_json"):
        return str(value.model_dump_json())
    return str(value)


def _keep(size: int) -> int:
    """`size` one call in TRIM_ONE_IN (trim now to that size), else 0 (do not trim)."""
    return size if random.random() < 1 / TRIM_ONE_IN else 0
