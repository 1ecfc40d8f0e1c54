"""Group conversations end to end: sandbox WeCom → /wecom → Redis → worker (tiny model) → streams.

The sandbox WeCom calls the web process exactly as WeCom does (encrypted callbacks, stream
refreshes every 0.2 s, a one-use response_url) and records what each chat shows.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from bot.channels.wecom import streams as wecom
from bot.core.settings import Settings
from tests.conftest import Stack
from tests.helpers import unique
from tests.integration.wecom_stacks import StackSpec, running_stacks

pytestmark = pytest.mark.integration

Chat = dict


@pytest.fixture(scope="module")
def wecom_stacks(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Stack]]:
    """Two stacks of WeCom settings that cannot share one process, started together."""
    group = StackSpec(
        2,
        tmp_path_factory.mktemp("group-stack"),
        # One thread per group; answers that take seconds (longer text, a 0.5 s queue delay), so
        # a stream shows several steps and a person's questions stay in flight for a while.
        {
            "wecom_session_scope": "group",
            "thinking_budget": 512,
            "max_new_tokens": 96,
            "generation_delay": 0.5,
        },
    )
    window = StackSpec(
        3,
        tmp_path_factory.mktemp("window-stack"),
        # A 1 s stream window and answers that need 2 s: every answer outlives its stream.
        {"wecom_stream_window": 1.0, "wecom_fallback_grace": 0.5, "generation_delay": 2.0},
    )
    with running_stacks(base_settings, [group, window]) as stacks:
        yield stacks


@pytest.fixture
def group_stack(wecom_stacks: list[Stack]) -> Stack:
    return wecom_stacks[0]


@pytest.fixture
def window_stack(wecom_stacks: list[Stack]) -> Stack:
    return wecom_stacks[1]


def send(stack: Stack, **body: object) -> dict:
    res = requests.post(f"{stack.url}/sandbox/wecom/send", json=body, timeout=15)
    assert res.status_code == 200, res.text
    return res.json()


def chat(stack: Stack, chatid: str) -> Chat:
    res = requests.get(f"{stack.url}/sandbox/wecom/chat", params={"chatid": chatid}, timeout=5)
    res.raise_for_status()
    return res.json()


def wait_chat(
    stack: Stack, chatid: str, done: Callable[[Chat], bool], timeout: float = 60.0
) -> Chat:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = chat(stack, chatid)
        if done(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"chat {chatid} did not get there in {timeout}s: {chat(stack, chatid)}")


def updates(seen: Chat, stream_id: str) -> list[dict]:
    return [e for e in seen["events"] if e.get("stream_id") == stream_id and e["kind"] == "stream"]


def finished(*stream_ids: str) -> Callable[[Chat], bool]:
    def check(seen: Chat) -> bool:
        return all(any(e["finish"] for e in updates(seen, sid)) for sid in stream_ids)

    return check


def history(stack: Stack, thread: str) -> list[str]:
    return stack.redis.lrange(f"mimochat:conv:wecom:{thread}", 0, -1)


def wait_history(stack: Stack, thread: str, count: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(history(stack, thread)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return history(stack, thread)


def stored_answer(stack: Stack, thread: str, index: int = -1) -> str:
    answers = [json.loads(m) for m in history(stack, thread)]
    return [m["content"] for m in answers if m["role"] == "assistant"][index]


_THINK = re.compile(r"^<think>(.*?)</think>\n\n", re.DOTALL)


def shown(content: str) -> tuple[str, str]:
    """(reasoning, answer) as a group member sees them in a stream's content."""
    match = _THINK.match(content)
    reasoning = match.group(1) if match else ""
    rest = content[match.end() :] if match else content
    answer = rest.split("\n\n", 1)[1] if rest.startswith("> **@") else rest
    return reasoning, "" if answer == wecom.THINKING_TEXT else answer


def test_two_people_keep_separate_threads_by_default(stack: Stack) -> None:
    group = unique("g")
    sids = {
        user: send(stack, chatid=group, userid=user, text=f"question from {user}")["stream_id"]
        for user in ("alice", "bob")
    }
    seen = wait_chat(stack, group, finished(*sids.values()))
    for user, sid in sids.items():
        thread = f"g:{group}:u:{user}"
        assert len(wait_history(stack, thread, 2)) == 2
        final = updates(seen, sid)[-1]["content"]
        assert f"> **@{user}**: question from {user}" in final
        assert shown(final)[1].strip() == stored_answer(stack, thread).strip()
    assert not history(stack, f"g:{group}")


