"""The message ledger: one Redis record per accepted message that owns its state.

received → queued → generating (held by a named worker) → answered → delivering →
delivered | parked | apologized. The record is created in the same atomic step as the dedupe
(a retry of the message finds it), every transition is one Lua script conditional on the state
before it, and every non-final state carries a deadline, so the sweeper can find whatever is
stuck. Celery's visibility timeout is only a backstop behind this.

Indexes: `ledger:due` (sorted by deadline: records in a non-final state) and
`ledger:state:<state>` (sorted by last change, capped: what the console lists).
"""

from __future__ import annotations

import hashlib
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


# KEYS: record, due, state-index prefix, then one hash per stamp, then the write-once keys.
# ARGV: id, now, ttl, deadline, index max (0: no trim), the stamps as JSON
#       ([[ttl, {field: value}], ...]), the record's fields as JSON ({field: value}), the
#       write-once values as JSON ([[value, ttl], ...]).
# Write-once keys are checked (and written) first, on every try: a conflict answers
# {-1, index} and claims nothing. Stamps are written on the first try only, in the same atomic
# step. JSON, not one argument per field: redis-py encodes every argument on its own, and a
# claim's dozen fields cost more to pack than to send.
_CLAIM = """
local stamps = cjson.decode(ARGV[6])
for i, once in ipairs(cjson.decode(ARGV[8])) do
  local name = KEYS[3 + #stamps + i]
  if not redis.call('SET', name, once[1], 'NX', 'EX', once[2]) then
    if redis.call('GET', name) ~= once[1] then return {-1, i} end
  end
end
-- A read first: a new record gets its count in its one HSET (a write fewer to propagate).
if redis.call('HEXISTS', KEYS[1], 'tries') == 1 then
  return {0, redis.call('HINCRBY', KEYS[1], 'tries', 1)}
end
local id, now, ttl, deadline, keep = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local row = {'tries', 1, 'state', 'received', 'created_at', now, 'updated_at', now,
  'deadline', deadline, 'attempts', 0}
for name, value in pairs(cjson.decode(ARGV[7])) do
  row[#row + 1] = name; row[#row + 1] = value
end
redis.call('HSET', KEYS[1], unpack(row))
for s, stamp in ipairs(stamps) do
  local fields = {}
  for name, value in pairs(stamp[2]) do
    fields[#fields + 1] = name; fields[#fields + 1] = value
  end
  if #fields > 0 then redis.call('HSET', KEYS[3 + s], unpack(fields)) end
  redis.call('EXPIRE', KEYS[3 + s], stamp[1])
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], deadline, id)
redis.call('ZADD', KEYS[3] .. 'received', now, id)
if tonumber(keep) > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[3] .. 'received', 0, -tonumber(keep) - 1)
end
return {1, 1}
"""

# KEYS: record, due, state-index prefix.
# ARGV: id, to, now, deadline ('' = final), ttl, index max, n_from, from..., n_checks,
#       (field, value)..., then (field, value) pairs to set. '*' in from = any non-final state.
_MOVE = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, ''} end
local id, to, now, deadline, ttl, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local i = 7
local n_from = tonumber(ARGV[i]); i = i + 1
local ok = false
for j = 1, n_from do
  local s = ARGV[i]; i = i + 1
  if s == cur then ok = true end
  if s == '*' and cur ~= 'delivered' and cur ~= 'parked' and cur ~= 'apologized' then ok = true end
end
local n_checks = tonumber(ARGV[i]); i = i + 1
for j = 1, n_checks do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then ok = false end
  i = i + 2
end
if not ok then return {0, cur} end
redis.call('HSET', KEYS[1], 'state', to, 'updated_at', now)
while i <= #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2
end
if deadline == '' then
  redis.call('HDEL', KEYS[1], 'deadline')
  redis.call('ZREM', KEYS[2], id)
else
  redis.call('HSET', KEYS[1], 'deadline', deadline)
  redis.call('ZADD', KEYS[2], deadline, id)
end
redis.call('EXPIRE', KEYS[1], tonumber(ttl))
if cur ~= to then redis.call('ZREM', KEYS[3] .. cur, id) end
redis.call('ZADD', KEYS[3] .. to, now, id)
redis.call('ZREMRANGEBYRANK', KEYS[3] .. to, 0, -tonumber(keep) - 1)
return {1, cur}
"""


# KEYS: record, due, state-index prefix, the broker's queue, the job's timeline hash, the list of
#       recent jobs.
# ARGV: id, now, deadline, index max (0: no trim), the job as JSON, reply mode, the most that
#       may wait on the queue (0: no limit), the broker's message, timeline ttl, recent max
#       (0: no trim), job id, the timeline's fields as JSON.
# Only from `received`: the job into the record, the room check, the push and the `queued` mark
# happen together or not at all, so no retry or sweeper ever finds a half-done enqueue.
# Answers {1, state before, waiting} when queued, {2, state, waiting} when the queue was full
# (nothing written), {0, state, 0} when the record was not in `received` (nothing written).
_ENQUEUE = """
local cur = redis.call('HGET', KEYS[1], 'state')
if cur ~= 'received' then return {0, cur or '', 0} end
local limit, waiting = tonumber(ARGV[7]), 0
if limit > 0 then
  waiting = redis.call('LLEN', KEYS[4])
  if waiting >= limit then return {2, cur, waiting} end
end
local id, now, deadline, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
-- No EXPIRE: the claim gave the record its lifetime a moment ago.
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_at', now, 'deadline', deadline,
  'job', ARGV[5], 'reply_mode', ARGV[6])
redis.call('ZADD', KEYS[2], deadline, id)
redis.call('ZREM', KEYS[3] .. 'received', id)
redis.call('ZADD', KEYS[3] .. 'queued', now, id)
if keep > 0 then redis.call('ZREMRANGEBYRANK', KEYS[3] .. 'queued', 0, -keep - 1) end
redis.call('LPUSH', KEYS[4], ARGV[8])
local row = {}
for name, value in pairs(cjson.decode(ARGV[12])) do
  row[#row + 1] = name; row[#row + 1] = value
end
if #row > 0 then redis.call('HSET', KEYS[5], unpack(row)) end
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[9]))
redis.call('LPUSH', KEYS[6], ARGV[11])
if tonumber(ARGV[10]) > 0 then redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[10]) - 1) end
return {1, cur, waiting}
"""
_ENQUEUE_SHA = hashlib.sha1(_ENQUEUE.encode()).hexdigest()


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
        return self.redis.register_script(_CLAIM)

    @cached_property
    def _move(self) -> Script:
        return self.redis.register_script(_MOVE)

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
        pipe.eval(_CLAIM, len(keys), *keys, *self._claim_args(msg_key, stamps, once, fields))

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
        pipe.eval(_MOVE, 3, *self._keys(msg_key), *args)

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
        of the broker's message and the `queued` mark, atomically (see `_ENQUEUE`)."""
        now = time.time()
        keys = [*self._keys(job.key), envelope.queue, timeline.key, jobs.RECENT]
        args = [
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
        # EVALSHA: the text (1.5 kB) is neither sent nor hashed by Redis on every question.
        # NOSCRIPT (a restarted or flushed Redis) means nothing ran: load it and run it once.
        try:
            done, was, waiting = self.redis.evalsha(_ENQUEUE_SHA, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.redis.script_load(_ENQUEUE)
            done, was, waiting = self.redis.evalsha(_ENQUEUE_SHA, len(keys), *keys, *args)
        was = was.decode() if isinstance(was, bytes) else str(was)
        return Enqueued(done == 1, done == 2, was, int(waiting))

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
