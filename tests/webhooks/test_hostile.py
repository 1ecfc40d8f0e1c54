"""10,000 hostile requests to /wecom, /wechat and the console through Flask's test client on a
real Redis: random, malformed, oversized and nested bodies, bad signatures, huge timestamps,
wrong methods. Not one may get a 5xx (a 503 makes the platforms retry) or log a stack trace.
"""

from __future__ import annotations

import json
import logging
import random
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
from flask import Flask

from bot.channels.signing import sign
from bot.channels.wechat.protocol import message_xml, sign_request
from bot.channels.wecom.protocol import message_payload, sign_callback
from bot.core.settings import Settings
from bot.core.store import connect
from tests.helpers import ACCOUNT, ADMIN_TOKEN, TOKEN, WECOM_AES_KEY, WECOM_TOKEN
from webhooks.app import create_app

REQUESTS = 10_000
SEED = 20240611
ADDRESS = "192.0.2.66"  # TEST-NET-1: the hostile client's own throttle bucket


@dataclass
class Call:
    """One request for the test client."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    app: str = "safe"  # which app takes it: safe mode, or a plaintext (no AES key) account


def junk(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def text(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(string.printable + "你好]]><&\x00", k=size))


def header_text(rng: random.Random, size: int) -> str:
    """Text a header can carry (no line breaks), latin-1 included."""
    return "".join(rng.choices(string.ascii_letters + string.punctuation + "é\xff ", k=size))


def timestamp(rng: random.Random) -> str:
    return rng.choice(
        [
            "9" * rng.randint(13, 6000),
            "1" + "0" * 400,
            "-1",
            "1e10",
            "١٧٠٠٠٠٠٠٠٠",
            "+" + str(int(time.time())),
            str(int(time.time()) - 100_000),
            "",
            "NaN",
        ]
    )


def hostile_json(rng: random.Random) -> str:
    depth = rng.choice([40, 1000, 30_000])
    return rng.choice(
        [
            "[" * depth,
            '{"a":' * depth + "1" + "}" * depth,
            '{"encrypt": ' + "9" * rng.randint(41, 5000) + "}",
            '{"encrypt": 1e999, "x": -Infinity}',
            '{"encrypt": "\\ud800"}',
            '{"encrypt": ["a"]}',
            "{" * 3 + text(rng, 50),
            json.dumps({"encrypt": text(rng, 200)}),
            "",
            "null",
        ]
    )


def hostile_xml(rng: random.Random) -> str:
    depth = rng.choice([20, 2000])
    return rng.choice(
        [
            "<xml>" + "<a>" * depth + "</a>" * depth + "</xml>",
            '<!DOCTYPE x [<!ENTITY e "' + "x" * 100 + '">]><xml><Content>&e;&e;</Content></xml>',
            '<?xml version="1.0" encoding="utf-16"?><xml><Encrypt>AAAA</Encrypt></xml>',
            "<xml><Encrypt><![CDATA[" + text(rng, 80) + "]]></Encrypt></xml>",
            "<xml><CreateTime>" + "9" * 5000 + "</CreateTime></xml>",
            "<xml><![CDATA[" * 500,
            text(rng, 300),
            message_xml("o_h", ACCOUNT, content="x").replace("<MsgType>", "<MsgType><b/>"),
        ]
    )


@cache
def sealed_pool() -> tuple[list[tuple[dict[str, str], bytes]], list[tuple[dict[str, str], bytes]]]:
    """Well-signed calls with hostile insides, made once (AES of 30 kB is not free): WeCom
    callbacks sealed around hostile JSON, WeChat plaintext calls around hostile XML. Sent
    again, each is a platform's retry of the same call: it still reaches the parser."""
    rng = random.Random(SEED + 1)
    wecom = []
    for plain in ["[" * 30_000, *(hostile_json(rng) for _ in range(15)), text(rng, 100)]:
        signed = sign_callback(WECOM_TOKEN, WECOM_AES_KEY, plain)
        wecom.append((signed.params, signed.body.encode()))
    wechat = []
    for _ in range(16):
        request = sign_request(TOKEN, hostile_xml(rng))
        wechat.append((request.params, request.body.encode()))
    return wecom, wechat