def test_repeated_msgid_gets_one_answer(stack: Stack) -> None:
    group = unique("g")
    sent = send(stack, chatid=group, userid="carol", text="hello?", retries=3)
    assert [r["stream_id"] for r in sent["replies"]] == [sent["stream_id"]] * 4
    seen = wait_chat(stack, group, finished(sent["stream_id"]))
    time.sleep(1.0)  # room for a duplicate answer to show up, if there were one
    seen = chat(stack, group)
    assert [m["kind"] for m in seen["messages"]] == ["user", "bot"]
    assert len(wait_history(stack, f"g:{group}:u:carol", 2)) == 2
    assert stack.redis.llen(f"mimochat:conv:wecom:g:{group}:u:carol") == 2


def test_mention_streams_a_growing_answer_then_finishes(group_stack: Stack) -> None:
    group = unique("g")
    sent = send(group_stack, chatid=group, userid="alice", text="What is 2+2? Show your work.")
    sid = sent["stream_id"]
    assert sent["replies"][0]["finish"] is False
    seen = wait_chat(group_stack, group, finished(sid))
    steps = updates(seen, sid)
    final = steps[-1]
    assert final["finish"] and not any(s["finish"] for s in steps[:-1])
    growing = [shown(s["content"]) for s in steps[:-1]]
    assert growing[0] == ("", "")  # the first reply: the asker, "thinking"
    assert any(r or a for r, a in growing), growing  # then model text before the end
    for (r0, a0), (r1, a1) in zip(growing, growing[1:], strict=False):
        assert r1.startswith(r0) and a1.startswith(a0)  # each refresh: the full text so far
    thread = f"g:{group}"
    wait_history(group_stack, thread, 2)
    assert shown(final["content"])[1].strip() == stored_answer(group_stack, thread).strip()
    assert "> **@alice**: What is 2+2?" in final["content"]  # the reply addresses the asker


def test_two_people_share_one_thread_when_configured(group_stack: Stack) -> None:
    group = unique("g")
    sids = [
        send(group_stack, chatid=group, userid=user, text=f"{user} asks a question")["stream_id"]
        for user in ("alice", "bob")
    ]
    wait_chat(group_stack, group, finished(*sids))
    turns = wait_history(group_stack, f"g:{group}", 4)
    asked = {t for t in turns if '"role": "user"' in t}
    assert len(turns) == 4 and len(asked) == 2
    assert not history(group_stack, f"g:{group}:u:alice")


def test_fourth_concurrent_question_gets_the_notice(group_stack: Stack) -> None:
    group = unique("g")
    # Each answer takes over a second: the first three are still in flight when the fourth comes.
    results = [send(group_stack, chatid=group, userid="frank", text=f"q{i}") for i in range(4)]
    first_replies = [r["replies"][0] for r in results]
    assert [r["finish"] for r in first_replies] == [False, False, False, True]
    assert first_replies[3]["content"] == wecom.BUSY_TEXT.format(n=3)
    other = send(group_stack, chatid=group, userid="gina", text="me too")
    assert other["replies"][0]["finish"] is False  # the limit is per person
    wait_chat(group_stack, group, finished(results[0]["stream_id"]))
    again = send(group_stack, chatid=group, userid="frank", text="one more")
    assert again["replies"][0]["finish"] is False  # a finished answer frees its slot


def test_stream_window_fallback_posts_to_response_url(window_stack: Stack) -> None:
    group = unique("g")
    sid = send(window_stack, chatid=group, userid="dave", text="a slow question")["stream_id"]

    def posted(seen: Chat) -> bool:
        return any(m["kind"] == "response_url" for m in seen["messages"])

    seen = wait_chat(window_stack, group, posted)
    closing = updates(seen, sid)[-1]
    assert closing["finish"] and closing["content"].endswith(wecom.HANDOVER_NOTE)
    time.sleep(1.0)
    seen = chat(window_stack, group)
    [late] = [m for m in seen["messages"] if m["kind"] == "response_url"]  # exactly once
    thread = f"g:{group}:u:dave"
    wait_history(window_stack, thread, 2)
    assert late["content"].startswith("> **@dave**: a slow question")
    assert shown(late["content"])[1].strip() == stored_answer(window_stack, thread).strip()
    assert late["at"] > closing["at"]


def test_refreshes_that_stop_fall_back_to_response_url(window_stack: Stack) -> None:
    group = unique("g")
    sent = send(window_stack, chatid=group, userid="erin", text="anyone there?", refreshes=1)

    def posted(seen: Chat) -> bool:
        return any(m["kind"] == "response_url" for m in seen["messages"])

    seen = wait_chat(window_stack, group, posted)
    assert not any(e["finish"] for e in updates(seen, sent["stream_id"]))  # never finished
    assert "refresh_stopped" in [e["kind"] for e in seen["events"]]


def test_logs_never_show_secrets(stack: Stack, window_stack: Stack) -> None:
    for logs in (stack.logs, window_stack.logs):
        text = "".join(p.read_text(errors="replace") for p in Path(logs).glob("*.log"))
        assert stack.settings.wecom_bot_aes_key not in text
        assert "response_code=" not in text
