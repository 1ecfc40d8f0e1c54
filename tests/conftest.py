"""Shared fixtures: a real Redis, settings, and (for integration tests) a live web + worker stack."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from werkzeug.serving import make_server

from bot.core.settings import Settings
from bot.core.store import connect, start_embedded
from tests.helpers import (
    ADMIN_TOKEN,
    AES_KEY,
    APP_ID,
    APP_SECRET,
    TOKEN,
    WECOM_AES_KEY,
    WECOM_TOKEN,
    free_port,
    with_db,
)
from webhooks.app import create_app


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir per test session (embedded Redis, tiny model)."""
    return tmp_path_factory.mktemp("mimochat-data")


@pytest.fixture(scope="session")
def redis_url(data_dir: Path) -> str:
    """REDIS_URL when set (CI may point at a server), else an embedded Redis for this session."""
    return os.environ.get("REDIS_URL") or start_embedded(data_dir)


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    """A client on database 1: unit tests never share queues with the live worker (db 0)."""
    return connect(with_db(redis_url, 1))


@pytest.fixture(scope="session")
def base_settings(data_dir: Path, redis_url: str) -> Settings:
    """Settings of a safe-mode test account with the tiny model."""
    return Settings(
        wechat_token=TOKEN,
        wechat_app_id=APP_ID,
        wechat_app_secret=APP_SECRET,
        wechat_aes_key=AES_KEY,
        wechat_reply_mode="auto",
        wechat_passive_wait=1.5,  # WeChat's 4.5 s / 5 s, shortened so passive tests run fast
        wechat_platform_timeout=2.0,
        redis_url=redis_url,
        data_dir=str(data_dir),
        model="tiny",
        sandbox=True,
        thinking_budget=16,
        max_new_tokens=16,
        gpu_concurrency=4,
        log_level="INFO",
        wecom_bot_token=WECOM_TOKEN,
        wecom_bot_aes_key=WECOM_AES_KEY,
        wecom_sandbox_refresh_interval=0.2,
        max_queue=0,  # queues in a long-lived REDIS_URL server grow across runs
        metrics_port=0,  # tests that scrape a worker give it a free port
        wechat_encrypt_mode="compatible",  # tests post plaintext and AES; safe mode: own tests
    )


@pytest.fixture
def settings(base_settings: Settings, redis_url: str) -> Settings:
    """Unit-test settings: Redis database 1, no worker listening there."""
    return base_settings.replace(redis_url=with_db(redis_url, 1))


@dataclass
class Stack:
    """A live web server and worker, as separate processes, sharing one Redis."""

    url: str
    settings: Settings
    redis: redis.Redis
    logs: Path

    def outbox(self, user: str) -> list[dict]:
        """Messages the sandbox recorded for a user."""
        res = requests.get(f"{self.url}/sandbox/wechat/outbox", params={"touser": user}, timeout=5)
        res.raise_for_status()
        return res.json()

    def wait_outbox(self, user: str, count: int, timeout: float = 60.0) -> list[dict]:
        """Wait until the user has at least `count` messages; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.outbox(user)
            if len(messages) >= count:
                return messages
            time.sleep(0.1)
        raise AssertionError(f"{user} got {len(self.outbox(user))} message(s), wanted {count}")

    def open_window(self, user: str) -> None:
        """Open the user's customer-service window, as a message from them would."""
        requests.post(
            f"{self.url}/sandbox/wechat/window", json={"user": user}, timeout=5
        ).raise_for_status()

    def say(self, user: str, content: str, **extra: object) -> dict:
        """The user sends a message; the sandbox posts it as WeChat would (with retries)."""
        res = requests.post(
            f"{self.url}/sandbox/wechat/user",
            json={"user": user, "content": content, **extra},
            timeout=60,
        )
        res.raise_for_status()
        return res.json()

    def plan_faults(self, faults: list[dict]) -> None:
        """Make the sandbox fail the next API calls as planned."""
        requests.post(
            f"{self.url}/sandbox/wechat/faults", json=faults, timeout=5
        ).raise_for_status()


def _wait_for(predicate, timeout: float, what: str, logs: Path) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = "".join(p.read_text()[-3000:] for p in logs.glob("*.log"))
    raise RuntimeError(f"{what} did not come up in {timeout}s\n{tail}")


def start_process(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a child in its own process group, output to a log file."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Stop a child and its group."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def worker_ready(log: Path) -> bool:
    """Celery prints `ready.` once it consumes."""
    return log.exists() and " ready." in log.read_text(errors="replace")


@pytest.fixture(scope="session")
def stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real web process and a real Celery worker process on Redis database 0."""
    port = free_port()
    settings = base_settings.replace(wechat_api_base=f"http://127.0.0.1:{port}/sandbox/wechat/")
    yield from run_stack(settings, port, tmp_path_factory.mktemp("stack-logs"), "test")


def run_stack(
    settings: Settings, port: int, logs: Path, name: str, concurrency: int | None = None
) -> Iterator[Stack]:
    """Start a web process on `port` and a worker with `settings`; yield the Stack; stop both."""
    from bot.cli.supervisor import web_argv, worker_argv
    from bot.engine.transformers.tiny import ensure_tiny_model

    ensure_tiny_model(settings.data_path)  # built once, before two processes race for it
    url = f"http://127.0.0.1:{port}"
    # Children import this checkout, whatever is installed in the virtualenv.
    env = {
        **os.environ,
        **settings.to_env(),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("MIMOCHAT_GENERATION_DELAY", None)
    web = start_process(web_argv("127.0.0.1", port), env, logs / "web.log")
    worker = start_process(
        worker_argv(
            "gpu,io", concurrency or settings.gpu_concurrency, f"{name}-{uuid.uuid4().hex[:6]}"
        ),
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
        if os.environ.get("MIMOCHAT_KEEP_LOGS"):
            shutil.copytree(logs, Path(os.environ["MIMOCHAT_KEEP_LOGS"]), dirs_exist_ok=True)


@pytest.fixture
def live_sandbox(settings: Settings) -> Iterator[tuple[str, Settings]]:
    """The app served over real HTTP in a thread, so API clients can call its sandbox."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    served = settings.replace(wechat_api_base=f"{base}/sandbox/wechat/")
    server = make_server("127.0.0.1", port, create_app(served), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, served
    finally:
        server.shutdown()
        thread.join(5)


# --- the admin console (issue 6) ---


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    """Unit settings (Redis db 1, no worker) with the console on.

    The WeChat API base is a closed local port: the doctor's token fetch must never leave
    the machine (tests that need a working API use `live_admin`, whose sandbox answers).
    """
    return settings.replace(
        admin_token=ADMIN_TOKEN, wechat_api_base=f"http://127.0.0.1:{free_port()}/sandbox/wechat/"
    )


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The app for `settings` over real HTTP in a thread; yields its base URL."""
    port = free_port()
    server = make_server("127.0.0.1", port, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def live_admin(admin_settings: Settings) -> Iterator[tuple[str, Settings]]:
    """The console served over HTTP on db 1 (no worker), its sandbox as WeChat API."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    served = admin_settings.replace(wechat_api_base=f"{base}/sandbox/wechat/")
    server = make_server("127.0.0.1", port, create_app(served), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield base, served
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture(scope="session")
def admin_on_stack(stack: Stack) -> Iterator[tuple[str, Settings]]:
    """A console on the live stack's Redis: its messages are answered by the real worker."""
    served = stack.settings.replace(admin_token=ADMIN_TOKEN)
    with serve(served) as base:
        yield base, served
