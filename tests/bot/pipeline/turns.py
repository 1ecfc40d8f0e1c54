"""A counting TCP proxy in front of a real Redis: how many round trips a piece of code makes.

A round trip is a turn of the conversation: the client speaks after the server has answered
(or first). A pipeline or a script is one turn however many commands it carries; so is every
plain command. Every client counts, redis-py's and kombu's (Celery's publish) alike.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit


class TurnCounter:
    """Listens on 127.0.0.1 and forwards to the Redis at `url`, counting round trips."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._unix = parts.scheme == "unix"
        self.target: str | tuple[str, int] = (
            parts.path if self._unix else (parts.hostname or "127.0.0.1", parts.port or 6379)
        )
        self.db = (
            parse_qs(parts.query).get("db", ["0"])[0] if self._unix else parts.path.strip("/")
        ) or "0"
        self.turns = 0
        self.log: list[bytes] = []  # the first bytes of each turn (the command, for a failure)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        """The proxied URL: the same database, this proxy's port (no password: tests use none)."""
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    def reset(self) -> None:
        """Start counting afresh."""
        with self._lock:
            self.turns = 0
            self.log = []

    @contextlib.contextmanager
    def counting(self) -> Iterator[TurnCounter]:
        """Count only what the block does."""
        self.reset()
        yield self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if isinstance(self.target, str):
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.connect(self.target)
            else:
                server = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, server]
            answered = [True]  # the client's next bytes start a new turn
            threading.Thread(
                target=self._pump, args=(client, server, answered, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, answered, False), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answered: list[bool], up: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if up and answered[0]:
                        self.turns += 1
                        self.log.append(data[:80])
                    answered[0] = not up
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop listening and end every connection."""
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
