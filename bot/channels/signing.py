"""The platforms' signed callbacks, checked once for WeChat and WeCom alike.

Both sign a call the same way: `sha1(sorted(token, timestamp, nonce[, ciphertext]))` in the
query string, with a Unix timestamp that must be fresh. A plaintext WeChat signature covers no
body at all, so a signed query string that leaks (a proxy log, a referrer) could carry any
body for as long as its timestamp stays fresh: `bind_body` ties each signature triple
(timestamp, nonce, signature) to the first body it came with. The AES itself is wechatpy's (`WeChatCrypto`, `PrpCrypto`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import redis

from bot.core.store import WriteOnce, key

# Unix seconds in ASCII digits (WeChat's have 10). Anything else, `+1`, `1_0`, non-ASCII
# digits or 5,000 nines, is refused before int(): a huge one used to overflow float() into a 503.
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
UNBOUNDED_TTL = 86400  # how long a body stays bound when no freshness window is enforced


class ProtocolError(Exception):
    """A request the platform would never send: signature, timestamp, body or encryption wrong."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(*parts: str) -> str:
    """WeChat's and WeCom's signature: sha1 of the sorted parts joined."""
    # surrogatepass: a hostile part (a lone surrogate from a JSON escape) hashes, not crashes.
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8", "surrogatepass")).hexdigest()


def new_nonce() -> str:
    """A random numeric nonce like the platforms'."""
    return str(secrets.randbelow(9_000_000_000) + 1_000_000_000)


@dataclass(frozen=True)
class Signed:
    """The checked signature of one call: what its body gets bound to."""

    timestamp: str
    nonce: str
    signature: str


def parse_timestamp(value: str) -> int:
    """The timestamp as an int; ProtocolError(400) unless it is 1-12 ASCII digits."""
    if not _TIMESTAMP.fullmatch(value):
        raise ProtocolError(400, "timestamp is not a number")
    return int(value)


def verify(
    token: str,
    args: dict[str, str],
    *covered: str,
    field: str = "signature",
    window: int = 300,
    now: float | None = None,
) -> Signed:
    """Check a call's signature over token, timestamp, nonce and `covered`, then its freshness.

    400 when a part is missing or the timestamp is no number, 403 when the signature does not
    hold or the timestamp is more than `window` seconds off (0: no freshness check). The
    signature comes first, so a forged call learns nothing from the timestamp's answer.
    """
    timestamp, nonce, signature = args.get("timestamp"), args.get("nonce"), args.get(field)
    if not (timestamp and nonce and signature):
        raise ProtocolError(400, f"missing timestamp, nonce or {field}")
    given = signature.encode("utf-8", "surrogatepass")  # compare_digest takes ASCII str only
    if not hmac.compare_digest(sign(token, timestamp, nonce, *covered).encode(), given):
        raise ProtocolError(403, "signature mismatch")
    stamp = parse_timestamp(timestamp)
    if window and abs((time.time() if now is None else now) - stamp) > window:
        raise ProtocolError(403, "timestamp outside the freshness window")
    return Signed(timestamp, nonce, signature)


SEALED = "sealed"  # what an encrypted call leaves under its plaintext signature


def bind_body(
    client: redis.Redis,
    channel: str,
    signed: Signed,
    body: bytes,
    window: int = 300,
    *,
    spent: Signed | None = None,
) -> None:
    """Tie a verified call's signature triple (timestamp, nonce, signature) to its body: the
    same body again is the platform's retry and passes; another body is refused (403).

    With `spent`, that plaintext signature is spent in the same round trip: WeChat's
    compatible-mode calls carry `signature` (over no body) next to `msg_signature`, and without
    this the URL of a sealed message, once captured, could post a plaintext body of anyone's
    choosing. A sealed retry (even re-encrypted) spends it again and passes. The record lives
    as long as the timestamp can stay acceptable: it may be up to `window` ahead and `window`
    behind.
    """
    bind(client, body_seals(channel, signed, body, window, spent=spent))


def body_seals(
    channel: str, signed: Signed, body: bytes, window: int = 300, *, spent: Signed | None = None
) -> list[WriteOnce]:
    """The write-once records `bind_body` makes, unwritten: ingest writes them with the
    message's claim (one round trip for both), or `bind` writes them alone."""
    seals = [_seal(channel, signed, hashlib.sha256(body).hexdigest(), window)]
    if spent is not None:
        seals.append(_seal(channel, spent, SEALED, window))
    return seals


# KEYS: the write-once keys. ARGV: each key's value, then its ttl. Answers 0, or the 1-based
# index of the first key already holding another value. One script, not SET NX then GET: no
# round trip per key, and no record can expire between the two. (The comparison is not
# constant-time: what it guards is a digest of a body the platform sent, no secret.)
WRITE_ONCE = """
for i, name in ipairs(KEYS) do
  local value = ARGV[2 * i - 1]
  if not redis.call('SET', name, value, 'NX', 'EX', ARGV[2 * i]) then
    if redis.call('GET', name) ~= value then return i end
  end
end
return 0
"""


def bind(client: redis.Redis, seals: list[WriteOnce]) -> None:
    """Write the seals (a call's signature bound to its body); 403 if one is bound elsewhere."""
    args = [part for seal in seals for part in (seal.value, seal.ttl)]
    if client.eval(WRITE_ONCE, len(seals), *(seal.key for seal in seals), *args):
        raise reused()


def reused() -> ProtocolError:
    """The refusal of a signature already bound to another body."""
    return ProtocolError(403, "this signature was already used with another body")


def _seal(channel: str, signed: Signed, digest: str, window: int) -> WriteOnce:
    triple = f"{signed.timestamp}\n{signed.nonce}\n{signed.signature}"
    name = key(
        "signed", channel, hashlib.sha256(triple.encode("utf-8", "surrogatepass")).hexdigest()
    )
    return WriteOnce(name, digest, 2 * window + 1 if window else UNBOUNDED_TTL)
