"""The one fake WeCom, called directly: its refresh loop against a fake robot over real HTTP,
the response_url rules, the /sandbox front's checks and the folded chat, over a real Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from bot.channels.wecom import sandbox
from bot.channels.wecom.protocol import stream_reply
from bot.channels.wecom.streams import THINKING_TEXT
from bot.core.settings import Settings
from tests.bot.channels.wecom.fake_robot import robot
from tests.helpers import WECOM_AES_KEY, WECOM_TOKEN, free_port, unique


@pytest.fixture
def wecom_settings(settings: Settings) -> Settings:
    return settings.replace(
        wecom_bot_token=WECOM_TOKEN,
        wecom_bot_aes_key=WECOM_AES_KEY,
        wecom_bot_name="",
        wecom_sandbox_refresh_interval=0.05,
    )


def a_chat() -> sandbox.ChatLog:
    return sandbox.sandbox_chat(unique("g"), unique("m"))


def a_stream(url: str, *, started: float | None = None, first: str = "") -> sandbox.Stream:
    begun = time.monotonic() if started is None else started
    return sandbox.Stream(url, "alice", "team", "s1", sandbox.SANDBOX_BOT_ID, begun, first)


def stream(content: str, finish: bool = False) -> tuple[int, dict]:
    return 200, stream_reply("s1", content, finish)


@pytest.mark.parametrize(
    ("answers", "limit", "end", "shown", "calls"),
    [
        pytest.param(
            [stream("a"), stream("a"), stream("ab"), stream("abc", True)],
            None,
            "finished",
            [("stream", "a"), ("stream", "ab"), ("stream", "abc")],
            4,
            id="grows-then-finishes",
        ),
        pytest.param(
            [stream(THINKING_TEXT), stream(THINKING_TEXT)],
            2,
            "stopped",
            [("refresh_stopped", None)],
            2,
            id="unchanged-until-the-limit",
        ),
        pytest.param([(503, "busy")], None, "error", [("error", "busy")], 1, id="http-error"),
        pytest.param(
            [(200, "not sealed")],
            None,
            "error",
            [("error", "reply is not JSON")],
            1,
            id="unsealed",
        ),
        pytest.param(
            [(200, {"msgtype": "text", "text": {"content": "hi"}})],
            None,
            "finished",
            [("text", "hi")],
            1,
            id="a-text-ends-it",
        ),
        pytest.param([(200, None)], None, "finished", [("empty", None)], 1, id="empty-ends-it"),
        pytest.param([], 0, "stopped", [("refresh_stopped", None)], 0, id="no-refresh-allowed"),
    ],
)
def test_the_refresh_loop_records_what_the_chat_shows(
    wecom_settings: Settings,
    redis_client: redis.Redis,
    answers: list[tuple[int, Any]],
    limit: int | None,
    end: str,
    shown: list[tuple[str, str | None]],
    calls: int,
) -> None:
    """The loop starts from the first reply (THINKING_TEXT): only a change is a new version."""

    def answer(payload: dict, call: int) -> tuple[int, Any]:
        assert payload["msgtype"] == "stream" and payload["stream"]["id"] == "s1"
        assert (payload["chatid"], payload["from"]["userid"]) == ("team", "alice")
        assert payload["aibotid"] == sandbox.SANDBOX_BOT_ID
        return answers[call - 1]

    chat = a_chat()
    with robot(answer) as (url, seen):
        got = sandbox.refresh_loop(
            wecom_settings,
            redis_client,
            chat,
            a_stream(url, first=THINKING_TEXT),
            timeout=2.0,
            limit=limit,
        )
    assert (got, len(seen)) == (end, calls)
    events = chat.events(redis_client)
    texts = [
        e.get("content", e.get("body")) if e["kind"] != "refresh_stopped" else None for e in events
    ]
    assert list(zip([e["kind"] for e in events], texts, strict=True)) == shown
    assert all(
        e["stream_id"] == "s1" for e in events if e["kind"].startswith(("stream", "refresh"))
    )
    assert all(
        e["userid"] == "alice" for e in events if "refresh" in e and e["kind"] != "refresh_stopped"
    )
    loop = chat.loop(redis_client)
    assert (loop["state"], int(loop.get("refreshes", 0))) == (end, calls)


def test_wecoms_six_minutes_end_the_loop(
    wecom_settings: Settings, redis_client: redis.Redis
) -> None:
    chat = a_chat()
    long_ago = time.monotonic() - sandbox.WECOM_STREAM_LIMIT - 1
    with robot(lambda _p, _c: stream("never asked")) as (url, seen):
        end = sandbox.refresh_loop(
            wecom_settings, redis_client, chat, a_stream(url, started=long_ago), timeout=2.0
        )
    assert (end, seen) == ("expired", [])
    [expired] = chat.events(redis_client)
    assert (expired["kind"], expired["stream_id"], expired["refresh"]) == (
        "refresh_expired",
        "s1",
        0,
    )


def test_follow_refreshes_in_the_background(
    wecom_settings: Settings, redis_client: redis.Redis
) -> None:
    chat = a_chat()
    with robot(lambda _p, call: stream("x" * call, call == 3)) as (url, _seen):
        thread = sandbox.follow(wecom_settings, redis_client, chat, a_stream(url), timeout=2.0)
        assert chat.loop(redis_client)["state"] in ("running", "finished")
        thread.join(10)
    assert chat.loop(redis_client)["state"] == "finished"
    assert [e["content"] for e in chat.events(redis_client)] == ["x", "xx", "xxx"]


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"msgtype": "text", "text": {"content": "x"}}, 40008),
        ({"msgtype": "markdown"}, 40008),
        (["not", "an", "object"], 40008),
        (None, 40008),
        ({"msgtype": "markdown", "markdown": {"content": ""}}, 44003),
        ({"msgtype": "markdown", "markdown": {"content": "长" * 6827}}, 45002),  # 20481 bytes
        ({"msgtype": "markdown", "markdown": {"content": "x" * 20480}}, 0),
    ],
)
def test_response_url_checks_what_wecom_checks(
    redis_client: redis.Redis, body: Any, errcode: int
) -> None:
    chat = a_chat()
    _url, code = sandbox.new_response_url("http://127.0.0.1:9/response")
    sandbox.open_response_url(redis_client, code, chat, userid="alice", msgid="m1")
    assert sandbox.accept_response(redis_client, code, body)[0] == errcode
    posted = [e for e in chat.events(redis_client) if e["kind"] == "response_url"]
    assert len(posted) == (1 if errcode == 0 else 0)
    if posted:
        assert (posted[0]["userid"], posted[0]["msgid"]) == ("alice", "m1")


def test_a_response_url_works_once(redis_client: redis.Redis) -> None:
    chat = a_chat()
    url, code = sandbox.new_response_url("http://127.0.0.1:9/response")
    assert url.endswith(f"?response_code={code}")
    ok = {"msgtype": "markdown", "markdown": {"content": "late"}}
    assert sandbox.accept_response(redis_client, unique(), ok) == (
        40058,
        "invalid or expired response_code",
    )
    assert sandbox.accept_response(redis_client, "", ok)[0] == 40058
    sandbox.open_response_url(redis_client, code, chat)
    assert sandbox.accept_response(redis_client, code, ok) == (0, "ok")
    assert sandbox.accept_response(redis_client, code, ok) == (40058, "response_code already used")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([1], "JSON object"),
        (None, "JSON object"),
        ({"msgtype": "sticker"}, "msgtype must be one of"),
        ({"retries": 9}, "retries"),
        ({"retries": "2"}, "retries"),
        ({"refreshes": -1}, "refreshes"),
        ({"refreshes": 1.5}, "refreshes"),
    ],
)
def test_send_refuses_bad_requests(
    wecom_settings: Settings, redis_client: redis.Redis, body: Any, error: str
) -> None:
    with pytest.raises(sandbox.Refused, match=error):
        sandbox.send(
            wecom_settings, redis_client, body, webhook="http://x/wecom", responses="http://x/r"
        )


def test_send_and_verify_need_the_robots_token_and_key(
    wecom_settings: Settings, redis_client: redis.Redis
) -> None:
    bare = wecom_settings.replace(wecom_bot_token="")
    with pytest.raises(sandbox.Refused, match="WECOM_BOT_TOKEN"):
        sandbox.send(
            bare, redis_client, {"text": "x"}, webhook="http://x/wecom", responses="http://x/r"
        )
    with pytest.raises(sandbox.Refused, match="WECOM_BOT_TOKEN"):
        sandbox.verify(bare, "http://x/wecom")


def test_send_to_a_robot_that_is_down(wecom_settings: Settings, redis_client: redis.Redis) -> None:
    webhook = f"http://127.0.0.1:{free_port()}/wecom"
    group = unique("g")
    sent = sandbox.send(
        wecom_settings,
        redis_client,
        {"chatid": group, "userid": "bob", "text": "hi", "retries": 1},
        webhook=webhook,
        responses="http://x/r",
    )
    assert [(r["kind"], r["status"], r["attempt"]) for r in sent["replies"]] == [
        ("error", None, 0),
        ("error", None, 1),
    ]
    assert sent["stream_id"] == "" and sent["response_url"].startswith("http://x/r?response_code=")
    seen = sandbox.chat_seen(redis_client, group, "")
    assert [(m["kind"], m.get("text")) for m in seen["messages"]] == [("user", "@MiMo hi")]
    assert sandbox.verify(wecom_settings, webhook) == {
        "ok": False,
        "status": 0,
        "error": "ConnectionError",
    }


@pytest.mark.parametrize(
    ("name", "text", "typed"),
    [("", "hi", "@MiMo hi"), ("小助手", "hi", "@小助手 hi"), ("", "@MiMo hi", "@MiMo hi")],
)
def test_mention(wecom_settings: Settings, name: str, text: str, typed: str) -> None:
    assert sandbox.mention(text, wecom_settings.replace(wecom_bot_name=name)) == typed


def test_fold_shows_each_stream_once_with_its_latest_content() -> None:
    events = [
        {"kind": "user", "userid": "a", "text": "@MiMo q", "at": 1.0},
        {
            "kind": "stream",
            "stream_id": "s",
            "content": "…",
            "finish": False,
            "userid": "a",
            "at": 2.0,
        },
        {"kind": "error", "status": 503, "body": "busy", "at": 2.5},
        {"kind": "stream", "stream_id": "s", "content": "ans", "finish": True, "at": 3.0},
        {"kind": "response_url", "content": "late", "at": 4.0},
        {"kind": "refresh_stopped", "stream_id": "t", "refresh": 1, "at": 5.0},
    ]
    assert sandbox.fold(events) == [
        events[0],
        {
            "kind": "bot",
            "stream_id": "s",
            "userid": "a",
            "updates": 2,
            "at": 2.0,
            "content": "ans",
            "finish": True,
        },
        events[4],
    ]


def test_a_chat_needs_a_group_or_a_user(redis_client: redis.Redis) -> None:
    with pytest.raises(sandbox.Refused, match="chatid"):
        sandbox.chat_seen(redis_client, "", "")
    assert sandbox.chat_seen(redis_client, "", "nobody")["chat"] == "single:nobody"
