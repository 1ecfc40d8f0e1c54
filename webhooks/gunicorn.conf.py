"""gunicorn settings: `gunicorn -c webhooks/gunicorn.conf.py webhooks.wsgi:app`.

A file, not a module of the package: importing `webhooks` would import the app (and
prometheus_client) in the master before PROMETHEUS_MULTIPROC_DIR is set and emptied.

Several worker processes share one set of Prometheus figures through files in
PROMETHEUS_MULTIPROC_DIR (set here, before any worker imports prometheus_client). SIGTERM lets
requests in flight finish for up to MIMOCHAT_SHUTDOWN_GRACE seconds (graceful_timeout).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from bot.core.settings import load_or_exit

# Bad settings stop the master here, named, before any worker is forked.
_settings = load_or_exit(program="gunicorn (webhooks)")
multiproc_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), "mimochat-prometheus")
)

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Webhooks answer in milliseconds; a request still running after 30 s is stuck.
timeout = 30
graceful_timeout = int(_settings.shutdown_grace)
keepalive = 5
accesslog = None  # one structured line per message stage is logged instead


def on_starting(server: object) -> None:
    """Start with no figures left from an earlier run."""
    shutil.rmtree(multiproc_dir, ignore_errors=True)
    os.makedirs(multiproc_dir, exist_ok=True)


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's live gauges (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
