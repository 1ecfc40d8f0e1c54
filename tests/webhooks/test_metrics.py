"""`/metrics`: webhook calls by channel and outcome, and the system's figures from Redis."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot.channels.wechat.protocol import message_xml, sign_request
from bot.console import workers
from bot.core import jobs, metrics
from bot.core.settings import Settings
from bot.core.store import key
from tests.bot.channels.wecom.ws_live import answer, live_connector, wait
from tests.helpers import ACCOUNT, AES_KEY, APP_ID, TOKEN, unique
from webhooks.app import create_app


def scrape(client: FlaskClient) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    res = client.get("/metrics")
    assert res.status_code == 200
    assert res.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(res.get_data(as_text=True)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def count(samples: dict, outcome: str) -> float:
    key = ("mimochat_webhook_requests_total", (("channel", "wechat"), ("outcome", outcome)))
    return samples.get(key, 0.0)


def post(client: FlaskClient, xml: str, **params: str):  # noqa: ANN201
    signed = sign_request(TOKEN, xml, aes_key=AES_KEY, app_id=APP_ID)
    return client.post("/wechat", query_string={**signed.params, **params}, data=signed.body)


def test_webhook_calls_counted_by_outcome(settings: Settings) -> None:
    app = create_app(settings)
    client = app.test_client()
    waiting = app.extensions["mimochat"].redis.llen("gpu")
    full = create_app(settings.replace(max_queue=max(1, waiting))).test_client()
    before = scrape(client)
    user = unique()
    xml = message_xml(user, ACCOUNT, content="hi")
    assert post(client, xml).status_code == 200  # enqueued
    assert post(client, xml).status_code == 200  # WeChat's retry: duplicate
    assert post(client, message_xml(user, ACCOUNT, content="/help")).status_code == 200
    assert post(client, xml, signature="0" * 40, msg_signature="0" * 40).status_code == 403
    assert post(full, message_xml(unique(), ACCOUNT, content="hi")).status_code == 200  # busy
    after = scrape(client)
    deltas = {
        o: count(after, o) - count(before, o)
        for o in ("enqueued", "duplicate", "replied", "rejected", "busy")
    }
    assert deltas == {"enqueued": 1, "duplicate": 1, "replied": 1, "rejected": 1, "busy": 1}
    latency = (
        "mimochat_webhook_request_seconds_count",
        (("channel", "wechat"), ("outcome", "enqueued")),
    )
    assert after[latency] - before.get(latency, 0) == 1


def test_system_figures_read_from_redis(app: Flask, client: FlaskClient) -> None:
    redis_client = app.extensions["mimochat"].redis
    for stale in workers.online(redis_client):
        workers.gone(redis_client, stale["hostname"])
    worker = unique("gpu")
    workers.beat(redis_client, worker, ["gpu", "io"], "ready", {"generating": 3})
    job_id = unique("job")
    jobs.record(redis_client, job_id, "received")
    jobs.record(redis_client, job_id, "started")
    try:
        samples = scrape(client)
        assert samples[("mimochat_redis_up", ())] == 1
        for queue in ("gpu", "io"):
            assert samples[("mimochat_queue_depth", (("queue", queue),))] == redis_client.llen(
                queue
            )
            assert samples[("mimochat_workers_online", (("queue", queue),))] == 1
        assert samples[("mimochat_engine_batch_size", (("worker", worker),))] == 3
        assert samples[("mimochat_jobs", (("stage", "started"),))] >= 1
        assert ("mimochat_queue_unacked", ()) in samples
    finally:
        workers.gone(redis_client, worker)


def feedback(samples: dict, rating: str) -> float:
    return samples.get(("mimochat_wecom_feedback_total", (("rating", rating),)), 0.0)


def test_wecom_feedback_counted_by_rating(settings: Settings, client: FlaskClient) -> None:
    redis_client = client.application.extensions["mimochat"].redis
    before = scrape(client)
    with live_connector(settings, redis_client) as live:
        live.call("say", live.bot, "mia", "question")
        answer(redis_client, live.job(), "An answer.")
        wait(lambda: any(s.finished for s in live.thread.fake.stream_in("mia")), 10, "finish")
        (stream,) = live.thread.fake.stream_in("mia")
        for kind in (1, 1, 2):  # thumbs up twice, thumbs down once
            rated = {"id": stream.stream_id, "type": kind}
            live.call("event", live.bot, "mia", "feedback_event", feedback_event=rated)
        counted = key("wecom", "feedback")
        wait(lambda: int(redis_client.hget(counted, "bad") or 0) >= 1, 10, "feedback counted")
        wait(lambda: feedback(scrape(client), "good") - feedback(before, "good") == 2, 5, "good")
    after = scrape(client)
    deltas = {r: feedback(after, r) - feedback(before, r) for r in ("good", "bad", "cancelled")}
    assert deltas == {"good": 2, "bad": 1, "cancelled": 0}
    assert ("mimochat_wecom_feedback_total", (("rating", "cancelled"),)) in after  # 0, not absent


@pytest.mark.parametrize(
    ("family", "where"),
    [
        ("mimochat_webhook_requests", "web"),
        ("mimochat_webhook_request_seconds", "web"),
        ("mimochat_job_stages", "web"),
        ("mimochat_queue_depth", "web"),
        ("mimochat_workers_online", "web"),
        ("mimochat_jobs", "web"),
        ("mimochat_engine_batch_size", "web"),
        ("mimochat_wecom_feedback", "web"),
        # A worker's own figures: on its metrics server (its process registry), not the web's.
        ("mimochat_generations_in_flight", "worker"),
        ("mimochat_generated_tokens", "worker"),
        ("mimochat_generation_tokens_per_second", "worker"),
        ("mimochat_time_to_answer_seconds", "worker"),
        ("mimochat_delivery_errors", "worker"),
    ],
)
def test_every_figure_is_described(client: FlaskClient, family: str, where: str) -> None:
    if where == "web":
        text = client.get("/metrics").get_data(as_text=True)
    else:
        text = generate_latest(REGISTRY).decode()
        assert family in metrics.WORKER_ONLY
    assert f"# HELP {family} " in text or f"# HELP {family}_total " in text
