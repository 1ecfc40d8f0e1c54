"""`mimochat up` and `mimochat web` serve with gunicorn (gthread), as the containers do; the
demo's banner names the lighter server it runs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import requests

from bot.cli.main import _server_line
from bot.cli.supervisor import usable_cores, web_argv, web_shape
from bot.core.settings import Settings
from tests.conftest import start_process, stop_process
from tests.helpers import free_port, with_db

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("processes", "threads", "expected"),
    [
        (0, 16, (usable_cores(), 16)),
        (3, 4, (3, 4)),
        (1, 0, (1, 1)),
    ],
)
def test_web_shape(processes: int, threads: int, expected: tuple[int, int]) -> None:
    assert web_shape(processes, threads) == expected


@pytest.mark.parametrize(
    ("server", "runs"),
    [("gunicorn", ["-m", "gunicorn"]), ("werkzeug", ["-m", "webhooks"])],
)
def test_web_argv_names_its_server(server: str, runs: list[str]) -> None:
    argv = web_argv("127.0.0.1", 8123, server, 2, 8)
    assert argv[1:3] == runs
    if server == "gunicorn":
        assert argv[argv.index("--workers") + 1] == "2"
        assert argv[argv.index("--threads") + 1] == "8"
        assert Path(argv[argv.index("-c") + 1]).is_file()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["web", "up"])
def test_up_and_web_serve_with_gunicorn(command: str, settings: Settings, tmp_path: Path) -> None:
    """Counted: /healthz answers 200 with gunicorn's Server header; the banner says gunicorn."""
    port = free_port()
    env = {
        **os.environ,
        # Its own database: `up` starts a worker whose heartbeat other tests must not see.
        **settings.replace(
            web_processes=2, web_threads=4, redis_url=with_db(settings.redis_url, 7)
        ).to_env(),
        "PYTHONPATH": str(ROOT),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    argv = [sys.executable, "-c", "from bot.cli.main import main; main()", command]
    proc = start_process([*argv, "--port", str(port)], env, tmp_path / "out.log")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                res = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if res.status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, (tmp_path / "out.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "out.log").read_text()[-3000:]
            time.sleep(0.2)
        assert res.headers["Server"].startswith("gunicorn")
        out = (tmp_path / "out.log").read_text()
        assert "gunicorn gthread, 2 process(es) x 4 thread(s)" in out
    finally:
        stop_process(proc, timeout=40)


@pytest.mark.parametrize(
    ("server", "banner"),
    [
        ("gunicorn", "gunicorn gthread, 3 process(es) x 5 thread(s)"),
        ("werkzeug", "werkzeug (threaded development server, one process)"),  # the demo's
    ],
)
def test_the_banner_names_the_server(server: str, banner: str) -> None:
    assert _server_line(web_argv("127.0.0.1", 8000, server, 3, 5)) == banner
