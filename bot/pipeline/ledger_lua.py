"""The ledger's Lua scripts: each transition of a message's record is one of these, atomic in Redis.

The claim and the enqueue are Lua functions, so that the admit script (a plain question's claim
and enqueue in one step) runs the very same code as the two scripts it joins.
"""

from __future__ import annotations

import hashlib

# claim(K, A). K: record, due, state-index prefix, then one hash per stamp, then the write-once
# keys. A: id, now, ttl, deadline, index max (0: no trim), the stamps as JSON
# ([[ttl, {field: value}], ...]), the record's fields as JSON ({field: value}), the write-once
# values as JSON ([[value, ttl], ...]).
# Write-once keys are checked (and written) first, on every try: a conflict answers
# {-1, index} and claims nothing. Stamps are written on the first try only, in the same atomic
# step. Answers {1, 1} for a new record, {0, tries} for another try of a known one. JSON, not
# one argument per field: redis-py encodes every argument on its own, and a claim's dozen fields
# cost more to pack than to send.
#
# The functions below are the parts of the claim and the enqueue; each script is made of them
# (admit joins a claim and an enqueue without writing the record twice).
_CLAIM_FNS = """
-- The write-once keys, then whether the record exists: {-1, i} (conflict), {0, tries} (a
-- known message, its try counted) or nil (a new one).
local function check(K, A, n_stamps)
  for i, once in ipairs(cjson.decode(A[8])) do
    local name = K[3 + n_stamps + i]
    if not redis.call('SET', name, once[1], 'NX', 'EX', once[2]) then
      if redis.call('GET', name) ~= once[1] then return {-1, i} end
    end
  end
  -- A read first: a new record gets its count in its one HSET (a write fewer to propagate).
  if redis.call('HEXISTS', K[1], 'tries') == 1 then
    return {0, redis.call('HINCRBY', K[1], 'tries', 1)}
  end
  return nil
end

-- A new record in `state` (with `deadline`, and `more` fields), its stamps and its indexes.
local function create(K, A, stamps, state, deadline, more)
  local id, now, ttl, keep = A[1], A[2], tonumber(A[3]), tonumber(A[5])
  local row = {'tries', 1, 'state', state, 'created_at', now, 'updated_at', now,
    'deadline', deadline, 'attempts', 0}
  for name, value in pairs(cjson.decode(A[7])) do
    row[#row + 1] = name; row[#row + 1] = value
  end
  for _, value in ipairs(more) do row[#row + 1] = value end
  redis.call('HSET', K[1], unpack(row))
  for s, stamp in ipairs(stamps) do
    local fields = {}
    for name, value in pairs(stamp[2]) do
      fields[#fields + 1] = name; fields[#fields + 1] = value
    end
    if #fields > 0 then redis.call('HSET', K[3 + s], unpack(fields)) end
    redis.call('EXPIRE', K[3 + s], stamp[1])
  end
  redis.call('EXPIRE', K[1], ttl)
  redis.call('ZADD', K[2], deadline, id)
  redis.call('ZADD', K[3] .. state, now, id)
  if keep > 0 then redis.call('ZREMRANGEBYRANK', K[3] .. state, 0, -keep - 1) end
end

local function claim(K, A)
  local stamps = cjson.decode(A[6])
  local known = check(K, A, #stamps)
  if known then return known end
  create(K, A, stamps, 'received', A[4], {})
  return {1, 1}
end
"""

