"""Who may try the admin token, and how often: one atomic throttle for the login form and the
Bearer header.

What is counted, and why (the choice, thought through):

- Every presented secret is *admitted* before it is compared, in one Lua script (count first,
  then compare): 40 concurrent wrong guesses from one client are exactly 10 compared and 30
  refused, where a check-then-increment let 28 of them through a limit of 10.
- Per client: at most `CLIENT_MAX` distinct wrong secrets per `WINDOW`. Past that the client is
  refused *without comparing*, the right secret included. Letting the right secret through a
  lockout would make the lockout useless: every guess would still be tried, and the one that
  answers "welcome" instead of "429" is the token. So the real admin is kept in another way:
- A client is not an address alone. A browser that once logged in carries a signed device
  cookie; its attempts count under the device, not under the address it shares with others.
  An attacker behind the same proxy (one address for everybody) locks only the address, and
  the known admin browser still logs in. Scripts with the Bearer token count by address.
- Per presented secret (its keyed fingerprint): a secret that already failed for this client is
  known to be wrong and is refused again without being counted. A stale token in a cron job
  hammering from the admin's own address therefore costs one attempt, not the whole budget.
- Globally: once `GLOBAL_MAX` wrong secrets arrived from all clients in a window (a guess
  spread over many addresses), a client that has itself failed in this window is refused.
  A client with a clean record (the admin at their own address or device) is still compared,
  so no one can lock everybody out; a distributed guesser gets one try per address per window.
- A successful login hands its reserved attempt back: the admin's own success counts nothing.
- Redis down: the comparison alone decides (no lockout can be kept, and none is invented).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import logging

import redis

from bot.core.store import key

log = logging.getLogger(__name__)

WINDOW = 300  # seconds over which wrong secrets are counted
CLIENT_MAX = 10  # distinct wrong secrets one client (address or device) may try per window
GLOBAL_MAX = 100  # wrong secrets from all clients per window before only clean clients try

# KEYS: the client's record (a hash: "#" = wrong secrets counted, "f:<fp>" = their
# fingerprints), the global counter. ARGV: fingerprint, window, client max, global max,
# "1" when the client is a known device (it is exempt from the global cap).
_ADMIT = """
local count = tonumber(redis.call('HGET', KEYS[1], '#') or '0')
if redis.call('HEXISTS', KEYS[1], 'f:' .. ARGV[1]) == 1 then
  if count >= tonumber(ARGV[3]) then return 'throttled' end
  return 'known'
end
if count >= tonumber(ARGV[3]) then return 'throttled' end
local all = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[5] ~= '1' and count > 0 and all >= tonumber(ARGV[4]) then return 'throttled' end
if redis.call('HINCRBY', KEYS[1], '#', 1) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
redis.call('HSET', KEYS[1], 'f:' .. ARGV[1], '1')
if redis.call('INCR', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return 'admitted'
"""
# Hands back the attempt the right secret had reserved.
_RELEASE = """
if redis.call('HDEL', KEYS[1], 'f:' .. ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], '#', -1)
  if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
end
return 1
"""


class Verdict(enum.Enum):
    """What a presented secret gets."""

    OK = "ok"
    WRONG = "wrong"
    THROTTLED = "throttled"


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented admin token; an empty expected token never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def fingerprint(given: str, expected: str) -> str:
    """A keyed fingerprint of a presented secret: Redis never holds a guess (a near miss of
    the token is a hint), and a new ADMIN_TOKEN starts every count afresh."""
    salt = hashlib.sha256(b"mimochat admin guard v1\0" + expected.encode()).digest()
    return hmac.new(salt, given.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


def client_key(client_id: str) -> str:
    """The Redis record of one client's wrong secrets."""
    return key("admin", "guard", hashlib.sha256(client_id.encode()).hexdigest()[:32])


GLOBAL_KEY = key("admin", "guard", "all")


def check_secret(
    client: redis.Redis,
    expected: str,
    given: str | None,
    client_id: str,
    *,
    known_device: bool = False,
) -> Verdict:
    """Admit, compare and count one presented admin secret for `client_id` (see the module)."""
    if not expected or not given:
        return Verdict.WRONG  # nothing presented is no guess: not counted
    fp = fingerprint(given, expected)
    keys = [client_key(client_id), GLOBAL_KEY]
    try:
        state = client.eval(
            _ADMIT, 2, *keys, fp, WINDOW, CLIENT_MAX, GLOBAL_MAX, "1" if known_device else "0"
        )
    except redis.RedisError:
        log.warning("admin throttle unavailable (Redis): the token check alone decides")
        return Verdict.OK if token_matches(given, expected) else Verdict.WRONG
    state = state.decode() if isinstance(state, bytes) else str(state)
    if state == "throttled":
        return Verdict.THROTTLED
    if state == "known":
        # Counted already: a repeat costs nothing. Compared all the same, since the secret
        # recorded may be the right one admitted a moment ago by a concurrent request.
        return Verdict.OK if token_matches(given, expected) else Verdict.WRONG
    if not token_matches(given, expected):
        return Verdict.WRONG
    # Redis gone since the admission: one attempt stays counted until the window ends.
    with contextlib.suppress(redis.RedisError):
        client.eval(_RELEASE, 2, *keys, fp)
    return Verdict.OK


def retry_after(client: redis.Redis, client_id: str) -> int:
    """Seconds until a throttled client's window ends (WINDOW when unknown)."""
    try:
        ttl = int(client.ttl(client_key(client_id)))
    except (redis.RedisError, TypeError, ValueError):
        return WINDOW
    return ttl if ttl > 0 else WINDOW
