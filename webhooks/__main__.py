"""`python -m webhooks [--host H] [--port P]`: serve the app (gunicorn in containers).

SIGTERM/SIGINT stop taking new connections, let the requests in flight finish (at most
MIMOCHAT_SHUTDOWN_GRACE seconds), then exit: a message being enqueued is acknowledged or
refused, never cut off halfway.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.serving import make_server

from bot.core.settings import load_or_exit
from webhooks.app import create_app

log = logging.getLogger("mimochat.web")


class InFlight:
    """WSGI middleware counting the requests being answered."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self._lock:
            self.count += 1
        try:
            # The body is built before the count drops (Flask answers are not streamed here).
            result = self.app(environ, start_response)
            try:
                return list(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        finally:
            with self._lock:
                self.count -= 1

    def drain(self, grace: float) -> int:
        """Wait up to `grace` seconds for the requests in flight; the number left."""
        deadline = time.monotonic() + grace
        while self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.count


def main(argv: list[str] | None = None) -> None:
    """Serve with a threaded WSGI server until SIGTERM/SIGINT, then drain."""
    parser = argparse.ArgumentParser(prog="python -m webhooks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    app = create_app(load_or_exit(program=parser.prog))
    grace = app.extensions["mimochat"].settings.shutdown_grace
    in_flight = InFlight(app)
    server = make_server(args.host, args.port, in_flight, threaded=True)

    def stop(signum: int, _frame: object) -> None:
        # shutdown() waits for serve_forever to return, so it cannot run on this (main) thread.
        log.info("signal %d: no new connections, finishing %d request(s)", signum, in_flight.count)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening on http://%s:%d", args.host, args.port)
    try:
        server.serve_forever()
    finally:
        left = in_flight.drain(grace)
        if left:
            log.warning("stopping with %d request(s) still running after %.0fs", left, grace)
        server.server_close()
        log.info("stopped")


if __name__ == "__main__":
    main()
