"""A TCP proxy to a Redis that a test can cut and restore: a Redis failure at an exact line.

Stands in for a network partition between one client and Redis (the server keeps running, as
in a real outage of the path, and the web process's sandbox keeps its own direct connection).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttableProxy:
    """127.0.0.1:<port> → target; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._marker: bytes | None = None  # see lose_reply_to
        self._reply_lost = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Drop every connection now; new ones are closed at once until `restore()`."""
        self.open.clear()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
            self._conns.clear()

    def lose_reply_to(self, marker: bytes) -> None:
        """Arm a fault: once a command holding `marker` has reached Redis, its reply is dropped
        and every connection cut. Redis ran the command; the client only sees the cut."""
        self._marker = marker

    def restore(self) -> None:
        """Let connections through again."""
        self.open.set()

    def close(self) -> None:
        """Stop the proxy."""
        self._closed = True
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b, from_redis in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, from_redis), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream and self._reply_lost.is_set():
                    self._reply_lost.clear()
                    self.cut()  # the reply to the marked command goes nowhere
                    return
                dst.sendall(data)
                if not upstream and self._marker is not None and self._marker in data:
                    self._marker = None
                    self._reply_lost.set()
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()
