"""The response_url client against the sandbox WeCom over real HTTP."""

from __future__ import annotations

import pytest
import requests

from bot.channels.wecom.api import WeComAPIError, post_markdown
from bot.core.settings import Settings
from tests.helpers import free_port, unique


def response_url(base: str, user: str) -> str:
    """A fresh response_url: the sandbox hands one out with every message it sends."""
    res = requests.post(f"{base}/sandbox/wecom/send", json={"userid": user, "text": "/help"})
    res.raise_for_status()
    return res.json()["response_url"]


def test_post_is_accepted_once(live_sandbox: tuple[str, Settings]) -> None:
    base, _ = live_sandbox
    user = unique("u")
    url = response_url(base, user)
    post_markdown(url, "**Four.**")
    with pytest.raises(WeComAPIError) as err:
        post_markdown(url, "again")
    assert (err.value.code, err.value.transient) == (40058, False)
    chat = requests.get(f"{base}/sandbox/wecom/chat", params={"userid": user}).json()
    assert [m["content"] for m in chat["messages"] if m["kind"] == "response_url"] == ["**Four.**"]


@pytest.mark.parametrize(
    ("path", "code", "transient"),
    [
        ("/sandbox/wecom/response?response_code=unknown", 40058, False),
        ("/no/such/endpoint?response_code=secret-code", None, False),
    ],
)
def test_refusals_are_errors(
    live_sandbox: tuple[str, Settings], path: str, code: int | None, transient: bool
) -> None:
    base, _ = live_sandbox
    with pytest.raises(WeComAPIError) as err:
        post_markdown(base + path, "x")
    assert (err.value.code, err.value.transient) == (code, transient)
    assert "secret-code" not in str(err.value)  # the URL is a capability: never in errors


def test_unreachable_host_is_transient_and_keeps_the_url_secret() -> None:
    url = f"http://127.0.0.1:{free_port()}/cgi-bin/aibot/response?response_code=secret-code"
    with pytest.raises(WeComAPIError) as err:
        post_markdown(url, "x", timeout=2)
    assert err.value.transient
    assert "secret-code" not in str(err.value)
