"""The fake WeChat API's routes: each parses the request, calls one rule and answers JSON."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from bot.core.settings import Settings
from tests.helpers import APP_ID, APP_SECRET, unique
from webhooks.app import create_app

PREFIX = "/sandbox/wechat"
CREDENTIALS = {"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}


@pytest.fixture
def sandbox_client(client: FlaskClient) -> Iterator[FlaskClient]:
    """The app's test client on the sandbox as other tests expect it, before and after: no
    failures planned, on the IP whitelist, verified, no engine delay."""

    def reset() -> None:
        client.post(f"{PREFIX}/faults", json=[])
        client.post(f"{PREFIX}/ip-whitelist", json={"listed": True})
        client.post(f"{PREFIX}/account", json={"verified": True})
        client.post(f"{PREFIX}/engine", json={"delay": 0})

    reset()
    yield client
    reset()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "answer"),
    [
        (
            "post",
            "/faults",
            {"status": 500},
            400,
            {"error": "expected a JSON list of {status, errcode, delay}"},
        ),
        (
            "post",
            "/faults",
            "[",
            400,
            {"error": "expected a JSON list of {status, errcode, delay}"},
        ),
        ("post", "/faults", None, 200, {"planned": 0}),
        ("post", "/faults", [{"errcode": -1, "on": "typing"}], 200, {"planned": 1}),
        (
            "post",
            "/ip-whitelist",
            {"listed": "no"},
            400,
            {"error": 'expected {"listed": true|false}'},
        ),
        ("post", "/ip-whitelist", {"listed": False}, 200, {"listed": False}),
        ("post", "/account", {"verified": False}, 200, {"verified": False}),
        ("post", "/account", "not json", 200, {"verified": True}),
        ("post", "/engine", {"delay": "soon"}, 400, {"error": "delay must be a number of seconds"}),
        ("post", "/engine", {"delay": 2}, 200, {"delay": 2.0}),
        ("post", "/window", {}, 400, {"error": "user is required"}),
        ("post", "/window", {"user": "o_window"}, 200, {"opened": True}),
        ("post", "/user", {"content": "hi"}, 400, {"error": "user and content are required"}),
        ("get", "/outbox", None, 400, {"error": "touser is required"}),
        ("get", "/outbox?touser=o_nobody_ever", None, 200, []),
        (
            "get",
            "/cgi-bin/token?grant_type=password",
            None,
            200,
            {"errcode": 40002, "errmsg": "invalid grant_type"},
        ),
        (
            "post",
            "/cgi-bin/message/custom/send",
            {},
            200,
            {"errcode": 41001, "errmsg": "access_token missing"},
        ),
        (
            "post",
            "/cgi-bin/message/custom/typing?access_token=x",
            {},
            200,
            {
                "errcode": 40001,
                "errmsg": "invalid credential, access_token is invalid or not latest",
            },
        ),
    ],
)
def test_routes(
    sandbox_client: FlaskClient, method: str, path: str, body: Any, status: int, answer: Any
) -> None:
    data = body if isinstance(body, str) else None
    json_body = None if isinstance(body, str) or body is None else body
    res = getattr(sandbox_client, method)(PREFIX + path, json=json_body, data=data)
    assert (res.status_code, res.get_json()) == (status, answer)


def test_a_send_through_the_routes(sandbox_client: FlaskClient) -> None:
    """Token, window, send, outbox; then an injected HTTP failure and the faults record."""
    token = sandbox_client.get(f"{PREFIX}/cgi-bin/token", query_string=CREDENTIALS).get_json()
    assert token["expires_in"] == 7200
    send = f"{PREFIX}/cgi-bin/message/custom/send?access_token={token['access_token']}"
    user = unique()
    message = {"touser": user, "msgtype": "text", "text": {"content": "你好"}}
    assert sandbox_client.post(send, json=message).get_json()["errcode"] == 45015
    sandbox_client.post(f"{PREFIX}/window", json={"user": user})
    assert sandbox_client.post(send, data="{").get_json()["errcode"] == 47001
    assert sandbox_client.post(send, json=message).get_json() == {"errcode": 0, "errmsg": "ok"}
    [shown] = sandbox_client.get(f"{PREFIX}/outbox", query_string={"touser": user}).get_json()
    assert (shown["content"], shown["via"]) == ("你好", "customer_service")

    sandbox_client.post(f"{PREFIX}/faults", json=[{"status": 503, "on": "send"}])
    failed = sandbox_client.post(send, json=message)
    assert (failed.status_code, failed.get_json()) == (503, {"error": "injected failure"})
    seen = sandbox_client.get(f"{PREFIX}/faults").get_json()
    assert (
        seen["planned"] == []
        and seen["applied"][0]["path"] == f"{PREFIX}/cgi-bin/message/custom/send"
    )


def test_token_outside_the_whitelist_names_the_ip(sandbox_client: FlaskClient) -> None:
    sandbox_client.post(f"{PREFIX}/ip-whitelist", json={"listed": False})
    answer = sandbox_client.get(f"{PREFIX}/cgi-bin/token", query_string=CREDENTIALS).get_json()
    assert answer["errcode"] == 40164 and "127.0.0.1" in answer["errmsg"]


def test_not_mounted_outside_demo_and_tests(settings: Settings) -> None:
    client = create_app(settings.replace(sandbox=False)).test_client()
    assert client.get(f"{PREFIX}/outbox", query_string={"touser": "u"}).status_code == 404