def wecom_call(rng: random.Random) -> Call:
    kind = rng.randrange(7)
    if kind == 0:
        return Call("POST", "/wecom", body=junk(rng, rng.randint(0, 2000)))
    if kind == 1:
        params = {"msg_signature": "0" * 40, "timestamp": timestamp(rng), "nonce": "1"}
        return Call("POST", "/wecom", params, hostile_json(rng).encode("utf-8", "surrogatepass"))
    if kind == 2:  # well signed by the token holder, with a hostile plaintext inside
        params, body = rng.choice(sealed_pool()[0])
        return Call("POST", "/wecom", params, body)
    if kind == 3:  # a real callback, its signature or timestamp spoiled
        signed = sign_callback(WECOM_TOKEN, WECOM_AES_KEY, message_payload("u_h", content="hi"))
        spoiled = rng.choice([{"msg_signature": "é" * 40}, {"timestamp": timestamp(rng)}])
        return Call("POST", "/wecom", {**signed.params, **spoiled}, signed.body.encode())
    if kind == 4:
        method = rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
        return Call(method, "/wecom", body=junk(rng, 50))
    if kind == 5:  # the URL check with nonsense
        query = {"msg_signature": text(rng, 40), "timestamp": timestamp(rng), "nonce": "1"}
        return Call("GET", "/wecom", {**query, "echostr": text(rng, 60)})
    return Call("POST", "/wecom", body=b"x" * rng.choice([70_000, 200_000]))  # over the limit


def wechat_call(rng: random.Random) -> Call:
    kind = rng.randrange(8)
    if kind == 0:
        return Call("POST", "/wechat", body=junk(rng, rng.randint(0, 2000)))
    if kind == 1:  # plaintext in safe mode, with a valid plaintext signature: 403
        params, body = rng.choice(sealed_pool()[1])
        return Call("POST", "/wechat", params, body)
    if kind == 2:  # a plaintext account: hostile XML under a good signature reaches the parser
        params, body = rng.choice(sealed_pool()[1])
        return Call("POST", "/wechat", params, body, app="plain")
    if kind == 3:  # safe mode: an envelope whose <Encrypt> is junk, or hostile timestamps
        ts, nonce = str(int(time.time())), "123456"
        body = hostile_xml(rng)
        query = {"encrypt_type": "aes", "timestamp": ts, "nonce": nonce}
        query["msg_signature"] = sign(TOKEN, ts, nonce, text(rng, 20))
        if rng.random() < 0.5:
            query["timestamp"] = timestamp(rng)
        return Call("POST", "/wechat", query, body.encode())
    if kind == 4:
        method = rng.choice(["PUT", "DELETE", "PATCH"])
        return Call(method, "/wechat", body=junk(rng, 50))
    if kind == 5:
        query = {"signature": text(rng, 40), "timestamp": timestamp(rng), "nonce": text(rng, 8)}
        return Call("GET", "/wechat", {**query, "echostr": text(rng, 30)})
    if kind == 6:  # a pooled call's signature with another body: the binding refuses it
        params, body = rng.choice(sealed_pool()[1])
        return Call("POST", "/wechat", params, body + b" ", app="plain")
    return Call("POST", "/wechat", {"encrypt_type": text(rng, 5)}, body=b"<" * 60_000)


ADMIN_GETS = ["/admin/api/stats", "/admin/api/channels", "/admin/api/conversations",
              "/admin/api/simulate/" + "x" * 70, "/admin/api/conversations/wechat/%00"]  # fmt: skip
ADMIN_POSTS = ["/admin/api/simulate", "/admin/api/verify-url", "/admin/api/conversations/reset",
               "/admin/api/conversations/block"]  # fmt: skip


