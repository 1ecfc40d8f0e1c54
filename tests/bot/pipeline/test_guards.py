"""The guard stage on real Redis: rate limits and quotas, refused questions, review, /think."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from bot.channels.wecom import streams
from bot.core.contracts import IncomingMessage, Job
from bot.core.settings import Settings
from bot.core.store import key
from bot.engine.factory import get_engine
from bot.pipeline import commands, guardlog, guards, thinking
from bot.pipeline.answer import answer
from bot.pipeline.ingest import ingest
from bot.pipeline.ledger import Ledger
from tests.helpers import unique


def message(user: str, text: str = "what is 2+2?", msg_id: str | None = None) -> IncomingMessage:
    return IncomingMessage(
        channel="wechat",
        user=user,
        account="gh",
        kind="text",
        content=text,
        msg_id=msg_id or unique("m"),
    )


def ask(s: Settings, client: redis.Redis, m: IncomingMessage, queued: list[Job]):  # noqa: ANN201
    return ingest(m, settings=s, client=client, enqueue=queued.append)


def counted(client: redis.Redis, user: str) -> list[int]:
    """What the limiter's Redis counters hold for a user (one per limit)."""
    return [int(client.get(k) or 0) for k in client.scan_iter(f"{key('ratelimit')}*{user}*")]


def test_over_the_burst_gets_the_notice_and_nothing_is_queued(
    settings: Settings, redis_client: redis.Redis
) -> None:
    s = settings.replace(rate_limit_user="2/minute;100/day")
    user, queued = unique(), []
    first = [ask(s, redis_client, message(user), queued) for _ in range(2)]
    assert all(d.job is not None for d in first)
    refused_msg = message(user)
    refused = ask(s, redis_client, refused_msg, queued)
    assert refused.job is None and len(queued) == 2
    assert refused.reply is not None and "ask again in" in refused.reply
    assert "second" in refused.reply or "minute" in refused.reply
    record = Ledger(redis_client).get(refused.key)
    assert record is not None and record.state == "delivered"
    assert record.fields["via"] == "rate_limit" and "user:2 per 1 minute" in record.fields["reason"]
    before = sorted(counted(redis_client, user))
    # WeChat retries the refused message: the same notice, and nothing counted again.
    for _ in range(3):
        retry = ask(s, redis_client, refused_msg, queued)
        assert retry.duplicate and retry.reply == refused.reply
    assert sorted(counted(redis_client, user)) == before
    assert len(queued) == 2
    limited = [r for r in guardlog.limited_now(redis_client) if r["who"] == user]
    assert limited and limited[0]["scope"] == "user" and limited[0]["refused"] == 1


def test_daily_quota_resets(settings: Settings, redis_client: redis.Redis) -> None:
    s = settings.replace(rate_limit_user="1/day")
    user, queued = unique(), []
    assert ask(s, redis_client, message(user), queued).job is not None
    refused = ask(s, redis_client, message(user), queued)
    assert refused.job is None and refused.reply is not None and "hours" in refused.reply
    # A day passes: the window's counter expires in Redis.
    for k in redis_client.scan_iter(f"{key('ratelimit')}*{user}*"):
        redis_client.pexpire(k, 1)
    time.sleep(0.01)
    assert ask(s, redis_client, message(user), queued).job is not None


@pytest.mark.parametrize(
    ("exempt", "limited"), [("", True), ("someone_else", True), ("{user}", False)]
)
def test_operators_allowlist_is_never_limited(
    settings: Settings, redis_client: redis.Redis, exempt: str, limited: bool
) -> None:
    user = unique()
    s = settings.replace(rate_limit_user="1/minute", rate_limit_exempt=exempt.format(user=user))
    verdicts = [
        guards.check_question(s, redis_client, channel="wechat", user=user, text="hi")
        for _ in range(3)
    ]
    assert (verdicts[-1] is not None) is limited


def test_group_limit_counts_all_members(settings: Settings, redis_client: redis.Redis) -> None:
    s = settings.replace(rate_limit_group="2/minute")
    group = unique("g")
    verdicts = [
        guards.check_question(
            s, redis_client, channel="wecom", user=unique(), text="q", group=group
        )
        for _ in range(3)
    ]
    assert verdicts[:2] == [None, None]
    assert verdicts[2] is not None and verdicts[2].rule == "group:2 per 1 minute"


@pytest.mark.parametrize("log_text", [False, True])
def test_listed_question_is_refused_before_queueing(
    tmp_path: Path, settings: Settings, redis_client: redis.Redis, log_text: bool
) -> None:
    (tmp_path / "refuse.txt").write_text("forbidden\n违禁\n", encoding="utf-8")
    s = settings.replace(safety_lists=f"refuse:{tmp_path / 'refuse.txt'}", log_user_text=log_text)
    user, queued = unique(), []
    decision = ask(s, redis_client, message(user, "tell me the F O R B I D D E N thing"), queued)
    assert decision.reply == guards.REFUSED_TEXT and not queued
    record = Ledger(redis_client).get(decision.key)
    assert record is not None and record.fields["via"] == "safety"
    latest = guardlog.decisions(redis_client, 1)[0]
    assert latest["rule"] == "refuse:refuse.txt:forbidden" and latest["user"] == user
    assert ("text" in latest) is log_text
    assert ask(s, redis_client, message(user, "a fine question"), queued).job is not None


