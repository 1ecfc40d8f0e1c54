"""Reply modes end to end: passive replies, auto switching on 48001, the 5-send quota, CDATA.

The sandbox plays WeChat's server (`POST /sandbox/wechat/user`: signed, encrypted, retried on
timeout like WeChat) and records everything the user receives. WeChat's 5 s timeout and the
webhook's 4.5 s passive wait are shortened to 2 s and 1.5 s by the stack's settings.
"""

from __future__ import annotations

import time
import xml.dom.minidom
from collections.abc import Iterator

import pytest
import requests

from bot.channels.wechat.mailbox import Mailbox, Piece
from bot.channels.wechat.protocol import message_xml, read_reply, sign_request
from bot.core import jobs
from bot.core.contracts import Answer
from bot.pipeline import commands
from tasks.celery_app import Producer
from tests.conftest import Stack
from tests.helpers import ACCOUNT, APP_ID, TOKEN, make_job, unique

pytestmark = pytest.mark.integration


def set_delay(stack: Stack, seconds: float) -> None:
    requests.post(
        f"{stack.url}/sandbox/wechat/engine", json={"delay": seconds}, timeout=5
    ).raise_for_status()


def set_verified(stack: Stack, verified: bool) -> None:
    requests.post(
        f"{stack.url}/sandbox/wechat/account", json={"verified": verified}, timeout=5
    ).raise_for_status()


def flag_key(stack: Stack) -> str:
    return f"mimochat:wechat:passive-only:{stack.settings.wechat_app_id}"


def wait_until(predicate, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def user_jobs(stack: Stack, user: str) -> list[dict]:
    return [j for j in jobs.recent(stack.redis, 200) if j.get("user") == user]


@pytest.fixture
def passive(stack: Stack) -> Iterator[Stack]:
    """The account acts as an unverified one: auto mode has flagged it passive-only."""
    stack.redis.set(flag_key(stack), "1")
    try:
        yield stack
    finally:
        stack.redis.delete(flag_key(stack))
        set_delay(stack, 0)


def test_answer_ready_within_the_first_request(passive: Stack) -> None:
    user = unique()
    seen = passive.say(user, "What is 2+2?")
    assert len(seen["attempts"]) == 1 and seen["attempts"][0]["status"] == 200
    assert seen["reply"]
    time.sleep(1.0)
    assert [m["via"] for m in passive.outbox(user)] == ["passive"]


def test_slow_answer_comes_with_the_next_message_which_is_answered_too(passive: Stack) -> None:
    """Injected: 7 s of extra generation time (WeChat gives up after 3 tries, about 5.5 s here).

    Counted: one job for the three tries; the notice on the last try; the next message's reply
    carries both the late answer and its own answer.
    """
    user = unique()
    set_delay(passive, 7.0)
    first = passive.say(user, "slow question")
    set_delay(passive, 0)
    assert [a["status"] for a in first["attempts"]][-1] == 200
    assert len(first["attempts"]) == passive.settings.wechat_attempts
    assert first["reply"] == commands.STILL_THINKING_TEXT
    assert len(user_jobs(passive, user)) == 1  # WeChat's retries attached to one job
    box = Mailbox(passive.redis, "wechat", user, 60)
    wait_until(lambda: box.size() > 0)
    second = passive.say(user, "quick question")
    assert len(second["attempts"]) == 1
    assert "【slow question】" in second["reply"] and "【quick question】" in second["reply"]
    assert len(user_jobs(passive, user)) == 2
    assert box.size() == 0


def test_auto_switches_to_passive_on_48001(stack: Stack) -> None:
    """Injected: the sandbox account loses customer-service permission (48001).

    Counted: the answer that hit 48001 is not lost — it comes with the next message's reply —
    and the account is remembered as passive-only.
    """
    user = unique()
    set_verified(stack, False)
    try:
        first = stack.say(user, "first question")
        assert first["reply"] is None  # customer-service mode: acknowledged with "success"
        wait_until(lambda: stack.redis.exists(flag_key(stack)))
        box = Mailbox(stack.redis, "wechat", user, 60)
        wait_until(lambda: box.size() > 0)
        second = stack.say(user, "second question")
        assert "【first question】" in second["reply"] and "【second question】" in second["reply"]
        assert [m["via"] for m in stack.outbox(user)] == ["passive"]
    finally:
        set_verified(stack, True)
        stack.redis.delete(flag_key(stack))


def test_six_part_answer_under_the_five_send_quota(stack: Stack) -> None:
    """Injected: a 6-part answer for a user whose window allows 5 sends.

    Counted: 5 customer-service sends (the fifth says more is coming), no 45047, and the sixth
    part on the user's next message; nothing lost, nothing twice.
    """
    user = unique()
    assert stack.say(user, "/help")["reply"] == commands.HELP_TEXT  # opens the window
    answer = "\n\n".join(
        f"Section {i}. " + "这是一个用来测试分段的长句子。" * 40 for i in range(1, 7)
    )
    job_id = unique("job")
    job = make_job(user, "long").model_copy(update={"job_id": job_id})
    Producer(stack.settings).delivery(Answer(job=job, answer=answer))
    messages = stack.wait_outbox(user, 6)
    time.sleep(1.0)
    sent = [m for m in stack.outbox(user) if m["via"] == "customer_service"]
    assert len(sent) == 5
    assert [m["content"][:5] for m in sent] == [f"({i}/6)" for i in range(1, 6)]
    assert "more" in sent[-1]["content"]
    assert stack.redis.hget(f"mimochat:sandbox:window:{user}", "used") == "5"
    rest = stack.say(user, "继续")
    assert rest["reply"].startswith("(6/6)")
    assert len(messages) == 6
    assert len(stack.outbox(user)) == 7  # help, 5 sends, the rest: nothing else, nothing twice


@pytest.mark.parametrize("encrypted", [True, False])
def test_reply_with_cdata_terminator_is_valid_xml(stack: Stack, encrypted: bool) -> None:
    user = unique()
    tricky = "if a[b[0]]>c: print(']]>') <xml>&amp;</xml>"
    Mailbox(stack.redis, "wechat", user, 60).put([Piece(unique("job"), tricky)])
    if encrypted:
        assert stack.say(user, "继续")["reply"] == tricky
        return
    signed = sign_request(TOKEN, message_xml(user, ACCOUNT, content="继续"))
    res = requests.post(
        f"{stack.url}/wechat", params=signed.params, data=signed.body.encode(), timeout=10
    )
    xml.dom.minidom.parseString(res.text)
    assert read_reply(res.text, token=TOKEN, app_id=APP_ID)["Content"] == tricky
