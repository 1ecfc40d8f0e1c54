"""The sandbox WeCom over real HTTP: it calls /wecom as WeCom does and records what chats see."""

from __future__ import annotations

import time

import pytest
import requests
from flask.testing import FlaskClient

from bot.channels.wecom import streams as wecom
from bot.core.settings import Settings
from tests.helpers import unique
from webhooks.app import create_app


def send(base: str, **body: object) -> dict:
    res = requests.post(f"{base}/sandbox/wecom/send", json=body, timeout=10)
    assert res.status_code == 200, res.text
    return res.json()


def chat(base: str, **params: str) -> dict:
    res = requests.get(f"{base}/sandbox/wecom/chat", params=params, timeout=5)
    res.raise_for_status()
    return res.json()


def test_url_check_as_wecom_does_it(live_sandbox: tuple[str, Settings]) -> None:
    base, _ = live_sandbox
    assert requests.post(f"{base}/sandbox/wecom/verify", timeout=10).json() == {
        "ok": True,
        "status": 200,
    }


@pytest.mark.parametrize(("in_group", "typed"), [(True, "@MiMo /help"), (False, "/help")])
def test_help_is_shown_to_the_chat(
    live_sandbox: tuple[str, Settings], in_group: bool, typed: str
) -> None:
    base, _ = live_sandbox
    user = unique("u")
    where = {"chatid": unique("g")} if in_group else {"userid": user}
    sent = send(base, **{"userid": user, **where}, text="/help")
    [reply] = sent["replies"]
    assert (reply["kind"], reply["finish"], reply["content"]) == ("stream", True, wecom.HELP_TEXT)
    assert sent["chat"] == where.get("chatid", f"single:{user}")
    shown = chat(base, **where)["messages"]
    assert [(m["kind"], m.get("text") or m.get("content")) for m in shown] == [
        ("user", typed),
        ("bot", wecom.HELP_TEXT),
    ]


def test_unfinished_stream_is_refreshed_until_the_limit(live_sandbox: tuple[str, Settings]) -> None:
    """No worker listens here, so the answer never comes: the sandbox stops after 3 refreshes."""
    base, settings = live_sandbox
    group = unique("g")
    sent = send(base, chatid=group, userid="bob", text="what is 2+2?", refreshes=3, retries=1)
    assert [r["stream_id"] for r in sent["replies"]] == [sent["stream_id"]] * 2  # one stream
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = chat(base, chatid=group)["events"]
        if events[-1]["kind"] == "refresh_stopped":
            break
        time.sleep(settings.wecom_sandbox_refresh_interval)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "user" and kinds[-1] == "refresh_stopped"
    assert all(e["finish"] is False for e in events if e["kind"] == "stream")
    [bot] = [m for m in chat(base, chatid=group)["messages"] if m["kind"] == "bot"]
    assert bot["content"].startswith("> **@bob**: what is 2+2?")


@pytest.mark.parametrize(
    "body",
    [
        {"msgtype": "sticker", "text": "x"},
        {"text": "x", "retries": 9},
        {"text": "x", "refreshes": -1},
        {"text": "x", "retries": "2"},
    ],
)
def test_send_refuses_bad_requests(client: FlaskClient, body: dict) -> None:
    assert client.post("/sandbox/wecom/send", json=body).status_code == 400
    assert client.post("/sandbox/wecom/send", data="[1]").status_code == 400


def test_chat_needs_a_chat(client: FlaskClient) -> None:
    assert client.get("/sandbox/wecom/chat").status_code == 400


@pytest.mark.parametrize("query", ["", "?response_code=nope"])
def test_response_url_needs_a_live_code(client: FlaskClient, query: str) -> None:
    body = {"msgtype": "markdown", "markdown": {"content": "late"}}
    assert client.post(f"/sandbox/wecom/response{query}", json=body).get_json() == {
        "errcode": 40058,
        "errmsg": "invalid or expired response_code",
    }


@pytest.mark.parametrize("path", ["/sandbox/wecom/send", "/sandbox/wecom/verify"])
def test_the_robot_must_be_configured(settings: Settings, path: str) -> None:
    client = create_app(settings.replace(wecom_bot_aes_key="")).test_client()
    res = client.post(path, json={"text": "x"})
    assert (res.status_code, res.get_json()) == (
        400,
        {"error": "WECOM_BOT_TOKEN and WECOM_BOT_AES_KEY must be set"},
    )


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"msgtype": "text", "text": {"content": "x"}}, 40008),
        ({"msgtype": "markdown", "markdown": {"content": ""}}, 44003),
        ({"msgtype": "markdown", "markdown": {"content": "x" * 20481}}, 45002),
        ({"msgtype": "markdown", "markdown": {"content": "ok"}}, 0),
    ],
)
def test_response_url_checks_what_wecom_checks(
    live_sandbox: tuple[str, Settings], body: dict, errcode: int
) -> None:
    base, _ = live_sandbox
    url = send(base, userid=unique("u"), text="/help")["response_url"]
    assert requests.post(url, json=body, timeout=5).json()["errcode"] == errcode


def test_not_mounted_outside_demo_and_tests(settings: Settings) -> None:
    client = create_app(settings.replace(sandbox=False)).test_client()
    assert client.post("/sandbox/wecom/send", json={"text": "x"}).status_code == 404
