"""Console read models: token check, a job's timeline in words, one job seen whole."""

from __future__ import annotations

import time

import pytest
import redis

from bot.channels.wechat import simulator
from bot.channels.wecom import simulator as simulator_wecom
from bot.channels.wecom.streams import HANDOVER_NOTE
from bot.console import admin
from bot.core import jobs
from bot.core.contracts import Answer
from bot.core.progress import ProgressWriter
from bot.core.settings import Settings
from bot.pipeline.conversations import Conversations
from tests.helpers import make_job, unique


@pytest.mark.parametrize(
    ("given", "expected", "ok"),
    [
        ("s3cret-token", "s3cret-token", True),
        ("s3cret-token ", "s3cret-token", False),
        ("S3CRET-TOKEN", "s3cret-token", False),
        ("", "", False),  # an empty configured token never lets anyone in
        (None, "s3cret-token", False),
        ("令牌", "令牌", True),
    ],
)
def test_token_matches(given: str | None, expected: str, ok: bool) -> None:
    assert admin.token_matches(given, expected) is ok


def test_timeline_in_words() -> None:
    t0 = 1_800_000_000.0
    record = {
        "received_at": str(t0),
        "kind": "text",
        "user": "o_1",
        "started_at": str(t0 + 0.2),
        "queue_wait": "0.2",
        "generated_at": str(t0 + 3.2),
        "generation_seconds": "3.0",
        "reasoning_tokens": "120",
        "answer_tokens": "30",
        "finish_reason": "stop",
        "failed_at": str(t0 + 4.0),
        "error_code": "45047",
        "error": "out of response count limit",
    }
    sim = {"attempts": [{"status": 200, "seconds": 0.012}], "sent_at": t0 - 0.01, "ok": True}
    rows = admin.timeline(record, sim)
    assert [r["stage"] for r in rows] == ["webhook", "received", "started", "generated", "failed"]
    assert rows[0]["detail"] == "HTTP 200 in 12 ms"
    assert rows[2]["detail"] == "waited 0.2 s in the gpu queue"
    assert rows[3]["detail"] == "3.0 s, 120 reasoning + 30 answer tokens (stop)"
    assert rows[3]["after"] == 3.2
    assert rows[4]["ok"] is False and "45047" in rows[4]["detail"]
    assert "5 customer-service messages" in rows[4]["detail"]


def test_job_view_shows_progress_then_the_answer(
    settings: Settings, redis_client: redis.Redis
) -> None:
    job_id, user = unique("job"), unique()
    jobs.record(redis_client, job_id, "received", channel="wechat", user=user, text="why?")
    progress = ProgressWriter(redis_client, job_id, min_interval=0)
    progress.add("reasoning", "Let me think")
    view = admin.job_view(redis_client, settings, job_id)
    assert view["progress"] == {"state": "thinking", "answer": "", "reasoning": "Let me think"}
    assert not view["done"] and view["answer"] is None
    job = make_job(user, "why?").model_copy(update={"job_id": job_id})
    Conversations(redis_client, 60, 5).record(
        job, Answer(job=job, answer="Because.", reasoning="Let me think", answer_tokens=2)
    )
    jobs.record(redis_client, job_id, "delivered", parts=1)
    view = admin.job_view(redis_client, settings, job_id)
    assert view["done"] and view["answer"] == "Because." and view["tokens"]["answer_tokens"] == 2
    assert view["timeline"][-1]["detail"] == "1 message sent through the customer-service API"


def test_job_view_of_an_unknown_job(settings: Settings, redis_client: redis.Redis) -> None:
    assert admin.job_view(redis_client, settings, unique("nope")) is None


def test_simulation_saved_under_its_job(settings: Settings, redis_client: redis.Redis) -> None:
    sim = simulator.Simulation(
        "wechat_aes", "u", "http://x/wechat", "1", "hi", 1.0, job_id=unique()
    )
    simulator.save(redis_client, sim)
    assert simulator.load(redis_client, sim.job_id)["url"] == "http://x/wechat"
    view = admin.job_view(redis_client, settings, sim.job_id)
    assert view["simulation"]["msg_id"] == "1" and view["timeline"][0]["stage"] == "webhook"


@pytest.mark.parametrize(
    ("fields", "stage", "phrase"),
    [
        ({"delivered_at": "1800000002.0", "via": "stream"}, "delivered", "stream refresh"),
        ({"delivered_at": "1800000002.0", "via": "response_url"}, "delivered", "response_url"),
        ({"handed_over_at": "1800000002.0"}, "handed over", "WECOM_STREAM_WINDOW"),
    ],
)
def test_wecom_delivery_in_words(fields: dict, stage: str, phrase: str) -> None:
    rows = admin.timeline({"received_at": "1800000000.0", "channel": "wecom", **fields})
    assert rows[-1]["stage"] == stage and phrase in rows[-1]["detail"]
    assert rows[-1]["after"] == 2.0


def test_wecom_view_of_a_deployment_with_its_own_redis(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A public URL's robot keeps its jobs elsewhere: the view is what the chat showed."""
    sim_id = unique("sim")
    sim = simulator.Simulation(
        "wecom_group",
        "alice",
        "https://bot.example/wecom",
        "m1",
        "hi",
        time.time(),
        ok=True,
        sim_id=sim_id,
        chat_id="team",
    )
    simulator.save(redis_client, sim)
    redis_client.hset(f"mimochat:sim:wecom:{sim_id}:loop", mapping={"state": "finished"})
    header = "> **@alice**: hi\n\n"
    closing = f"{header}so far\n\n{HANDOVER_NOTE}"
    simulator_wecom.record(
        redis_client,
        sim_id,
        {"kind": "stream", "stream_id": "s", "content": closing, "finish": True, "refresh": 3},
    )
    view = admin.wecom_view(redis_client, settings, sim_id)
    assert view["job_id"] is None and view["chat"]["stream"]["handed_over"]
    assert not view["done"] and view["delivered_via"] is None  # the late answer is still due
    simulator_wecom.record(
        redis_client, sim_id, {"kind": "response_url", "content": f"{header}The answer."}
    )
    view = admin.wecom_view(redis_client, settings, sim_id)
    assert view["done"] and view["delivered_via"] == "response_url"
    assert view["chat"]["response_url"]["answer"] == "The answer."
    stages = [row["stage"] for row in view["timeline"]]
    assert stages == ["webhook", "stream end", "response_url"]
    assert all(row["after"] is not None for row in view["timeline"])  # from the message's send
    assert admin.wecom_view(redis_client, settings, unique("nope")) is None
