"""Redis connections bounded by the kernel's socket timeouts: a stuck Redis is still a timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.driver_info import DriverInfo

from bot.core import redis_sockets
from bot.core.redis_sockets import KernelTimedConnection, KernelTimedUnixConnection
from bot.core.store import SOCKET_TIMEOUT, connect, embedded_argv, embedded_url, wait_until_answers
from tests.helpers import unique


@pytest.fixture
def stopped_redis(tmp_path: Path) -> Iterator[str]:
    """A private real Redis, connected to and then stopped (SIGSTOP): it reads nothing more,
    so a large write fills the socket buffers and hangs. (CLIENT PAUSE cannot do this: a
    paused Redis still reads what arrives.)"""
    proc = subprocess.Popen(embedded_argv(tmp_path), stdout=subprocess.DEVNULL)
    url = embedded_url(tmp_path)
    try:
        assert wait_until_answers(url, proc, 10)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


def timed_client(url: str, seconds: float) -> redis.Redis:
    """A client bounded to `seconds`, with no handshake (CLIENT SETINFO): its first command is
    the test's own."""
    timed = redis_sockets.connection_class(url, seconds)
    assert timed is not None
    return redis.Redis.from_url(
        url,
        connection_class=timed,
        socket_connect_timeout=1.0,
        driver_info=DriverInfo(name=None, lib_version=None),
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", KernelTimedConnection),
        ("unix:///tmp/redis.sock?db=1", KernelTimedUnixConnection),
        ("rediss://127.0.0.1:6380/0", None),  # TLS keeps Python's timeout mode
    ],
)
def test_each_scheme_gets_its_connection_class(url: str, expected: type | None) -> None:
    timed = redis_sockets.connection_class(url, 2.0)
    if expected is None:
        assert timed is None
        return
    assert timed is not None and issubclass(timed, expected)
    assert redis_sockets.connection_class(url, 2.0) is timed  # one class per scheme and bound


def test_the_socket_is_blocking_with_the_bound_in_the_kernel(redis_client: redis.Redis) -> None:
    """The client the project uses: no Python timeout mode (no poll before each call), the
    kernel bounding reads and writes to SOCKET_TIMEOUT instead."""
    redis_client.ping()
    conn = redis_client.connection_pool.get_connection()
    try:
        sock = conn._sock
        assert sock is not None and sock.gettimeout() is None
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            seconds, micros = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, option, 16))
            assert seconds + micros / 1e6 == pytest.approx(SOCKET_TIMEOUT)
    finally:
        redis_client.connection_pool.release(conn)


@contextlib.contextmanager
def writes_held(url: str) -> Iterator[None]:
    """A real Redis holding every write (CLIENT PAUSE WRITE: reads pass, so the test can lift it
    with CLIENT UNPAUSE) for up to three times the bound."""
    admin = connect(url)
    admin.client_pause(int(SOCKET_TIMEOUT * 3000), all=False)
    try:
        yield
    finally:
        admin.client_unpause()
        admin.close()


def test_a_redis_that_never_answers_is_a_timeout_within_the_bound(redis_url: str) -> None:
    """A TimeoutError at the bound, which the webhook turns into a 503 well within WeChat's 5 s
    (not a hang, not a retry)."""
    client = connect(redis_url)
    client.ping()  # connected before the pause
    with writes_held(redis_url):
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.set(unique("held:"), "never written in time", ex=60)
        assert time.monotonic() - started < 2 * SOCKET_TIMEOUT
    client.close()


def test_a_write_redis_never_reads_is_a_timeout(stopped_redis: str) -> None:
    """A command bigger than the socket buffers, to a Redis that reads nothing (stopped): the
    kernel ends the write, and it is a TimeoutError like a stuck read."""
    client = timed_client(stopped_redis, 0.3)
    client.ping()  # connected while it still runs
    server_pid = int(client.info("server")["process_id"])
    os.kill(server_pid, signal.SIGSTOP)
    with pytest.raises(redis.TimeoutError, match="writing"):
        client.set("big", b"x" * (64 << 20))
    os.kill(server_pid, signal.SIGCONT)
    client.close()


def test_without_kernel_timeouts_python_keeps_the_bound(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """Where the OS refuses the socket options, the connection falls back to Python's timeout
    mode with the same bound. Only the refusal is patched (Linux always accepts the options);
    the Redis that holds the write is a real one."""
    monkeypatch.setattr(redis_sockets, "_kernel_timeouts", lambda sock, seconds: False)
    client = timed_client(redis_url, 0.3)
    conn = client.connection_pool.get_connection()
    assert conn._sock is not None and conn._sock.gettimeout() == 0.3
    client.connection_pool.release(conn)
    with writes_held(redis_url), pytest.raises(redis.TimeoutError):
        client.set(unique("held:"), "never written in time", ex=60)
    client.close()
