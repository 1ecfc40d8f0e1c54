"""The logs of a real pipeline run: one line per stage, one request id from webhook to delivery,
no secret, no access token and no user text (MIMOCHAT_LOG_USER_TEXT is off)."""

from __future__ import annotations

import re
import time

import pytest
import requests

from bot.channels.wechat.protocol import message_xml, sign_request
from tests.conftest import Stack
from tests.helpers import ACCOUNT, AES_KEY, APP_ID, APP_SECRET, TOKEN, unique

pytestmark = pytest.mark.integration


def lines_with(stack: Stack, needle: str) -> list[str]:
    return [
        line
        for path in sorted(stack.logs.glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if needle in line
    ]


def test_one_request_id_follows_a_message_and_no_secret_is_logged(stack: Stack) -> None:
    """Injected: the access token invalidated by a fetch elsewhere, so this run refreshes it.
    Counted: the stage lines of the message's request id, and secrets found in every log."""
    s = stack.settings
    token = requests.get(
        f"{stack.url}/sandbox/wechat/cgi-bin/token",
        params={"grant_type": "client_credential", "appid": s.wechat_app_id, "secret": APP_SECRET},
        timeout=5,
    ).json()["access_token"]
    user, question = unique(), f"my private question {unique('q')}"
    stack.open_window(user)  # as WeChat's server does when the user writes
    xml = message_xml(user, ACCOUNT, content=question)
    signed = sign_request(TOKEN, xml, aes_key=AES_KEY, app_id=APP_ID)
    res = requests.post(
        f"{stack.url}/wechat", params=signed.params, data=signed.body.encode(), timeout=10
    )
    assert res.text == "success"
    stack.wait_outbox(user, 1)
    (received,) = [line for line in lines_with(stack, f"user={user}") if "stage=received" in line]
    request_id = re.search(r"request_id=(\w+)", received).group(1)
    deadline = time.monotonic() + 10
    while True:
        stages = [
            re.search(r" stage=(\w+)", line).group(1)
            for line in lines_with(stack, f"request_id={request_id}")
            if " stage=" in line
        ]
        if "delivered" in stages or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert stages == ["received", "enqueued", "started", "generated", "delivered"]
    assert lines_with(stack, "access token refreshed")  # the refresh happened in this run
    current = stack.redis.get(f"mimochat:sandbox:token:{s.wechat_app_id}")  # the refreshed one
    for secret in (APP_SECRET, AES_KEY, token, current, question):
        assert secret
        assert not lines_with(stack, secret), secret
    assert not lines_with(stack, "SANDBOX_")  # no access token the sandbox ever issued
