"""End to end through real processes: web → Redis → Celery worker (tiny model) → sandbox API."""

from __future__ import annotations

import time

import pytest
import requests

from bot.channels.wechat.protocol import message_xml, read_reply, sign_request
from bot.pipeline import commands
from tests.conftest import Stack
from tests.helpers import ACCOUNT, AES_KEY, APP_ID, TOKEN, unique

pytestmark = pytest.mark.integration


def post(stack: Stack, xml: str, aes: str = AES_KEY) -> requests.Response:
    signed = sign_request(TOKEN, xml, aes_key=aes, app_id=APP_ID)
    return requests.post(
        f"{stack.url}/wechat", params=signed.params, data=signed.body.encode(), timeout=10
    )


def settle(stack: Stack, user: str, count: int, quiet: float = 2.0) -> list[dict]:
    """Wait for `count` messages, then a little longer to catch any extra (duplicate) ones."""
    stack.wait_outbox(user, count)
    time.sleep(quiet)
    return stack.outbox(user)


def test_encrypted_message_with_three_retries_gets_one_answer(stack: Stack) -> None:
    user = unique()
    stack.open_window(user)
    xml = message_xml(user, ACCOUNT, content="What is the capital of France?")
    timings = []
    for _ in range(4):  # WeChat's first try and its 3 retries of the same MsgId
        started = time.perf_counter()
        res = post(stack, xml)
        timings.append(time.perf_counter() - started)
        assert (res.status_code, res.text) == (200, "success")
    assert max(timings) < 1.0
    messages = settle(stack, user, 1)
    assert len(messages) == 1
    assert messages[0]["content"].strip()
    history = stack.redis.lrange(f"mimochat:conv:wechat:{user}", 0, -1)
    assert len(history) == 2  # one question, one answer


def test_plaintext_mode_message_answered(stack: Stack) -> None:
    user = unique()
    stack.open_window(user)
    assert post(stack, message_xml(user, ACCOUNT, content="hello"), aes="").text == "success"
    assert len(settle(stack, user, 1, quiet=0.5)) == 1


def test_conversation_carries_on_and_resets(stack: Stack) -> None:
    user = unique()
    stack.say(user, "first question")
    stack.wait_outbox(user, 1)
    stack.say(user, "second question")
    stack.wait_outbox(user, 2)
    key = f"mimochat:conv:wechat:{user}"
    deadline = time.monotonic() + 10
    while stack.redis.llen(key) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.redis.llen(key) == 4
    res = post(stack, message_xml(user, ACCOUNT, content="/reset"))
    fields = read_reply(res.text, token=TOKEN, aes_key=AES_KEY, app_id=APP_ID)
    assert fields["Content"] == commands.RESET_TEXT
    assert stack.redis.llen(key) == 0


def test_delivery_survives_api_failures(stack: Stack) -> None:
    """Injected: two 5xx answers from the WeChat API. Counted: exactly one answer delivered."""
    user = unique()
    stack.plan_faults([{"status": 500}, {"status": 502}])
    stack.say(user, "are you there?")
    messages = settle(stack, user, 1, quiet=1.0)
    assert len(messages) == 1


def test_token_invalidated_elsewhere_is_refreshed(stack: Stack) -> None:
    """Injected: a token fetch by someone else, which invalidates the worker's token (40001)."""
    user = unique()
    stack.say(user, "warm up")
    stack.wait_outbox(user, 1)
    s = stack.settings
    requests.get(
        f"{stack.url}/sandbox/wechat/cgi-bin/token",
        params={
            "grant_type": "client_credential",
            "appid": s.wechat_app_id,
            "secret": s.wechat_app_secret,
        },
        timeout=5,
    ).raise_for_status()
    stack.say(user, "again")
    assert len(settle(stack, user, 2, quiet=1.0)) == 2


def test_any_wechat_like_client_gets_its_answer_in_the_outbox(stack: Stack) -> None:
    """A signed message posted straight to /wechat (no sandbox call first): the sandbox opens
    the user's window as WeChat's server does, so the answer lands in the outbox, once."""
    user = unique()
    assert (
        post(stack, message_xml(user, ACCOUNT, content="hello from any client")).text == "success"
    )
    assert len(settle(stack, user, 1)) == 1
