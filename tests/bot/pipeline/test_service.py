"""The use cases with a real Redis and the real tiny engine (in-process, no queue)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from bot.channels.wechat.mailbox import Mailbox, Piece
from bot.core import jobs, progress
from bot.core.contracts import IncomingMessage
from bot.core.settings import Settings
from bot.engine import get_engine
from bot.engine.base import Engine, Generation, GenerationRequest
from bot.pipeline import commands, service
from tests.helpers import unique


def message(user: str, text: str, msg_id: str | None = None) -> IncomingMessage:
    return IncomingMessage(
        channel="wechat",
        user=user,
        account="gh",
        kind="text",
        content=text,
        msg_id=msg_id or unique("m"),
    )


def test_ingest_dedups_and_enqueues_once(settings: Settings, redis_client: redis.Redis) -> None:
    queued: list[dict] = []
    m = message(unique(), "hello", "777" + unique(""))
    decisions = [
        service.ingest(m, settings=settings, client=redis_client, enqueue=queued.append)
        for _ in range(3)
    ]
    assert [d.duplicate for d in decisions] == [False, True, True]
    assert len(queued) == 1
    assert jobs.get(redis_client, queued[0]["job_id"])["stage"] == "received"


def test_enqueue_failure_releases_the_message(
    settings: Settings, redis_client: redis.Redis
) -> None:
    def broken(_job: dict) -> None:
        raise ConnectionError("broker down")

    m = message(unique(), "hello")
    with pytest.raises(ConnectionError):
        service.ingest(m, settings=settings, client=redis_client, enqueue=broken)
    queued: list[dict] = []
    service.ingest(m, settings=settings, client=redis_client, enqueue=queued.append)
    assert len(queued) == 1  # WeChat's retry is taken, not dropped as a duplicate


def test_answer_records_turn_progress_and_timeline(
    settings: Settings, redis_client: redis.Redis
) -> None:
    queued: list[dict] = []
    user = unique()
    service.ingest(
        message(user, "What is 2+2?"), settings=settings, client=redis_client, enqueue=queued.append
    )
    engine = get_engine(settings)
    result = service.answer(queued[0], settings=settings, client=redis_client, engine=engine)
    assert result["answer"]
    assert result["answer_tokens"] > 0
    assert progress.read(redis_client, result["job_id"])["state"] == "done"
    timeline = jobs.get(redis_client, result["job_id"])
    assert {"received_at", "started_at", "generated_at"} <= timeline.keys()
    again = service.answer(queued[0], settings=settings, client=redis_client, engine=engine)
    assert again["answer"] == result["answer"]  # a redelivered job gets the stored answer
    history = service.conversations(settings, redis_client).history("wechat", user)
    assert len(history) == 2


class _FailingEngine(Engine):
    """An engine whose generation fails: stands for CUDA OOM, which cannot happen on this CPU."""

    def generate(self, request: GenerationRequest) -> Generation:
        raise RuntimeError("CUDA out of memory")


def test_failed_generation_apologises_and_is_not_remembered(
    settings: Settings, redis_client: redis.Redis
) -> None:
    user = unique()
    job = service.make_job(message(user, "hi"))
    result = service.answer(job, settings=settings, client=redis_client, engine=_FailingEngine())
    assert result["answer"] == service.APOLOGY_TEXT
    assert progress.read(redis_client, job["job_id"])["state"] == "failed"
    assert service.conversations(settings, redis_client).history("wechat", user) == []


class _SmallWindowEngine(Engine):
    """Counts one token per word and has a 60-token window; records what it was asked."""

    context_length = 60

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 2 for m in messages)

    def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        return Generation("ok", "", self.count_tokens(request.messages), 0, 1, "stop")


def test_answer_trims_history_to_the_window(settings: Settings, redis_client: redis.Redis) -> None:
    engine = _SmallWindowEngine()
    budgets = settings.replace(thinking_budget=20, max_new_tokens=10)  # the prompt gets 15 tokens
    user = unique()
    for text in ("one two three four", "five six seven eight", "what now"):
        job = service.make_job(message(user, text))
        assert service.answer(job, settings=budgets, client=redis_client, engine=engine)["answer"]
    last = engine.requests[-1]
    # 15 tokens: the last question (4) and one earlier turn (6 + 3) fit; the oldest went.
    assert last.messages == [
        {"role": "user", "content": "five six seven eight"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "what now"},
    ]
    assert last.deadline is not None and last.deadline > time.time()
    # Trimming only shapes the prompt: the stored conversation keeps every turn.
    assert len(service.conversations(settings, redis_client).history("wechat", user)) == 6


def test_a_question_too_long_for_any_window_gets_the_apology(
    settings: Settings, redis_client: redis.Redis
) -> None:
    engine = _SmallWindowEngine()
    job = service.make_job(message(unique(), "word"))
    tiny = settings.replace(thinking_budget=20, max_new_tokens=10)
    engine.context_length = 0  # nothing fits, not even a cut question
    result = service.answer(job, settings=tiny, client=redis_client, engine=engine)
    assert result["answer"] == service.APOLOGY_TEXT
    assert result["error"] == "ValueError"
    assert engine.requests == []


def passive_settings(settings: Settings) -> Settings:
    return settings.replace(
        wechat_reply_mode="passive", wechat_passive_wait=0.6, wechat_platform_timeout=0.8
    )


def test_command_retry_gets_the_same_reply(settings: Settings, redis_client: redis.Redis) -> None:
    m = message(unique(), "/help", "help" + unique(""))
    first = service.ingest(m, settings=settings, client=redis_client, enqueue=lambda j: None)
    retry = service.ingest(m, settings=settings, client=redis_client, enqueue=lambda j: None)
    assert retry.duplicate and retry.attempt == 2
    assert retry.reply == first.reply


def test_passive_reply_waits_for_the_answer(settings: Settings, redis_client: redis.Redis) -> None:
    s = passive_settings(settings)
    m = message(unique(), "question")
    decision = service.ingest(m, settings=s, client=redis_client, enqueue=lambda j: None)
    box = Mailbox(redis_client, "wechat", m.user, 60)
    timer = threading.Timer(0.2, box.put, args=[[Piece(decision.job_id, "the answer")]])
    timer.start()
    reply = service.respond(m, decision, settings=s, client=redis_client, started=time.time())
    timer.join()
    assert reply == service.PassiveReply("the answer")


def test_passive_reply_holds_then_gives_notice_on_the_last_try(
    settings: Settings, redis_client: redis.Redis
) -> None:
    s = passive_settings(settings)
    m = message(unique(), "slow question")
    replies = []
    for _ in range(s.wechat_attempts):
        started = time.time()
        decision = service.ingest(m, settings=s, client=redis_client, enqueue=lambda j: None)
        replies.append(
            service.respond(m, decision, settings=s, client=redis_client, started=started)
        )
    assert [r.text for r in replies[:-1]] == [None, None]
    assert all(r.hold > s.wechat_platform_timeout - s.wechat_passive_wait for r in replies[:-1])
    assert replies[-1].text == commands.STILL_THINKING_TEXT


def test_next_message_carries_the_waiting_answer(
    settings: Settings, redis_client: redis.Redis
) -> None:
    user = unique()
    Mailbox(redis_client, "wechat", user, 60).put(
        [Piece("old-job", "the late answer", "old question")]
    )
    m = message(user, "new question")
    decision = service.ingest(m, settings=settings, client=redis_client, enqueue=lambda j: None)
    assert decision.job is not None  # the new question is answered too
    reply = service.respond(
        m, decision, settings=settings, client=redis_client, started=time.time()
    )
    assert reply.text == "the late answer"


@pytest.mark.parametrize(("waiting", "expected"), [(True, "part two"), (False, None)])
def test_continue_keyword(
    settings: Settings, redis_client: redis.Redis, waiting: bool, expected: str | None
) -> None:
    user = unique()
    if waiting:
        Mailbox(redis_client, "wechat", user, 60).put([Piece("j", "part two")])
    queued: list[dict] = []
    m = message(user, "继续")
    decision = service.ingest(m, settings=settings, client=redis_client, enqueue=queued.append)
    reply = service.respond(
        m, decision, settings=settings, client=redis_client, started=time.time()
    )
    if waiting:
        assert (reply.text, queued) == (expected, [])
    else:
        assert len(queued) == 1  # nothing waits: "继续" is just a message for the model


def test_full_queue_answers_busy_and_keeps_the_message_unseen(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A full queue: a polite reply now, nothing queued, and a later retry still goes through."""

    def full(_job: dict) -> None:
        raise service.QueueFull("5 waiting, limit 5")

    m = message(unique(), "hello")
    busy = service.ingest(m, settings=settings, client=redis_client, enqueue=full)
    assert (busy.busy, busy.reply, busy.job) == (True, service.BUSY_TEXT, None)
    queued: list[dict] = []
    again = service.ingest(m, settings=settings, client=redis_client, enqueue=queued.append)
    assert (again.busy, again.duplicate, len(queued)) == (False, False, 1)


def test_commands_are_answered_even_when_the_queue_is_full(
    settings: Settings, redis_client: redis.Redis
) -> None:
    def full(_job: dict) -> None:
        raise service.QueueFull("full")

    decision = service.ingest(
        message(unique(), "/help"), settings=settings, client=redis_client, enqueue=full
    )
    assert not decision.busy
    assert decision.reply
