"""The console as WeCom, over real HTTP against a fake robot: callbacks, refreshes, response_url."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from bot.channels.wechat import simulator
from bot.channels.wecom import sandbox
from bot.channels.wecom import simulator as simulator_wecom
from bot.channels.wecom.protocol import parse_callback, stream_reply
from bot.channels.wecom.streams import THINKING_TEXT
from bot.core.settings import Settings
from tests.bot.channels.wecom.fake_robot import robot
from tests.helpers import WECOM_AES_KEY, WECOM_TOKEN, free_port

SINK = "http://127.0.0.1:9/admin/api/wecom/response"  # the robot under test never posts to it


@pytest.fixture
def wecom_settings(settings: Settings) -> Settings:
    return settings.replace(
        wecom_bot_token=WECOM_TOKEN,
        wecom_bot_aes_key=WECOM_AES_KEY,
        wecom_bot_name="",
        wecom_sandbox_refresh_interval=0.05,
        wechat_platform_timeout=2.0,
    )


def finished_at_once(payload: dict, _call: int) -> tuple[int, dict]:
    return 200, stream_reply("s1", "done", True)


def wait_loop(client: redis.Redis, sim_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chat = simulator_wecom.transcript(client, sim_id)
        if chat["loop"] not in ("running", ""):
            return chat
        time.sleep(0.05)
    raise AssertionError(f"the refresh loop of {sim_id} did not end")


def run(
    settings: Settings, client: redis.Redis, url: str, channel: str = "wecom_group", **kw: Any
) -> simulator.Simulation:
    kw.setdefault("text", "hi")
    return simulator_wecom.simulate(
        settings, client, channel, kw.pop("user", "alice"), url=url, sink=SINK, **kw
    )


@pytest.mark.parametrize(
    ("channel", "chat_id", "bot_name", "text", "content", "chat"),
    [
        ("wecom_single", "team", "", "hi", "hi", ""),  # one to one: no group, no mention
        ("wecom_group", "team", "", "hi", "@MiMo hi", "team"),
        ("wecom_group", "", "", "hi", "@MiMo hi", simulator_wecom.DEFAULT_GROUP),
        ("wecom_group", "team", "小助手", "hi", "@小助手 hi", "team"),
        ("wecom_group", "team", "", "@MiMo hi", "@MiMo hi", "team"),  # typed: not doubled
    ],
)
def test_the_callback_is_what_wecom_sends(
    wecom_settings: Settings,
    redis_client: redis.Redis,
    channel: str,
    chat_id: str,
    bot_name: str,
    text: str,
    content: str,
    chat: str,
) -> None:
    settings = wecom_settings.replace(wecom_bot_name=bot_name)
    with robot(finished_at_once) as (url, seen):
        sim = run(settings, redis_client, url, channel, text=text, chat_id=chat_id)
    [payload] = seen  # it verified and decrypted with the robot's token and key
    message = parse_callback(json.dumps(payload))
    assert (message.kind, message.user, message.content) == ("text", "alice", content)
    assert (message.chat_type, message.chat_id) == ("group" if chat else "single", chat)
    assert message.msg_id == sim.msg_id and message.response_url.startswith(
        f"{SINK}?response_code="
    )
    assert sim.ok and sim.chat_id == chat and sim.stream_id == "s1"
    assert "answered at once" in sim.verdict
    said = simulator_wecom.transcript(redis_client, sim.sim_id)["events"][0]
    assert (said["kind"], said["text"]) == ("user", content)


def test_a_stream_is_refreshed_until_it_finishes(
    wecom_settings: Settings, redis_client: redis.Redis
) -> None:
    """The robot's answer grows refresh by refresh; an unchanged refresh is not a new version."""
    plan = ["", "", "a", "a", "ab", "abc"]  # the message's reply, then each refresh's

    def growing(payload: dict, call: int) -> tuple[int, dict]:
        if call > 1:
            assert payload["msgtype"] == "stream" and payload["stream"]["id"] == "s1"
            assert (payload["chatid"], payload["from"]["userid"]) == ("team", "alice")
        text = plan[call - 1] or THINKING_TEXT
        return 200, stream_reply("s1", text, call == len(plan))

    with robot(growing) as (url, seen):
        sim = run(wecom_settings, redis_client, url, chat_id="team")
        assert "stream started" in sim.verdict
        chat = wait_loop(redis_client, sim.sim_id)
    assert len(seen) == len(plan)
    stream = chat["stream"]
    assert [(v["refresh"], v["chars"]) for v in stream["versions"]] == [
        (0, len(THINKING_TEXT)),
        (2, 1),
        (4, 2),
        (5, 3),
    ]
    assert stream["finish"] and stream["answer"] == "abc" and not stream["handed_over"]
    assert (chat["refreshes"], chat["loop"]) == (5, "finished")


