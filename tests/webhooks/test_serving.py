"""The web servers as real processes: SIGTERM lets requests in flight finish; gunicorn's
worker processes share one set of figures.

A request is kept in flight by the sandbox WeChat API's `delay` fault (a real slow call).
"""

from __future__ import annotations

import gc
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from bot.channels.wechat.protocol import sign_url_check
from bot.core.settings import Settings
from tests.conftest import start_process, stop_process
from tests.helpers import TOKEN, free_port

ROOT = Path(__file__).resolve().parents[2]


def web_command(kind: str, port: int) -> list[str]:
    if kind == "werkzeug":
        return [sys.executable, "-m", "webhooks", "--port", str(port)]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "webhooks" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "webhooks.wsgi:app",
    ]


def start_web(kind: str, settings: Settings, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        **settings.replace(shutdown_grace=10.0).to_env(),
        "PYTHONPATH": str(ROOT),
        "WEB_CONCURRENCY": "2",
    }
    if kind == "gunicorn":  # its own folder: never another run's (or engineer's) figures
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prometheus")
    proc = start_process(web_command(kind, port), env, tmp_path / "web.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_process(proc)
            raise AssertionError((tmp_path / "web.log").read_text()[-3000:])
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["werkzeug", "gunicorn"])
def test_sigterm_lets_requests_in_flight_finish(
    kind: str, settings: Settings, tmp_path: Path
) -> None:
    """Injected: a 2 s WeChat API call in flight at SIGTERM. Counted: its answer, and the exit."""
    proc, url = start_web(kind, settings, tmp_path)
    try:
        requests.post(f"{url}/sandbox/wechat/faults", json=[{"delay": 2}], timeout=5)
        answers: list[requests.Response] = []
        call = threading.Thread(
            target=lambda: answers.append(
                requests.post(f"{url}/sandbox/wechat/cgi-bin/message/custom/send", timeout=10)
            )
        )
        call.start()
        time.sleep(0.7)  # the call is inside the sandbox's delay now
        os.killpg(proc.pid, signal.SIGTERM)
        call.join(10)
        assert [a.status_code for a in answers] == [200]
        assert answers[0].json()["errcode"] == 41001  # it ran to its end: no token given
        assert proc.wait(10) == 0
    finally:
        stop_process(proc)


def test_gunicorn_workers_share_their_figures(settings: Settings, tmp_path: Path) -> None:
    """Counted: 6 webhook calls spread over 2 gunicorn workers, seen whole by every scrape."""
    proc, url = start_web("gunicorn", settings, tmp_path)
    try:
        for i in range(6):
            check = sign_url_check(TOKEN, f"echo{i}")
            assert requests.get(f"{url}/wechat", params=check, timeout=5).text == f"echo{i}"
        line = 'mimochat_webhook_requests_total{channel="wechat",outcome="ok"} 6.0'
        for _ in range(4):  # whichever worker answers the scrape
            assert line in requests.get(f"{url}/metrics", timeout=5).text
        pids = {p.name for p in (tmp_path / "prometheus").glob("counter_*.db")}
        assert len(pids) >= 1
    finally:
        stop_process(proc)


def test_a_worker_freezes_what_it_loaded_at_start(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """gunicorn calls `post_worker_init` once the app is loaded: afterwards the start-up objects
    are in the collector's permanent generation (a full collection no longer walks them)."""
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    conf = runpy.run_path(str(ROOT / "webhooks" / "gunicorn.conf.py"))
    assert gc.get_freeze_count() == 0
    try:
        conf["post_worker_init"](None)
        assert gc.get_freeze_count() > 10_000  # this test process's modules and objects
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    "asset", sorted(p.name for p in (ROOT / "webhooks" / "static" / "admin").iterdir())
)
def test_static_assets_leave_no_file_open(client: FlaskClient, asset: str) -> None:
    """Each console asset is read whole before the server gets it: a browser dropping the
    connection mid-send (werkzeug's server then skips the close) leaves no file open."""
    response = client.get(f"/static/admin/{asset}")
    assert response.status_code == 200
    assert not response.direct_passthrough
    assert response.get_data() == (ROOT / "webhooks" / "static" / "admin" / asset).read_bytes()
