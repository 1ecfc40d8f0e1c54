"""Delivery: parts under the byte limit, each sent once even when the delivery is retried."""

from __future__ import annotations

import pytest
import requests

from bot.channels.wechat.api import WeChatAPI, WeChatAPIError
from bot.channels.wechat.delivery import deliver, typing, wechat_parts
from bot.channels.wechat.mailbox import PART_LIMIT, Mailbox
from bot.channels.wechat.reply_mode import ServiceWindow
from bot.core.progress import ProgressWriter
from bot.core.store import connect
from tests.helpers import make_answer, make_job, unique, user_with_window


def outbox(base: str, user: str) -> list[str]:
    res = requests.get(f"{base}/sandbox/wechat/outbox", params={"touser": user}, timeout=5)
    return [m["content"] for m in res.json()]


def test_parts_fit_the_limit() -> None:
    answer = "\n\n".join(f"第{i}段：" + "这是一个很长的句子。" * 40 for i in range(6))
    parts = wechat_parts(answer)
    assert len(parts) > 1
    assert all(len(p.encode()) <= PART_LIMIT for p in parts)
    assert parts[0].startswith(f"(1/{len(parts)})")


def test_markdown_reduced_to_plain_text() -> None:
    (part,) = wechat_parts("## Result\n\n**Bold** answer: $x^2$")
    assert "**" not in part and "##" not in part and "$" not in part


def test_retried_delivery_never_repeats_a_part(live_sandbox) -> None:  # noqa: ANN001
    base, settings = live_sandbox
    r = connect(settings.redis_url)
    api, user = WeChatAPI(settings, r), user_with_window(base)
    ServiceWindow(settings, r, user).open()  # the webhook does this when the user writes
    result = make_answer(user, "\n\n".join(["段落。" * 150] * 3))
    expected = wechat_parts(result.answer)
    assert len(expected) == 3
    api.send_text(user_with_window(base), "warm the token")
    # The second part fails with a 5xx: the first is recorded as sent.
    requests.post(
        f"{base}/sandbox/wechat/faults", json=[{}, {"status": 503}], timeout=5
    ).raise_for_status()
    with pytest.raises(WeChatAPIError):
        deliver(result, settings=settings, client=r, api=api)
    assert outbox(base, user) == expected[:1]
    summary = deliver(result, settings=settings, client=r, api=api)  # the retry
    assert summary.sent_now == 2
    deliver(result, settings=settings, client=r, api=api)  # a redelivered task after success
    assert outbox(base, user) == expected


def test_closed_window_parks_the_answer_for_the_next_message(live_sandbox) -> None:  # noqa: ANN001
    """WeChat answers 45015 (our window bookkeeping said open, WeChat's is closed): nothing lost."""
    base, settings = live_sandbox
    r = connect(settings.redis_url)
    user = unique()  # never wrote to the sandbox: its window is closed
    ServiceWindow(settings, r, user).open()
    result = make_answer(user, "late")
    summary = deliver(result, settings=settings, client=r, api=WeChatAPI(settings, r))
    assert summary.parked == 1
    assert outbox(base, user) == []
    assert Mailbox(r, "wechat", user, 60).take(PART_LIMIT)[0] == "late"


def test_typing_shown_while_the_job_runs(live_sandbox) -> None:  # noqa: ANN001
    base, settings = live_sandbox
    r = connect(settings.redis_url)
    user = user_with_window(base)
    job = make_job(user)
    api = WeChatAPI(settings, r)
    assert typing(job, settings=settings, client=r, api=api) is True
    ProgressWriter(r, job.job_id).finish("done", "")
    assert typing(job, settings=settings, client=r, api=api) is False  # answered: stop showing it
    shown = r.lrange(f"mimochat:sandbox:typing:{user}", 0, -1)
    assert len(shown) == 1 and "Typing" in shown[0]
