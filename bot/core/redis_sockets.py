"""Redis connections whose read and write timeouts the kernel enforces (SO_RCVTIMEO/SO_SNDTIMEO).

redis-py's `socket_timeout` puts the socket in Python's timeout mode: every `send` and `recv`
is preceded by a `poll` (CPython's socket module waits for readiness first), and each of the two
calls lets go of the GIL. Under load with a dozen request threads per process that is ~4 more
system calls and GIL hand-offs per question, for a timeout that almost never fires (measured in
bench/RESULTS.md). Here the socket stays blocking, so a command is one `send` and one `recv`,
and the kernel ends a read or write that waits longer than the timeout: the same bound as
before, raised as the same `redis.TimeoutError`, so a stuck Redis still answers 503 within
WeChat's 5 s. redis-py has no option for this, hence these subclasses (where setting the
socket options fails, the connection falls back to Python's timeout mode).
"""

from __future__ import annotations

import functools
import socket
import struct
from typing import Any
from urllib.parse import urlparse

import redis
from redis.connection import AbstractConnection, Connection, UnixDomainSocketConnection


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int(round((seconds - whole) * 1e6)))


def _kernel_timeouts(sock: socket.socket, seconds: float) -> bool:
    """Bound blocking reads and writes on `sock` to `seconds`; False where the OS refuses."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds))
    except (OSError, AttributeError, struct.error):
        return False
    sock.settimeout(None)
    return True


def _timed_out(exc: BaseException) -> bool:
    """Whether redis-py's ConnectionError was a kernel timeout (EAGAIN on a blocking socket)."""
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, BlockingIOError)


class _KernelTimed(AbstractConnection):
    """A connection whose socket is blocking, with the kernel bounding each read and write."""

    # The bound itself; redis-py's own `socket_timeout` stays None (no Python timeout mode).
    kernel_timeout = 2.0

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()
        if not _kernel_timeouts(sock, self.kernel_timeout):
            # redis-py's own timeout mode: its parser restores this after every readiness check.
            self.socket_timeout = self.kernel_timeout
            sock.settimeout(self.kernel_timeout)
        return sock

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Send as redis-py does; a write the kernel timed out is a TimeoutError."""
        try:
            super().send_packed_command(command, check_health)
        except redis.ConnectionError as exc:
            if not _timed_out(exc):
                raise
            raise redis.TimeoutError("Timeout writing to socket") from exc

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """Read as redis-py does; a read the kernel timed out is a TimeoutError."""
        try:
            return super().read_response(*args, **kwargs)
        except redis.ConnectionError as exc:
            if not _timed_out(exc):
                raise
            raise redis.TimeoutError(f"Timeout reading from {self._host_error()}") from exc


class KernelTimedConnection(_KernelTimed, Connection):
    """TCP (`redis://`)."""


class KernelTimedUnixConnection(_KernelTimed, UnixDomainSocketConnection):
    """Unix socket (`unix://`, the embedded server)."""


def connection_class(url: str, timeout: float) -> type[AbstractConnection] | None:
    """The kernel-timed class for `url`'s scheme with `timeout` seconds, or None (TLS and other
    schemes keep redis-py's own class and Python's timeout mode)."""
    return _timed_class(urlparse(url).scheme, timeout)


@functools.cache
def _timed_class(scheme: str, timeout: float) -> type[AbstractConnection] | None:
    base = {"unix": KernelTimedUnixConnection, "redis": KernelTimedConnection}.get(scheme)
    if base is None:
        return None
    return type(base.__name__, (base,), {"kernel_timeout": timeout})