def admin_call(rng: random.Random) -> Call:
    kind = rng.randrange(6)
    if kind == 0:
        bearer = rng.choice([header_text(rng, 30), ADMIN_TOKEN + "x", "", "é" * 20, "Bearer"])
        headers = {"Authorization": rng.choice(["Bearer ", "bearer ", "Basic ", ""]) + bearer}
        return Call("GET", rng.choice(ADMIN_GETS), headers=headers)
    if kind == 1:
        body = hostile_json(rng).encode("utf-8", "surrogatepass")
        headers = {"Content-Type": "application/json", "X-CSRF-Token": header_text(rng, 10)}
        return Call("POST", rng.choice(ADMIN_POSTS), body=body, headers=headers)
    if kind == 2:  # the response sink takes anyone's POST: its body must be parsed safely
        code = rng.choice(["", "guessed", text(rng, 70)])
        body = hostile_json(rng).encode("utf-8", "surrogatepass")
        return Call("POST", "/admin/api/wecom/response", {"response_code": code}, body)
    if kind == 3:
        form = f"token={text(rng, 20)}&csrf_token={text(rng, 10)}".encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return Call("POST", "/admin/login", body=form, headers=headers)
    if kind == 4:
        cookie = rng.choice(["a" * 43, header_text(rng, 60), "", "x" * 3000])
        return Call(
            "GET",
            rng.choice(["/admin/", *ADMIN_GETS]),
            headers={"Cookie": f"mimochat_admin={cookie}"},
        )
    method = rng.choice(["PUT", "DELETE", "PATCH"])
    return Call(method, rng.choice(ADMIN_GETS + ADMIN_POSTS), body=junk(rng, 40))


MAKERS: list[Callable[[random.Random], Call]] = [wecom_call, wechat_call, admin_call]


def calls(count: int, seed: int) -> Iterator[Call]:
    """`count` hostile calls, the same ones every run (seeded)."""
    rng = random.Random(seed)
    for i in range(count):
        yield MAKERS[i % len(MAKERS)](rng)


@pytest.fixture
def apps(admin_settings: Settings) -> Iterator[dict[str, Flask]]:
    """A safe-mode account with the console on, and a plaintext account; counts cleaned after."""
    yield {
        "safe": create_app(admin_settings.replace(wechat_encrypt_mode="")),  # derived: safe
        "plain": create_app(admin_settings.replace(wechat_aes_key="")),
    }
    client = connect(admin_settings.redis_url)
    for name in client.scan_iter("mimochat:admin:guard:*"):
        client.delete(name)


def test_ten_thousand_hostile_requests_get_no_5xx(
    apps: dict[str, Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    clients = {name: app.test_client() for name, app in apps.items()}
    for client in clients.values():
        client.environ_base["REMOTE_ADDR"] = ADDRESS
    by_status: Counter[int] = Counter()
    by_target: Counter[tuple[str, int]] = Counter()
    failures: list[tuple[Call, int, str]] = []
    slowest = 0.0
    started = time.perf_counter()
    for call in calls(REQUESTS, SEED):
        sent = time.perf_counter()
        res = clients[call.app].open(
            call.path, method=call.method, query_string=call.query, data=call.body,
            headers=call.headers,
        )  # fmt: skip
        slowest = max(slowest, time.perf_counter() - sent)
        by_status[res.status_code] += 1
        by_target[(call.path.split("/")[1], res.status_code)] += 1
        if res.status_code >= 500 and len(failures) < 5:
            failures.append((call, res.status_code, res.get_data(as_text=True)[:200]))
    elapsed = time.perf_counter() - started
    summary: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        "slowest_ms": round(slowest * 1000),
        "by_status": dict(sorted(by_status.items())),
        "by_target": {f"{t} {s}": n for (t, s), n in sorted(by_target.items())},
    }
    print(json.dumps(summary, indent=1))  # shown with -s: the counts by status
    assert sum(by_status.values()) == REQUESTS
    assert not failures, failures
    assert "Traceback" not in caplog.text
    # Every kind of refusal was exercised: malformed, forbidden, unauthenticated, throttled,
    # wrong method, too large.
    assert {400, 401, 403, 405, 413, 429} <= set(by_status), summary
    # No input is costly: a quadratic scan or a deep recursion would show as one slow request
    # (the whole run's time depends on the machine's load; alone it is ~15-25 s on 2 cores).
    assert slowest < 2.0, summary