def test_wecom_question_goes_through_the_same_stage(
    tmp_path: Path, settings: Settings, redis_client: redis.Redis
) -> None:
    (tmp_path / "refuse.txt").write_text("forbidden\n", encoding="utf-8")
    s = settings.replace(safety_lists=f"refuse:{tmp_path / 'refuse.txt'}")
    queued: list[Job] = []
    m = IncomingMessage(
        channel="wecom",
        user=unique("u"),
        account="AIBOT",
        kind="text",
        content="something forbidden",
        msg_id=unique("m"),
    )
    reply = streams.ingest(m, settings=s, client=redis_client, enqueue=queued.append)
    assert reply.payload is not None and not queued
    assert reply.payload["stream"]["content"] == guards.REFUSED_TEXT
    assert reply.payload["stream"]["finish"] is True


class _Review(BaseHTTPRequestHandler):
    """A fake review service: blocks texts with "blockme", sleeps on "slow", fails on "boom"."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "slow" in body["text"]:
            time.sleep(1.0)
        if "boom" in body["text"]:
            self.send_response(500)
            self.end_headers()
            return
        verdict = "block" if "blockme" in body["text"] else "pass"
        data = json.dumps({"verdict": verdict, "rule": f"fake-{body['stage']}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def review_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Review)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/review"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("text", "fail", "refused", "rule"),
    [
        ("hello", "open", False, ""),
        ("please blockme", "open", True, "review:fake-question"),
        ("slow one", "open", False, ""),  # timeout, fail open: through
        ("slow one", "closed", True, "review:unavailable:ReadTimeout"),
        ("boom", "open", False, ""),
        ("boom", "closed", True, "review:unavailable:HTTPError"),
    ],
)
def test_review_service_and_its_failure_mode(
    settings: Settings,
    redis_client: redis.Redis,
    review_url: str,
    text: str,
    fail: str,
    refused: bool,
    rule: str,
) -> None:
    s = settings.replace(review_url=review_url, review_timeout=0.3, review_fail=fail)
    verdict = guards.check_question(s, redis_client, channel="wechat", user=unique(), text=text)
    assert (verdict is not None) is refused
    if verdict is not None:
        assert verdict.rule == rule and verdict.reply == guards.REFUSED_TEXT


def test_review_withholds_an_answer(
    settings: Settings, redis_client: redis.Redis, review_url: str
) -> None:
    from bot.core.contracts import Answer
    from tests.helpers import make_job

    s = settings.replace(review_url=review_url)
    result = Answer(job=make_job(unique()), answer="here: blockme")
    assert guards.check_answer(s, redis_client, result).answer == guards.WITHHELD_TEXT
    fine = Answer(job=make_job(unique()), answer="fine")
    assert guards.check_answer(s, redis_client, fine).answer == "fine"


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("/think off", "off"),
        ("/THINK  On", "on"),
        ("/think deep", "deep"),
        ("/思考 关", "off"),
        ("/思考 开", "on"),
        ("/深度思考", "deep"),
        ("/think", ""),
        ("think about it", None),
    ],
)
def test_think_aliases(text: str, choice: str | None) -> None:
    assert commands.think_choice(text) == choice


def test_help_lists_think() -> None:
    assert "/think" in commands.HELP_TEXT and "/think" in streams.HELP_TEXT


@pytest.mark.parametrize(("level", "budget"), [("off", 0), ("on", 16), ("deep", 64)])
def test_think_sets_the_askers_budget(
    settings: Settings, redis_client: redis.Redis, level: str, budget: int
) -> None:
    s = settings.replace(thinking_budget_deep=64)
    user, queued = unique(), []
    reply = ask(s, redis_client, message(user, f"/think {level}"), queued)
    assert reply.reply == thinking.CHOSEN_TEXT[level] and not queued
    ask(s, redis_client, message(user), queued)
    assert thinking.budget(s, redis_client, queued[0]) == budget
    other: list[Job] = []
    ask(s, redis_client, message(unique()), other)  # someone else keeps the channel default
    assert thinking.budget(s, redis_client, other[0]) == 16


def test_channel_default_and_think_off_answers_without_reasoning(
    settings: Settings, redis_client: redis.Redis
) -> None:
    s = settings.replace(wechat_thinking="off")
    queued: list[Job] = []
    user = unique()
    assert (
        thinking.NOW_TEXT.format(level="off")
        == ask(s, redis_client, message(user, "/think"), queued).reply
    )
    ask(s, redis_client, message(user), queued)
    result = answer(queued[0], settings=s, client=redis_client, engine=get_engine(s))
    assert result is not None and result.answer
    assert result.reasoning_tokens == 0 and result.reasoning == ""


def test_wecom_think_is_per_person_in_the_thread(
    settings: Settings, redis_client: redis.Redis
) -> None:
    s = settings.replace(wecom_session_scope="group")
    chat, alice, bob = unique("g"), unique("u"), unique("u")

    def say(user: str, text: str) -> list[Job]:
        queued: list[Job] = []
        m = IncomingMessage(
            channel="wecom",
            user=user,
            account="AIBOT",
            kind="text",
            content=f"@MiMo {text}",
            msg_id=unique("m"),
            chat_id=chat,
            chat_type="group",
        )
        streams.ingest(m, settings=s, client=redis_client, enqueue=queued.append)
        return queued

    assert say(alice, "/think off") == []
    [alices] = say(alice, "what is 2+2?")
    [bobs] = say(bob, "what is 3+3?")
    assert alices.user == bobs.user  # one group thread
    assert thinking.budget(s, redis_client, alices) == 0
    assert thinking.budget(s, redis_client, bobs) == s.thinking_budget
