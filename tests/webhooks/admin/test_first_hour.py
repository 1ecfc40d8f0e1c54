"""What a new operator meets in the console: WeCom histories, readable JSON, □ for controls,
a phone layout and a favicon."""

from __future__ import annotations

import pytest
import requests

from bot.console import admin
from bot.core import jobs
from bot.core.contracts import Answer
from bot.core.settings import Settings
from bot.core.store import connect
from bot.pipeline import moderation
from bot.pipeline.conversations import Conversations
from tests.helpers import ADMIN_TOKEN, make_job, unique
from tests.webhooks.admin.conftest import Browser

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def call(base: str, method: str, path: str, **kw) -> requests.Response:  # noqa: ANN003
    return requests.request(method, f"{base}/admin/api/{path}", headers=BEARER, timeout=30, **kw)


def wecom_turn(settings: Settings, scope: str, asker: str, text: str, answer: str) -> None:
    """A WeCom question as the webhook records it (job row by asker, history by thread)."""
    client = connect(settings.redis_url)
    job = make_job(scope, text, channel="wecom", asker=asker)
    jobs.record(client, job.job_id, "received", channel="wecom", user=asker, text=text, scope=scope)
    Conversations(client, 3600, 10).record(job, Answer(job=job, answer=answer, reasoning="想想"))


@pytest.mark.parametrize(
    ("channel", "key", "person"),
    [
        ("wecom", "u:alice", "alice"),
        ("wecom", "g:team:u:alice", "alice"),
        ("wecom", "g:team", None),  # WECOM_SESSION_SCOPE=group: the whole group's thread
        ("wecom", "alice", "alice"),  # a bare userid from an API caller
        ("wechat", "o_user", "o_user"),
    ],
)
def test_person_behind_a_conversation_key(channel: str, key: str, person: str | None) -> None:
    assert admin.person(channel, key) == person


@pytest.mark.parametrize("shape", ["group", "single"])
def test_wecom_conversations_open_reset_and_block(
    live_admin: tuple[str, Settings], shape: str
) -> None:
    base, settings = live_admin
    asker, chat = unique("zhang"), unique("team")
    scope = f"g:{chat}:u:{asker}" if shape == "group" else f"u:{asker}"
    wecom_turn(settings, scope, asker, "北京在哪里？", "在中国北方。")
    rows = call(base, "GET", "conversations", params={"user": asker}).json()["conversations"]
    assert [(r["channel"], r["user"], r["person"]) for r in rows] == [("wecom", scope, asker)]
    opened = call(base, "GET", f"conversations/wecom/{scope}").json()
    assert [m["content"] for m in opened["history"]] == ["北京在哪里？", "在中国北方。"]
    assert call(base, "POST", "conversations/block", json={"channel": "wecom", "user": scope})
    client = connect(settings.redis_url)
    assert moderation.is_blocked(client, "wecom", asker)  # WeCom checks the userid
    rows = call(base, "GET", "conversations", params={"user": asker}).json()["conversations"]
    assert rows[0]["blocked"] is True
    call(
        base,
        "POST",
        "conversations/block",
        json={"channel": "wecom", "user": scope, "blocked": False},
    )
    assert not moderation.is_blocked(client, "wecom", asker)
    call(base, "POST", "conversations/reset", json={"channel": "wecom", "user": scope})
    assert call(base, "GET", f"conversations/wecom/{scope}").json()["history"] == []


def test_admin_json_keeps_chinese_and_marks_control_characters(
    live_admin: tuple[str, Settings],
) -> None:
    base, settings = live_admin
    asker = unique("li")
    wecom_turn(settings, f"u:{asker}", asker, "你好\x07", "答\x00案\x1b[31m")
    raw = call(base, "GET", f"conversations/wecom/u:{asker}").text
    assert "你好□" in raw and "答□案□[31m" in raw
    assert "\\u" not in raw  # neither escaped Chinese nor escaped controls
    listed = call(base, "GET", "conversations", params={"user": asker}).text
    assert "你好□" in listed


def test_conversations_page_shows_a_wecom_history_with_marks(
    logged_in: Browser, admin_settings: Settings
) -> None:
    asker, chat = unique("wang"), unique("team")
    scope = f"g:{chat}:u:{asker}"
    wecom_turn(admin_settings, scope, asker, "问题\x07", "回答")
    page = logged_in.client.get(
        "/admin/conversations", query_string={"channel": "wecom", "open": scope}
    ).get_data(as_text=True)
    assert "No stored conversation" not in page
    assert "问题□" in page and "回答" in page and "\x07" not in page
    assert "Block user" in page and f'value="{scope}"' in page
    # The table keeps its stage column on a phone (classes the phone layout relies on).
    listed = logged_in.client.get("/admin/conversations", query_string={"user": asker})
    body = listed.get_data(as_text=True)
    assert 'class="grid convs"' in body and 'class="stage"' in body


def test_group_thread_has_no_block_button(logged_in: Browser, admin_settings: Settings) -> None:
    chat = unique("team")
    wecom_turn(admin_settings, f"g:{chat}", unique("zhao"), "大家好", "你们好")
    page = logged_in.client.get(
        "/admin/conversations", query_string={"channel": "wecom", "open": f"g:{chat}"}
    ).get_data(as_text=True)
    assert "你们好" in page and "Block user" not in page
    assert "block a person by their own id" in page


def test_every_page_has_a_favicon(logged_in: Browser) -> None:
    page = logged_in.client.get("/admin/login").get_data(as_text=True)
    assert 'rel="icon"' in page and "admin/favicon.svg" in page
    with logged_in.client.get("/static/admin/favicon.svg") as icon:
        assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
        assert b"<svg" in icon.data
