"""Extra live stacks with their own settings (WeCom scope, windows, slow answers) for the WeCom tests.

Each runs its web and worker processes on its own Redis database, so its worker never takes the
main `stack`'s jobs. They start together and stop together (start-up is mostly the workers
importing torch, which overlaps well), and live only as long as the module that asks for them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bot.core.settings import Settings
from bot.core.store import connect
from tests.conftest import Stack, _wait_for, start_process, worker_ready
from tests.helpers import free_port, with_db

STOP_GRACE = 15.0


@dataclass
class StackSpec:
    """One extra stack: its Redis database, its log folder and its settings changes."""

    db: int
    logs: Path
    changes: dict[str, object] = field(default_factory=dict)


@contextlib.contextmanager
def running_stacks(base: Settings, specs: list[StackSpec]) -> Iterator[list[Stack]]:
    """Web + worker processes for every spec, started at once; yields them ready."""
    from bot.cli.supervisor import web_argv, worker_argv
    from bot.engine.transformers.tiny import ensure_tiny_model

    ensure_tiny_model(base.data_path)
    procs: list[subprocess.Popen] = []
    stacks: list[Stack] = []
    try:
        for spec in specs:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            settings = base.replace(
                redis_url=with_db(base.redis_url, spec.db),
                wechat_api_base=f"{url}/sandbox/wechat/",
                **spec.changes,
            )
            env = {
                **os.environ,
                **settings.to_env(),
                "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            }
            procs.append(start_process(web_argv("127.0.0.1", port), env, spec.logs / "web.log"))
            worker = worker_argv("gpu,io", settings.gpu_concurrency, f"test-{uuid.uuid4().hex[:6]}")
            procs.append(start_process(worker, env, spec.logs / "worker.log"))
            stacks.append(
                Stack(url=url, settings=settings, redis=connect(settings.redis_url), logs=spec.logs)
            )
        for stack in stacks:

            def web_up(url: str = stack.url) -> bool:
                try:
                    return requests.get(f"{url}/healthz", timeout=1).status_code == 200
                except requests.RequestException:
                    return False

            _wait_for(web_up, 30, "web server", stack.logs)
            worker_log = stack.logs / "worker.log"
            _wait_for(lambda log=worker_log: worker_ready(log), 90, "worker", stack.logs)
        yield stacks
    finally:
        _stop_all(procs)


def _stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every child's group at once, then wait; SIGKILL what outlives the grace."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in live:
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