# enqueue(K, A). K: record, due, state-index prefix, the broker's queue, the job's timeline
# hash, the list of recent jobs. A: id, now, deadline, index max (0: no trim), the job as JSON,
# reply mode, the most that may wait on the queue (0: no limit), the broker's message,
# timeline ttl, recent max (0: no trim), job id, the timeline's fields as JSON.
# Only from `received`: the job into the record, the room check, the push and the `queued` mark
# happen together or not at all, so no retry or sweeper ever finds a half-done enqueue.
# Answers {1, state before, waiting} when queued, {2, state, waiting} when the queue was full
# (nothing written), {0, state, 0} when the record was not in `received` (nothing written).
_ENQUEUE_FNS = """
-- How many wait on the queue, and whether that is the most that may (limit 0: no limit).
local function room(K, A)
  local limit = tonumber(A[7])
  if limit <= 0 then return 0, false end
  local waiting = redis.call('LLEN', K[4])
  return waiting, waiting >= limit
end

-- The broker's message onto its queue and the job's timeline for the console.
local function push(K, A)
  redis.call('LPUSH', K[4], A[8])
  local row = {}
  for name, value in pairs(cjson.decode(A[12])) do
    row[#row + 1] = name; row[#row + 1] = value
  end
  if #row > 0 then redis.call('HSET', K[5], unpack(row)) end
  redis.call('EXPIRE', K[5], tonumber(A[9]))
  redis.call('LPUSH', K[6], A[11])
  if tonumber(A[10]) > 0 then redis.call('LTRIM', K[6], 0, tonumber(A[10]) - 1) end
end

local function enqueue(K, A)
  local cur = redis.call('HGET', K[1], 'state')
  if cur ~= 'received' then return {0, cur or '', 0} end
  local waiting, full = room(K, A)
  if full then return {2, cur, waiting} end
  local id, now, deadline, keep = A[1], A[2], A[3], tonumber(A[4])
  -- No EXPIRE: the claim gave the record its lifetime a moment ago.
  redis.call('HSET', K[1], 'state', 'queued', 'updated_at', now, 'deadline', deadline,
    'job', A[5], 'reply_mode', A[6])
  redis.call('ZADD', K[2], deadline, id)
  redis.call('ZREM', K[3] .. 'received', id)
  redis.call('ZADD', K[3] .. 'queued', now, id)
  if keep > 0 then redis.call('ZREMRANGEBYRANK', K[3] .. 'queued', 0, -keep - 1) end
  push(K, A)
  return {1, cur, waiting}
end
"""

CLAIM = _CLAIM_FNS + "return claim(KEYS, ARGV)\n"
ENQUEUE = _ENQUEUE_FNS + "return enqueue(KEYS, ARGV)\n"

# A plain question in one step: the claim, the reads deciding needs and, only when they let it
# through and the queue has room, the record made `queued` at once with its job and the push
# (the same record, indexes and timeline as a claim followed by an enqueue, written once).
# KEYS: the claim's (ARGV[1] of them), the block list (a set), the passive-only flag, the user's
# mailbox (a list), then the enqueue's queue, timeline and recent list. ARGV: the claim's key
# count, the sender, whether the flag stops it (1/0), the claim's 8 arguments, the enqueue's 12.
# Answers the claim's answer when it made no record ({-1, i} or {0, tries}); else {1, 1,
# outcome, queue waiting, blocked, flag set, mailbox size}, outcome 1 queued, 2 the queue was
# full or 3 the reads stopped it (for 2 and 3 the record is left in `received`, as a claim).
ADMIT = (
    _CLAIM_FNS
    + _ENQUEUE_FNS
    + """
local nk = tonumber(ARGV[1])
local ca, ea = {}, {}
for i = 4, 11 do ca[#ca + 1] = ARGV[i] end
for i = 12, #ARGV do ea[#ea + 1] = ARGV[i] end
local stamps = cjson.decode(ca[6])
local known = check(KEYS, ca, #stamps)
if known then return known end
local blocked = redis.call('SISMEMBER', KEYS[nk + 1], ARGV[2])
local flag = 0
if ARGV[3] == '1' then flag = redis.call('EXISTS', KEYS[nk + 2]) end
local box = redis.call('LLEN', KEYS[nk + 3])
local ek = {KEYS[1], KEYS[2], KEYS[3], KEYS[nk + 4], KEYS[nk + 5], KEYS[nk + 6]}
local waiting, full = 0, false
if blocked == 0 and flag == 0 then waiting, full = room(ek, ea) end
if blocked == 1 or flag == 1 or full then
  create(KEYS, ca, stamps, 'received', ca[4], {})
  return {1, 1, (full and 2) or 3, waiting, blocked, flag, box}
end
create(KEYS, ca, stamps, 'queued', ea[3], {'job', ea[5], 'reply_mode', ea[6]})
push(ek, ea)
return {1, 1, 1, waiting, 0, 0, box}
"""
)

# KEYS: record, due, state-index prefix.
# ARGV: id, to, now, deadline ('' = final), ttl, index max, n_from, from..., n_checks,
#       (field, value)..., then (field, value) pairs to set. '*' in from = any non-final state.
MOVE = """
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


def sha(script: str) -> str:
    """The SHA1 Redis knows a script by (EVALSHA)."""
    return hashlib.sha1(script.encode()).hexdigest()


ENQUEUE_SHA = sha(ENQUEUE)
ADMIT_SHA = sha(ADMIT)
