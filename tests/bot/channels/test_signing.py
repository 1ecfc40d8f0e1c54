"""The one signature check of WeChat and WeCom: signature, timestamp, and one body per call."""

from __future__ import annotations

import time

import pytest
import redis

from bot.channels.signing import (
    ProtocolError,
    Signed,
    bind_body,
    new_nonce,
    parse_timestamp,
    sign,
    verify,
)
from tests.helpers import unique

TOKEN = "mimochattest"
NOW = 1_700_000_000


def signed_args(timestamp: str = str(NOW), *covered: str, field: str = "signature") -> dict:
    nonce = "1234567890"
    return {"timestamp": timestamp, "nonce": nonce, field: sign(TOKEN, timestamp, nonce, *covered)}


def test_signature_official_vector() -> None:
    assert sign("AAAAA", "1714036504", "1514711492") == "f464b24fc39322e44b38aa78f5edd27bd1441696"
    assert len(new_nonce()) == 10


@pytest.mark.parametrize(
    ("args", "covered", "status"),
    [
        ({}, (), 400),
        ({**signed_args(), "nonce": ""}, (), 400),
        ({**signed_args(), "signature": "0" * 40}, (), 403),
        ({**signed_args(), "signature": "é" * 40}, (), 403),  # compare_digest refuses non-ASCII
        ({**signed_args(), "signature": "\ud800"}, (), 403),
        (signed_args(str(NOW), "other"), ("ciphertext",), 403),  # covers another ciphertext
        (signed_args(str(NOW - 301)), (), 403),  # stale
        (signed_args(str(NOW + 301)), (), 403),  # from the future
    ],
)
def test_verify_refuses(args: dict, covered: tuple, status: int) -> None:
    with pytest.raises(ProtocolError) as err:
        verify(TOKEN, args, *covered, window=300, now=NOW)
    assert err.value.status == status


@pytest.mark.parametrize(
    "timestamp",
    [
        "9" * 5000,
        "9" * 13,
        "1e9",
        "+1700000000",
        "1_700_000_000",
        "١٧٠٠٠٠٠٠٠٠",
        " 1700000000",
        "-1",
    ],
)
def test_hostile_timestamps_are_clean_refusals(timestamp: str) -> None:
    """Correctly signed or not, a timestamp that is no plain number is a 400 or a 403, never
    an OverflowError (a 5,000-digit one used to overflow float() into a 503)."""
    with pytest.raises(ProtocolError) as err:
        verify(TOKEN, signed_args(timestamp), window=300, now=NOW)
    assert err.value.status == 400  # signed by the token holder: the number itself is wrong
    forged = {**signed_args(timestamp), "signature": "0" * 40}
    with pytest.raises(ProtocolError) as err:
        verify(TOKEN, forged, window=300, now=NOW)
    assert err.value.status == 403
    with pytest.raises(ProtocolError):
        parse_timestamp(timestamp)


def test_verify_accepts_and_window_zero_skips_freshness() -> None:
    args = signed_args(str(NOW - 299), "ct", field="msg_signature")
    assert verify(TOKEN, args, "ct", field="msg_signature", window=300, now=NOW) == Signed(
        str(NOW - 299), "1234567890", args["msg_signature"]
    )
    old = signed_args("1")
    assert verify(TOKEN, old, window=0).timestamp == "1"


def test_a_body_is_bound_to_its_call(redis_client: redis.Redis) -> None:
    channel = unique("test")
    call = Signed(str(int(time.time())), new_nonce(), "sig")
    bind_body(redis_client, channel, call, b"<xml>first</xml>", window=300)
    bind_body(redis_client, channel, call, b"<xml>first</xml>", window=300)  # the retry
    with pytest.raises(ProtocolError) as err:
        bind_body(redis_client, channel, call, b"<xml>forged</xml>", window=300)
    assert err.value.status == 403
    # Another triple is another call; the record lives as long as the timestamp can stay
    # acceptable (up to a window ahead, then a window behind).
    bind_body(redis_client, channel, Signed(call.timestamp, call.nonce, "other"), b"x")
    other = Signed(call.timestamp, new_nonce(), "sig")
    bind_body(redis_client, channel, other, b"<xml>forged</xml>", window=300)
    names = redis_client.keys(f"mimochat:signed:{channel}:*")
    assert len(names) == 3
    assert all(600 <= redis_client.ttl(name) <= 601 for name in names)


def test_a_sealed_call_spends_its_plaintext_signature(redis_client: redis.Redis) -> None:
    """The plaintext signature next to msg_signature cannot carry a plaintext body later, while
    the sealed call's retries (claiming it again) pass."""
    channel = unique("test")
    plain = Signed(str(int(time.time())), new_nonce(), "plain-signature")
    sealed = Signed(plain.timestamp, plain.nonce, "msg-signature")
    for _ in range(2):  # the sealed call and its retry
        bind_body(redis_client, channel, sealed, b"<xml>sealed</xml>", spent=plain)
    with pytest.raises(ProtocolError) as err:
        bind_body(redis_client, channel, plain, b"<xml>forged plaintext</xml>")
    assert err.value.status == 403
