"""The fake WeChat API's rules, called directly over a real Redis: tokens, window, quota, faults."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bot.channels.wechat import sandbox
from bot.core.settings import Settings
from bot.core.store import key
from tests.helpers import APP_ID, APP_SECRET, free_port, unique

CREDENTIALS = {"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}
IP = "203.0.113.7"


@pytest.fixture
def client(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """Database 1 with no planned failures, the account verified and on the IP whitelist."""
    sandbox.plan_faults(redis_client, [])
    sandbox.set_ip_listed(redis_client, {"listed": True})
    yield redis_client
    sandbox.plan_faults(redis_client, [])
    redis_client.delete(
        key("sandbox", "account", APP_ID), key("sandbox", "ip-unlisted"), sandbox.ENGINE_DELAY_KEY
    )


def token(settings: Settings, client: redis.Redis) -> str:
    return str(sandbox.issue_token(settings, client, CREDENTIALS, IP)["access_token"])


def text(user: str, content: str = "你好") -> dict[str, Any]:
    return {"touser": user, "msgtype": "text", "text": {"content": content}}


# A case arranges the account and the user, then returns the token the call presents.
Arrange = Callable[[Settings, redis.Redis, str], str | None]


def window_open(settings: Settings, client: redis.Redis, user: str) -> str:
    sandbox.open_window(settings, client, user)
    return token(settings, client)


def no_window(settings: Settings, client: redis.Redis, _user: str) -> str:
    return token(settings, client)


def window_expired(settings: Settings, client: redis.Redis, user: str) -> str:
    sandbox.open_window(settings, client, user)
    opened = time.time() - settings.wechat_cs_window - 1
    client.hset(key("sandbox", "window", user), "opened_at", f"{opened:.3f}")
    return token(settings, client)


def quota_used(settings: Settings, client: redis.Redis, user: str) -> str:
    given = window_open(settings, client, user)
    for n in range(settings.wechat_cs_quota):
        assert sandbox.send_custom(settings, client, given, text(user, f"#{n}")) == sandbox.OK
    return given


def stale_token(settings: Settings, client: redis.Redis, user: str) -> str:
    old = window_open(settings, client, user)
    token(settings, client)  # another fetch: the old token stops working
    return old


def expired_token(settings: Settings, client: redis.Redis, user: str) -> str:
    given = window_open(settings, client, user)
    client.pexpire(key("sandbox", "token", APP_ID), 1)  # its 7200 s, run out in Redis
    time.sleep(0.01)
    return given


def unverified(settings: Settings, client: redis.Redis, user: str) -> str:
    given = window_open(settings, client, user)
    sandbox.set_verified(settings, client, {"verified": False})
    return given


def fault(plan: list[dict[str, Any]]) -> Arrange:
    def arrange(settings: Settings, client: redis.Redis, user: str) -> str:
        given = window_open(settings, client, user)
        sandbox.plan_faults(client, plan)
        return given

    return arrange


@pytest.mark.parametrize(
    ("arrange", "body", "errcode"),
    [
        pytest.param(window_open, None, 0, id="ok"),
        pytest.param(lambda *_: None, None, 41001, id="no-token"),
        pytest.param(lambda s, c, u: window_open(s, c, u) + "x", None, 40001, id="wrong-token"),
        pytest.param(stale_token, None, 40001, id="stale-token"),
        pytest.param(expired_token, None, 40001, id="expired-token"),
        pytest.param(unverified, None, 48001, id="unverified"),
        pytest.param(window_open, ["not", "an", "object"], 47001, id="not-an-object"),
        pytest.param(
            window_open, {"msgtype": "text", "text": {"content": "x"}}, 40003, id="no-user"
        ),
        pytest.param(window_open, {"touser": "u", "msgtype": "image"}, 40008, id="image"),
        pytest.param(window_open, {"touser": "u", "msgtype": "text"}, 44003, id="no-content"),
        pytest.param(window_open, "oversize", 45002, id="2049-bytes"),
        pytest.param(no_window, None, 45015, id="window-never-opened"),
        pytest.param(window_expired, None, 45015, id="window-closed"),
        pytest.param(quota_used, None, 45047, id="sixth-send"),
        pytest.param(fault([{"errcode": -1}]), None, -1, id="injected-errcode"),
        pytest.param(fault([{"errcode": 45009, "on": "typing"}]), None, 0, id="fault-for-typing"),
        pytest.param(fault([{"delay": 0.01}]), None, 0, id="injected-delay-only"),
    ],
)
def test_send_custom_checks_what_wechat_checks(
    settings: Settings, client: redis.Redis, arrange: Arrange, body: Any, errcode: int
) -> None:
    user = unique()
    given = arrange(settings, client, user)
    if body is None:
        body = text(user)
    elif body == "oversize":
        body = text(user, "字" * 683)  # 2049 bytes of UTF-8
    assert sandbox.send_custom(settings, client, given, body)[0] == errcode
    shown = [m["content"] for m in sandbox.outbox(client, user)]
    assert (text(user)["text"]["content"] in shown) is (errcode == 0)


def test_a_refused_send_uses_no_quota(settings: Settings, client: redis.Redis) -> None:
    user = unique()
    given = window_open(settings, client, user)
    assert sandbox.send_custom(settings, client, given, text(user, "字" * 683))[0] == 45002
    for n in range(settings.wechat_cs_quota):
        assert sandbox.send_custom(settings, client, given, text(user, str(n))) == sandbox.OK
    assert client.hget(key("sandbox", "window", user), "used") == str(settings.wechat_cs_quota)


def test_an_injected_status_is_an_http_failure(settings: Settings, client: redis.Redis) -> None:
    user = unique()
    given = fault([{"on": "send", "status": 502}])(settings, client, user)
    assert sandbox.typing(settings, client, given, {"touser": user, "command": "Typing"}) == (
        sandbox.OK
    )  # the fault waits for a send
    with pytest.raises(sandbox.HTTPFailure) as failed:
        sandbox.send_custom(settings, client, given, text(user))
    assert failed.value.status == 502
    seen = sandbox.faults(client)
    assert seen["planned"] == []
    [applied] = seen["applied"]
    assert applied["status"] == 502 and applied["path"] == sandbox.SEND_PATH


@pytest.mark.parametrize(
    ("arrange", "body", "errcode"),
    [
        pytest.param(window_open, {"command": "Typing"}, 0, id="typing"),
        pytest.param(window_open, {"command": "CancelTyping"}, 0, id="cancel"),
        pytest.param(window_open, {"command": "Dance"}, 40001, id="unknown-command"),
        pytest.param(window_open, "not json", 47001, id="not-an-object"),
        pytest.param(no_window, {"command": "Typing"}, 45015, id="window-closed"),
        pytest.param(quota_used, {"command": "Typing"}, 0, id="free-after-quota"),
        pytest.param(stale_token, {"command": "Typing"}, 40001, id="stale-token"),
        pytest.param(fault([{"errcode": 45009, "on": "typing"}]), {"command": "Typing"}, 45009),
    ],
)
def test_typing_is_free_inside_the_window(
    settings: Settings, client: redis.Redis, arrange: Arrange, body: Any, errcode: int
) -> None:
    user = unique()
    given = arrange(settings, client, user)
    if isinstance(body, dict):
        body = {"touser": user, **body}
    assert sandbox.typing(settings, client, given, body)[0] == errcode
    shown = client.lrange(key("sandbox", "typing", user), 0, -1)
    assert len(shown) == (1 if errcode == 0 else 0)


@pytest.mark.parametrize(
    ("args", "unlisted", "errcode"),
    [
        ({}, False, 0),
        ({"grant_type": "password"}, False, 40002),
        ({}, True, 40164),
        ({"appid": "wxffffffffffffffff"}, False, 40013),
        ({"secret": "wrong"}, False, 40125),
    ],
)
def test_token_is_issued_for_the_account_only(
    settings: Settings, client: redis.Redis, args: dict[str, str], unlisted: bool, errcode: int
) -> None:
    before = client.get(key("sandbox", "token", APP_ID))
    sandbox.set_ip_listed(client, {"listed": not unlisted})
    answer = sandbox.issue_token(settings, client, {**CREDENTIALS, **args}, IP)
    current = client.get(key("sandbox", "token", APP_ID))
    if errcode:
        assert answer["errcode"] == errcode and current == before
        assert (IP in answer["errmsg"]) is unlisted
    else:
        assert answer == {"access_token": current, "expires_in": sandbox.TOKEN_TTL}
        assert current != before


@pytest.mark.parametrize(
    ("call", "body", "error"),
    [
        (lambda s, c, b: sandbox.plan_faults(c, b), {"status": 500}, "JSON list"),
        (lambda s, c, b: sandbox.plan_faults(c, b), [1], "JSON list"),
        (lambda s, c, b: sandbox.set_ip_listed(c, b), {"listed": "no"}, "listed"),
        (lambda s, c, b: sandbox.set_engine_delay(c, b), {"delay": "soon"}, "number"),
        (lambda s, c, b: sandbox.open_window_for(s, c, b), {"user": ""}, "user is required"),
        (lambda s, c, b: sandbox.user_says(s, c, b, "http://x/wechat"), {}, "user and content"),
        (lambda s, c, b: sandbox.outbox(c, b), "", "touser is required"),
    ],
)
def test_controls_refuse_what_they_cannot_act_on(
    settings: Settings, client: redis.Redis, call: Callable[..., Any], body: Any, error: str
) -> None:
    with pytest.raises(sandbox.Refused, match=error):
        call(settings, client, body)


@pytest.mark.parametrize(
    ("body", "delay"), [({"delay": 1.5}, 1.5), ({"delay": -3}, 0.0), (None, 0.0), ({}, 0.0)]
)
def test_engine_delay(client: redis.Redis, body: Any, delay: float) -> None:
    assert sandbox.set_engine_delay(client, body) == delay
    assert float(client.get(sandbox.ENGINE_DELAY_KEY) or -1) == delay


@pytest.mark.parametrize(
    ("body", "verified"), [({"verified": False}, False), ({}, True), (None, True)]
)
def test_account_switch(settings: Settings, client: redis.Redis, body: Any, verified: bool) -> None:
    assert sandbox.set_verified(settings, client, body) is verified
    given = window_open(settings, client, user := unique())
    assert sandbox.send_custom(settings, client, given, text(user))[0] == (0 if verified else 48001)


def test_a_user_whose_webhook_is_down_sees_wechats_failure_notice(
    settings: Settings, client: redis.Redis
) -> None:
    user = unique()
    webhook = f"http://127.0.0.1:{free_port()}/wechat"
    seen = sandbox.user_says(settings, client, {"user": user, "content": "hi"}, webhook)
    assert seen["failed"] and seen["reply"] is None and len(seen["attempts"]) == 1
    [notice] = sandbox.outbox(client, user)
    assert (notice["via"], notice["content"]) == ("wechat", sandbox.SERVICE_FAILURE)
    given = token(settings, client)  # the message opened the user's window
    assert sandbox.send_custom(settings, client, given, text(user)) == sandbox.OK
