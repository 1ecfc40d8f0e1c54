"""`python -m webhooks [--host H] [--port P]`: serve the app (gunicorn in containers)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from werkzeug.serving import make_server

from webhooks import create_app


def main(argv: list[str] | None = None) -> None:
    """Serve with a threaded WSGI server until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m webhooks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    app = create_app()
    server = make_server(args.host, args.port, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.getLogger("mimochat.web").info("listening on http://%s:%d", args.host, args.port)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
