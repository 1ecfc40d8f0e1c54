"""The simulated platform over real HTTP: WeChat's retries after 5 s, URL-verification diagnoses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from bot.channels.wechat import simulator
from bot.channels.wechat.protocol import WeChatCodec, parse_message
from bot.core.settings import Settings
from tests.helpers import AES_KEY, APP_ID, TOKEN, free_port, unique

Handler = Callable[[Request, int], Response]


@contextmanager
def fake_webhook(handler: Handler) -> Iterator[tuple[str, list[Request]]]:
    """A tiny HTTP server answering with `handler(request, call_number)`; records requests."""
    seen: list[Request] = []

    @Request.application
    def app(request: Request) -> Response:
        request.get_data()  # read the body before the handler may sleep
        seen.append(request)
        return handler(request, len(seen))

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/wechat", seen
    finally:
        server.shutdown()
        thread.join(5)


def sim_settings(settings: Settings) -> Settings:
    return settings.replace(wechat_token=TOKEN, wechat_aes_key=AES_KEY, wechat_app_id=APP_ID)


def test_slow_webhook_gets_the_same_message_again(settings: Settings) -> None:
    """Injected: the first two tries take longer than the platform waits. Counted: 3 tries, one MsgId."""

    def slow_then_fast(_req: Request, call: int) -> Response:
        if call <= 2:
            time.sleep(0.8)
        return Response("success")

    out = simulator.build(sim_settings(settings), "wechat_aes", unique(), "slow?")
    with fake_webhook(slow_then_fast) as (url, seen):
        sim = simulator.send(out, url, "slow?", retry_after=0.3)
    assert [a.outcome for a in sim.attempts] == ["timeout", "timeout", "answered"]
    assert sim.ok and "2 retries" in sim.verdict
    codec = WeChatCodec(TOKEN, AES_KEY, APP_ID, 300)
    messages = [
        parse_message(codec.open(dict(r.args), r.get_data()).xml) for r in seen
    ]  # each try is signed and encrypted afresh, and each verifies
    assert {m.msg_id for m in messages} == {out.msg_id}
    assert len({r.args["nonce"] for r in seen}) == 3


def test_webhook_that_never_answers_in_time(settings: Settings) -> None:
    def hang(_req: Request, _call: int) -> Response:
        time.sleep(0.6)
        return Response("success")

    out = simulator.build(sim_settings(settings), "wechat_plain", unique(), "hello")
    with fake_webhook(hang) as (url, seen):
        sim = simulator.send(out, url, "hello", retry_after=0.2, attempts=3)
    assert len(seen) == 3  # WeChat's tries of one message
    assert not sim.ok
    assert "暂时无法提供服务" in sim.verdict


@pytest.mark.parametrize(
    ("status", "body", "phrase"),
    [
        (403, "signature mismatch", "WECHAT_TOKEN differs"),
        (400, "cannot decrypt <Encrypt>", "WECHAT_AES_KEY"),
        (302, "", "does not follow redirects"),
        (200, "<html>not xml", "could not read the reply"),
    ],
)
def test_refusals_are_explained(settings: Settings, status: int, body: str, phrase: str) -> None:
    out = simulator.build(sim_settings(settings), "wechat_aes", unique(), "hi")
    with fake_webhook(lambda _r, _c: Response(body, status)) as (url, seen):
        sim = simulator.send(out, url, "hi", retry_after=2)
    assert len(seen) == 1 and not sim.ok
    assert phrase in sim.verdict


def test_server_errors_are_retried_like_timeouts(settings: Settings) -> None:
    out = simulator.build(sim_settings(settings), "wechat_aes", unique(), "hi")
    with fake_webhook(lambda _r, c: Response("busy", 503) if c == 1 else Response("")) as (
        url,
        seen,
    ):
        sim = simulator.send(out, url, "hi", retry_after=2)
    assert [a.status for a in sim.attempts] == [503, 200]
    assert sim.ok


def test_unreachable_webhook(settings: Settings) -> None:
    out = simulator.build(sim_settings(settings), "wechat_aes", unique(), "hi")
    sim = simulator.send(out, f"http://127.0.0.1:{free_port()}/wechat", "hi")
    assert not sim.ok and "cannot reach" in sim.verdict


@pytest.mark.parametrize(
    ("changes", "channel", "error"),
    [
        ({}, "wechat_sms", "unknown channel"),
        ({"wechat_aes_key": ""}, "wechat_aes", "WECHAT_AES_KEY"),
        ({"wechat_token": ""}, "wechat_plain", "WECHAT_TOKEN"),
        ({}, "wecom_single", "built by bot.channels.wecom.simulator"),  # its own callbacks, not XML
    ],
)
def test_build_refuses(settings: Settings, changes: dict, channel: str, error: str) -> None:
    with pytest.raises(simulator.SimulationError, match=error):
        simulator.build(sim_settings(settings).replace(**changes), channel, "u", "t")


def _echo(transform: Callable[[str], str], status: int = 200) -> Handler:
    return lambda req, _c: Response(transform(req.args.get("echostr", "")), status)


@pytest.mark.parametrize(
    ("handler", "ok", "phrase"),
    [
        (_echo(lambda e: e), True, "will accept this URL"),
        (_echo(lambda e: e + "\n"), False, "extra whitespace"),
        (_echo(lambda e: f'"{e}"'), False, "wrapped"),
        (_echo(lambda e: "", 403), False, "the token on the server is not the one used here"),
        (_echo(lambda e: "moved", 301), False, "does not follow redirects"),
        (_echo(lambda e: "no", 404), False, "check the path"),
        (_echo(lambda e: "boom", 502), False, "the server failed"),
    ],
)
def test_verify_url_diagnoses(handler: Handler, ok: bool, phrase: str) -> None:
    with fake_webhook(handler) as (url, seen):
        result = simulator.verify_url(url, TOKEN)
    assert result["ok"] is ok
    assert phrase in result["diagnosis"]
    args = seen[0].args
    # The computed signature is the one WeChat would send, and it is what went on the wire.
    assert result["signature"] == args["signature"]
    assert (result["timestamp"], result["nonce"], result["echostr"]) == (
        args["timestamp"],
        args["nonce"],
        args["echostr"],
    )
    assert TOKEN not in str(result)


def test_verify_url_timeout_and_unreachable() -> None:
    def slow_answer(_req: Request, _call: int) -> Response:
        time.sleep(0.5)
        return Response("x")

    with fake_webhook(slow_answer) as (url, _seen):
        slow = simulator.verify_url(url, TOKEN, timeout=0.2)
    assert "gives up after 5 s" in slow["diagnosis"]
    gone = simulator.verify_url(f"http://127.0.0.1:{free_port()}/wechat", TOKEN)
    assert "cannot reach" in gone["diagnosis"]


def test_sandbox_outbox_only_from_a_sandbox(settings: Settings) -> None:
    assert (
        simulator.sandbox_outbox(
            settings.replace(wechat_api_base="https://api.weixin.qq.com/"), "u"
        )
        is None
    )
