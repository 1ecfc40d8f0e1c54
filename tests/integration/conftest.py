"""Extra live stacks with their own settings (WeCom scope, windows, slow answers).

Each runs its web and worker processes on its own Redis database, so its worker never takes the
main `stack`'s jobs. Module-scoped: a stack lives only as long as the tests that need it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests

from bot.settings import Settings
from bot.store import connect
from tests.conftest import Stack, _wait_for, start_process, stop_process, worker_ready
from tests.helpers import free_port, with_db


@contextlib.contextmanager
def running_stack(base: Settings, db: int, logs: Path, **changes: object) -> Iterator[Stack]:
    """A web process and a worker process with `changes` applied, on Redis database `db`."""
    from bot.engine.tiny import ensure_tiny_model
    from bot.supervisor import web_argv, worker_argv

    ensure_tiny_model(base.data_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = base.replace(
        redis_url=with_db(base.redis_url, db), wechat_api_base=f"{url}/sandbox/wechat/", **changes
    )
    env = {
        **os.environ,
        **settings.to_env(),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    web = start_process(web_argv("127.0.0.1", port), env, logs / "web.log")
    worker = start_process(
        worker_argv("gpu,io", settings.gpu_concurrency, f"test-{uuid.uuid4().hex[:6]}"),
        env,
        logs / "worker.log",
    )
    try:

        def web_up() -> bool:
            try:
                return requests.get(f"{url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        _wait_for(web_up, 30, "web server", logs)
        _wait_for(lambda: worker_ready(logs / "worker.log"), 90, "worker", logs)
        yield Stack(url=url, settings=settings, redis=connect(settings.redis_url), logs=logs)
    finally:
        stop_process(worker)
        stop_process(web)