@pytest.mark.parametrize(
    ("refresh", "limit", "loop", "last_kind"),
    [
        ((503, "busy"), None, "error", "error"),
        ((200, "not sealed"), None, "error", "error"),  # WeCom cannot read it: an error too
        ((200, stream_reply("s1", "…", False)), 2, "stopped", "refresh_stopped"),
    ],
)
def test_the_refresh_loop_ends(
    wecom_settings: Settings,
    redis_client: redis.Redis,
    refresh: tuple[int, Any],
    limit: int | None,
    loop: str,
    last_kind: str,
) -> None:
    def answer(_payload: dict, call: int) -> tuple[int, Any]:
        return (200, stream_reply("s1", THINKING_TEXT, False)) if call == 1 else refresh

    with robot(answer) as (url, _seen):
        sim = run(wecom_settings, redis_client, url, refreshes=limit)
        chat = wait_loop(redis_client, sim.sim_id)
    assert chat["loop"] == loop
    assert chat["events"][-1]["kind"] == last_kind
    assert not chat["stream"]["finish"]


@pytest.mark.parametrize(
    ("status", "body", "phrase"),
    [
        (403, "signature mismatch", "WECOM_BOT_TOKEN differs"),
        (400, "cannot decrypt the message", "WECOM_BOT_AES_KEY"),
        (404, "the WeCom robot is not configured", "not configured on that server"),
        (302, "", "does not follow redirects"),
        (200, '{"msgtype": "stream"}', "could not read the reply: reply lacks encrypt"),
        (200, None, "empty reply"),
    ],
)
def test_refusals_are_explained(
    wecom_settings: Settings,
    redis_client: redis.Redis,
    status: int,
    body: str | None,
    phrase: str,
) -> None:
    with robot(lambda _p, _c: (status, body)) as (url, seen):
        sim = run(wecom_settings, redis_client, url)
    assert len(seen) == 1 and phrase in sim.verdict
    assert sim.ok is (status == 200 and body is None)
    assert simulator_wecom.transcript(redis_client, sim.sim_id)["loop"] == "none"


def test_a_slow_webhook_gets_the_same_msgid_again(
    wecom_settings: Settings, redis_client: redis.Redis
) -> None:
    """Injected: the first try answers after the platform's timeout (0.3 s here)."""

    def slow_first(_payload: dict, call: int) -> tuple[int, dict]:
        if call == 1:
            time.sleep(0.6)
        return finished_at_once(_payload, call)

    settings = wecom_settings.replace(wechat_platform_timeout=0.3)
    with robot(slow_first) as (url, seen):
        sim = run(settings, redis_client, url)
    assert [a.outcome for a in sim.attempts] == ["timeout", "answered"]
    assert len({p["msgid"] for p in seen}) == 1 and "after 1 retry" in sim.verdict


@pytest.mark.parametrize(
    ("changes", "channel", "error"),
    [
        ({"wecom_bot_token": ""}, "wecom_group", "WECOM_BOT_TOKEN"),
        ({"wecom_bot_aes_key": "tooshort"}, "wecom_single", "WECOM_BOT_AES_KEY is malformed"),
        ({}, "wechat_plain", "not a WeCom channel"),
    ],
)
def test_build_refuses(wecom_settings: Settings, changes: dict, channel: str, error: str) -> None:
    with pytest.raises(simulator.SimulationError, match=error):
        simulator_wecom.build(wecom_settings.replace(**changes), channel, "u", "t")


def test_a_late_answer_posted_to_response_url_is_shown(
    wecom_settings: Settings, redis_client: redis.Redis
) -> None:
    """The console serves the message's response_url with the fake WeCom's rules."""
    with robot(finished_at_once) as (url, seen):
        sim = run(wecom_settings, redis_client, url)
    code = seen[0]["response_url"].split("response_code=", 1)[1]
    late = "> **@alice**: hi\n\nThe answer."
    body = {"msgtype": "markdown", "markdown": {"content": late}}
    assert sandbox.accept_response(redis_client, code, body) == (0, "ok")
    shown = simulator_wecom.transcript(redis_client, sim.sim_id)["response_url"]
    assert (shown["asker"], shown["question"], shown["answer"]) == ("alice", "hi", "The answer.")
    assert (shown["userid"], shown["msgid"], shown["content"]) == ("alice", sim.msg_id, late)


@pytest.mark.parametrize(
    ("content", "reasoning", "asker", "question", "answer"),
    [
        ("plain answer", "", "", "", "plain answer"),
        (THINKING_TEXT, "", "", "", ""),
        ("<think>hmm\nso</think>\n\nfour", "hmm\nso", "", "", "four"),
        (f"> **@bob**: 2+2?\n\n{THINKING_TEXT}", "", "bob", "2+2?", ""),
        (
            "<think>r</think>\n\n> **@王五**: 问题\n\n答案\n\n第二段",
            "r",
            "王五",
            "问题",
            "答案\n\n第二段",
        ),
    ],
)
def test_shown_parts(content: str, reasoning: str, asker: str, question: str, answer: str) -> None:
    assert simulator_wecom.shown(content) == {
        "reasoning": reasoning,
        "asker": asker,
        "question": question,
        "answer": answer,
    }


def test_unreachable_webhook(wecom_settings: Settings, redis_client: redis.Redis) -> None:
    sim = run(wecom_settings, redis_client, f"http://127.0.0.1:{free_port()}/wecom")
    assert not sim.ok and "cannot reach" in sim.verdict
    assert simulator_wecom.transcript(redis_client, sim.sim_id)["errors"][0]["status"] is None
