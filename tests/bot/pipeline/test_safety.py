"""Content safety: normalised matching, masks and withheld answers, stream frames, reloads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
import requests

from bot.channels.wechat.api import WeChatAPI
from bot.channels.wechat.delivery import deliver
from bot.channels.wechat.reply_mode import ServiceWindow
from bot.channels.wecom import streams
from bot.core.contracts import Answer, IncomingMessage, Job
from bot.core.progress import ProgressWriter
from bot.core.settings import Settings
from bot.core.store import connect
from bot.pipeline import guardlog, guards, safety
from tests.helpers import make_answer, make_job, unique, user_with_window


def lists(tmp_path: Path, **terms: list[str]) -> str:
    """Write one file per action and return the MIMOCHAT_SAFETY_LISTS value naming them."""
    pairs = []
    for action, words in terms.items():
        path = tmp_path / f"{action}.txt"
        path.write_text("# operators' list\n" + "\n".join(words) + "\n", encoding="utf-8")
        pairs.append(f"{action}:{path}")
    return ",".join(pairs)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("this is bad", True),
        ("this is BAD", True),
        ("this is ｂａｄ", True),  # full width
        ("this is b a d", True),
        ("this is b.a.d!", True),
        ("this is b-a_d", True),
        ("this is b\u200bad", True),  # zero-width space
        ("this is Bád", True),  # accent
        ("a badge", False),  # inside a word
        ("isbad", False),
        ("这是违禁词", True),  # CJK: anywhere
        ("这是违 禁词", True),
        ("这是违　禁", True),  # ideographic space
        ("nothing here", False),
    ],
)
def test_variants_are_caught(tmp_path: Path, text: str, found: bool) -> None:
    spec = lists(tmp_path, refuse=["bad", "违禁"])
    assert bool(safety.find(text, safety.lists_for(spec).questions)) is found


@pytest.mark.parametrize(
    ("action", "answer", "shown"),
    [
        ("mask", "you are b a d today", "you are ＊＊＊＊＊ today"),
        ("mask", "ＢＡＤ news", "＊＊＊ news"),
        ("mask", "a badge is fine", "a badge is fine"),
        ("withhold", "you are bad", guards.WITHHELD_TEXT),
        ("refuse", "you are bad", guards.WITHHELD_TEXT),  # a refused term never goes out
    ],
)
def test_answer_is_masked_or_withheld(
    tmp_path: Path,
    settings: Settings,
    redis_client: redis.Redis,
    action: str,
    answer: str,
    shown: str,
) -> None:
    s = settings.replace(safety_lists=lists(tmp_path, **{action: ["bad"]}))
    result = make_job_answer(answer)
    checked = guards.check_answer(s, redis_client, result)
    assert checked.answer == shown
    assert guards.screen_answer(s, result).answer == shown
    if shown != answer:
        latest = guardlog.decisions(redis_client, 1)[0]
        assert latest["rule"] == f"{action}:{action}.txt:bad"
        assert latest["decision"] == ("masked" if action == "mask" else "withheld")


def make_job_answer(text: str, reasoning: str = "") -> Answer:
    return Answer(job=make_job(unique()), answer=text, reasoning=reasoning)


@pytest.mark.parametrize("action", ["mask", "withhold"])
def test_no_stream_frame_ever_shows_a_term(tmp_path: Path, settings: Settings, action: str) -> None:
    s = settings.replace(
        safety_lists=lists(tmp_path, **{action: ["bad", "违禁"]}), wecom_show_reasoning=True
    )
    answer = "Well, you are b a d, and 这是违禁的 — really B.A.D. The end."
    reasoning = "they said bad things"
    automaton = safety.lists_for(s.safety_lists).answers
    state = {"chat_type": "single"}
    for n in range(1, len(answer) + 1):
        now = {"state": "generating", "answer": answer[:n], "reasoning": reasoning}
        content = streams.render_stream(s, state, now)
        assert not safety.find(content, automaton), (n, content)
        assert "b a" not in content or action == "mask"  # the start of a term is held back
    final = streams.render_stream(s, state, {"state": "done", "answer": answer})
    assert not safety.find(final, automaton)
    if action == "withhold":
        assert guards.WITHHELD_TEXT in final
    else:
        assert "＊" in final and final.endswith("The end.")


def test_lists_reload_without_restart(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safety, "RELOAD_EVERY", 0.0)
    spec = lists(tmp_path, refuse=["bad"])
    assert not safety.find("so evil", safety.lists_for(spec).questions)
    path = tmp_path / "refuse.txt"
    path.write_text("bad\nevil\n", encoding="utf-8")
    later = time.time() + 5
    os.utime(path, (later, later))
    assert safety.find("so evil", safety.lists_for(spec).questions)
    path.unlink()  # an unreadable file keeps its last terms
    assert safety.find("so evil", safety.lists_for(spec).questions)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("you are b", "you are "),
        ("you are b a", "you are "),
        ("you are ok", "you are ok"),
        ("", ""),
    ],
)
def test_an_end_that_may_grow_into_a_term_is_held_back(
    tmp_path: Path, text: str, shown: str
) -> None:
    built = safety.lists_for(lists(tmp_path, mask=["bad"]))
    assert text[: safety.held_back(text, built)] == shown


def test_ten_thousand_terms_stay_fast(tmp_path: Path) -> None:
    terms = [f"term{i}x" for i in range(10_000)] + [f"词{i}禁" for i in range(1000)]
    spec = lists(tmp_path, refuse=terms)
    automaton = safety.lists_for(spec).questions
    text = "Could you explain how a transformer's attention works, step by step? 请详细解释一下。"
    started = time.perf_counter()
    for _ in range(200):
        assert not safety.find(text, automaton)
    assert (time.perf_counter() - started) / 200 < 0.001
    assert safety.find("about t e r m 9999 x", automaton)


@pytest.mark.parametrize("action", ["mask", "withhold"])
def test_wecom_refreshes_never_show_a_term(
    tmp_path: Path, settings: Settings, redis_client: redis.Redis, action: str
) -> None:
    """Through the real ingest, answer and refresh: each frame screened, the final one too."""
    s = settings.replace(safety_lists=lists(tmp_path, **{action: ["bad"]}))
    queued: list[Job] = []
    m = IncomingMessage(
        channel="wecom",
        user=unique("u"),
        account="AIBOT",
        kind="text",
        content="how am I?",
        msg_id=unique("m"),
    )
    reply = streams.ingest(m, settings=s, client=redis_client, enqueue=queued.append)
    [job] = queued
    automaton = safety.lists_for(s.safety_lists).answers
    writer = ProgressWriter(redis_client, job.job_id, min_interval=0)
    text = "you are B A D, truly"
    for ch in text:
        writer.add("answer", ch)
        frame = streams.refresh(reply.stream_id, settings=s, client=redis_client)["stream"]
        assert not safety.find(frame["content"], automaton) and "B A" not in frame["content"]
    # The worker checks the finished answer before publishing it (answer.py does the same).
    checked = guards.check_answer(s, redis_client, Answer(job=job, answer=text))
    writer.finish(checked.answer, "")
    done = streams.refresh(reply.stream_id, settings=s, client=redis_client)["stream"]
    assert done["finish"] and not safety.find(done["content"], automaton)
    expected = "you are ＊＊＊＊＊, truly" if action == "mask" else guards.WITHHELD_TEXT
    assert done["content"].endswith(expected)


@pytest.mark.parametrize(
    ("action", "sent"),
    [("mask", "Your score: " + "＊" * 11 + " (see above)."), ("withhold", guards.WITHHELD_TEXT)],
)
def test_wechat_delivery_sends_only_the_screened_text(
    tmp_path: Path,
    live_sandbox,
    action: str,
    sent: str,  # noqa: ANN001
) -> None:
    """A list that grew after generation still applies: delivery screens before formatting."""
    base, settings = live_sandbox
    s = settings.replace(safety_lists=lists(tmp_path, **{action: ["secret"]}))
    client = connect(s.redis_url)
    api, user = WeChatAPI(s, client), user_with_window(base)
    ServiceWindow(s, client, user).open()
    deliver(
        make_answer(user, "Your score: s.e.c.r.e.t (see above)."),
        settings=s,
        client=client,
        api=api,
    )
    res = requests.get(f"{base}/sandbox/wechat/outbox", params={"touser": user}, timeout=5)
    assert [m["content"] for m in res.json()] == [sent]
