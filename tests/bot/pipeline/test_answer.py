"""Answering a job with a real Redis and the real tiny engine (in-process, no queue)."""

from __future__ import annotations

import time

import redis

from bot.core import jobs, progress
from bot.core.contracts import IncomingMessage, Job
from bot.core.settings import Settings
from bot.engine.base import Engine, Generation, GenerationRequest
from bot.engine.factory import get_engine
from bot.pipeline.answer import APOLOGY_TEXT, answer
from bot.pipeline.conversations import conversations
from bot.pipeline.ingest import ingest
from bot.pipeline.ledger import Ledger
from tests.helpers import make_job, unique


def message(user: str, text: str, msg_id: str | None = None) -> IncomingMessage:
    return IncomingMessage(
        channel="wechat",
        user=user,
        account="gh",
        kind="text",
        content=text,
        msg_id=msg_id or unique("m"),
    )


def test_answer_records_turn_progress_and_timeline(
    settings: Settings, redis_client: redis.Redis
) -> None:
    queued: list[Job] = []
    user = unique()
    ingest(
        message(user, "What is 2+2?"), settings=settings, client=redis_client, enqueue=queued.append
    )
    engine = get_engine(settings)
    result = answer(queued[0], settings=settings, client=redis_client, engine=engine)
    assert result.answer
    assert result.answer_tokens > 0
    assert progress.read(redis_client, result.job_id)["state"] == "done"
    timeline = jobs.get(redis_client, result.job_id)
    assert {"received_at", "started_at", "generated_at"} <= timeline.keys()
    # A second copy of the job (a redelivery, a requeue) finds the message answered and stops.
    assert answer(queued[0], settings=settings, client=redis_client, engine=engine) is None
    record = Ledger(redis_client).get(queued[0].key)
    assert record is not None and record.state == "answered"
    history = conversations(settings, redis_client).history("wechat", user)
    assert len(history) == 2


class _FailingEngine(Engine):
    """An engine whose generation fails: stands for CUDA OOM, which cannot happen on this CPU."""

    def generate(self, request: GenerationRequest) -> Generation:
        raise RuntimeError("CUDA out of memory")


def test_failed_generation_apologises_and_is_not_remembered(
    settings: Settings, redis_client: redis.Redis
) -> None:
    user = unique()
    job = make_job(user, "hi")
    result = answer(job, settings=settings, client=redis_client, engine=_FailingEngine())
    assert result.answer == APOLOGY_TEXT
    assert progress.read(redis_client, job.job_id)["state"] == "failed"
    assert conversations(settings, redis_client).history("wechat", user) == []


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
        job = make_job(user, text)
        assert answer(job, settings=budgets, client=redis_client, engine=engine).answer
    last = engine.requests[-1]
    # 15 tokens: the last question (4) and one earlier turn (6 + 3) fit; the oldest went.
    assert last.messages == [
        {"role": "user", "content": "five six seven eight"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "what now"},
    ]
    assert last.deadline is not None and last.deadline > time.time()
    # Trimming only shapes the prompt: the stored conversation keeps every turn.
    assert len(conversations(settings, redis_client).history("wechat", user)) == 6


def test_a_question_too_long_for_any_window_gets_the_apology(
    settings: Settings, redis_client: redis.Redis
) -> None:
    engine = _SmallWindowEngine()
    job = make_job(unique(), "word")
    tiny = settings.replace(thinking_budget=20, max_new_tokens=10)
    engine.context_length = 0  # nothing fits, not even a cut question
    result = answer(job, settings=tiny, client=redis_client, engine=engine)
    assert result.answer == APOLOGY_TEXT
    assert result.error == "generation failed: ValueError"
    assert engine.requests == []
