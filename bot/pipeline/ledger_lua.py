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
_CLAIM_FN = """
local function claim(K, A)
  local stamps = cjson.decode(A[6])
  for i, once in ipairs(cjson.decode(A[8])) do
    local name = K[3 + #stamps + i]
    if not redis.call('SET', name, once[1], 'NX', 'EX', once[2]) then
      if redis.call('GET', name) ~= once[1] then return {-1, i} end
    end
  end
  -- A read first: a new record gets its count in its one HSET (a write fewer to propagate).
  if redis.call('HEXISTS', K[1], 'tries') == 1 then
    return {0, redis.call('HINCRBY', K[1], 'tries', 1)}
  end
  local id, now, ttl, deadline, keep = A[1], A[2], tonumber(A[3]), A[4], A[5]
  local row = {'tries', 1, 'state', 'received', 'created_at', now, 'updated_at', now,
    'deadline', deadline, 'attempts', 0}
  for name, value in pairs(cjson.decode(A[7])) do
    row[#row + 1] = name; row[#row + 1] = value
  end
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
  redis.call('ZADD', K[3] .. 'received', now, id)
  if tonumber(keep) > 0 then
    redis.call('ZREMRANGEBYRANK', K[3] .. 'received', 0, -tonumber(keep) - 1)
  end
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
_ENQUEUE_FN = """
local function enqueue(K, A)
  local cur = redis.call('HGET', K[1], 'state')
  if cur ~= 'received' then return {0, cur or '', 0} end
  local limit, waiting = tonumber(A[7]), 0
  if limit > 0 then
    waiting = redis.call('LLEN', K[4])
    if waiting >= limit then return {2, cur, waiting} end
  end
  local id, now, deadline, keep = A[1], A[2], A[3], tonumber(A[4])
  -- No EXPIRE: the claim gave the record its lifetime a moment ago.
  redis.call('HSET', K[1], 'state', 'queued', 'updated_at', now, 'deadline', deadline,
    'job', A[5], 'reply_mode', A[6])
  redis.call('ZADD', K[2], deadline, id)
  redis.call('ZREM', K[3] .. 'received', id)
  redis.call('ZADD', K[3] .. 'queued', now, id)
  if keep > 0 then redis.call('ZREMRANGEBYRANK', K[3] .. 'queued', 0, -keep - 1) end
  redis.call('LPUSH', K[4], A[8])
  local row = {}
  for name, value in pairs(cjson.decode(A[12])) do
    row[#row + 1] = name; row[#row + 1] = value
  end
  if #row > 0 then redis.call('HSET', K[5], unpack(row)) end
  redis.call('EXPIRE', K[5], tonumber(A[9]))
  redis.call('LPUSH', K[6], A[11])
  if tonumber(A[10]) > 0 then redis.call('LTRIM', K[6], 0, tonumber(A[10]) - 1) end
  return {1, cur, waiting}
end
"""

CLAIM = _CLAIM_FN + "return claim(KEYS, ARGV)\n"
ENQUEUE = _ENQUEUE_FN + "return enqueue(KEYS, ARGV)\n"

# A plain question in one step: claim, the reads deciding needs, and (only when they let it
# through) enqueue. KEYS: the claim's (ARGV[1] of them), the block list (a set), the
# passive-only flag, the user's mailbox (a list), then the enqueue's queue, timeline and recent
# list. ARGV: the claim's key count, the sender, whether the flag stops it (1/0), the claim's
# 8 arguments, the enqueue's 12.
# Answers the claim's answer when it made no record ({-1, i} or {0, tries}); else {1, 1,
# outcome, queue waiting, blocked, flag set, mailbox size}, outcome as enqueue's first value,
# or 3: the reads stopped it, the record left in `received` for the caller to decide.
ADMIT = (
    _CLAIM_FN
    + _ENQUEUE_FN
    + """
local nk = tonumber(ARGV[1])
local ck, ca, ea = {}, {}, {}
for i = 1, nk do ck[i] = KEYS[i] end
for i = 4, 11 do ca[#ca + 1] = ARGV[i] end
for i = 12, #ARGV do ea[#ea + 1] = ARGV[i] end
local made = claim(ck, ca)
if made[1] ~= 1 then return made end
local blocked = redis.call('SISMEMBER', KEYS[nk + 1], ARGV[2])
local flag = 0
if ARGV[3] == '1' then flag = redis.call('EXISTS', KEYS[nk + 2]) end
local box = redis.call('LLEN', KEYS[nk + 3])
if blocked == 1 or flag == 1 then return {1, 1, 3, 0, blocked, flag, box} end
local done = enqueue({KEYS[1], KEYS[2], KEYS[3], KEYS[nk + 4], KEYS[nk + 5], KEYS[nk + 6]}, ea)
return {1, 1, done[1], done[3], 0, 0, box}
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
