"""gunicorn settings: `gunicorn -c webhooks/gunicorn.conf.py webhooks.wsgi:app`.

A file, not a module of the package: importing `webhooks` would import the app (and
prometheus_client) in the master before PROMETHEUS_MULTIPROC_DIR is set and emptied.

Several worker processes share one set of Prometheus figures through files in
PROMETHEUS_MULTIPROC_DIR (set here, before any worker imports prometheus_client). SIGTERM lets
requests in flight finish for up to MIMOCHAT_SHUTDOWN_GRACE seconds (graceful_timeout).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from typing import Any

from bot.cli.supervisor import web_shape
from bot.core.settings import load_or_exit

# Bad settings stop the master here, named, before any worker is forked.
_settings = load_or_exit(program="gunicorn (webhooks)")
_shape = web_shape(_settings.web_processes, _settings.web_threads)

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# MIMOCHAT_WEB_PROCESSES / _THREADS; the older WEB_CONCURRENCY / GUNICORN_THREADS still win.
workers = int(os.environ.get("WEB_CONCURRENCY") or _shape[0])
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS") or _shape[1])
# Webhooks answer in milliseconds; a request still running after 30 s is stuck.
timeout = 30
graceful_timeout = int(_settings.shutdown_grace)
keepalive = 5
accesslog = None  # one structured line per message stage is logged instead


def on_starting(server: Any) -> None:
    """Start with no figures left from an earlier run; one folder per port unless one is set.

    Per port, so two servers on one machine (two `mimochat up`, parallel test stacks) never
    empty each other's figures. Workers load the app after this, so they see the variable.
    """
    port = str(server.cfg.bind[0]).rsplit(":", 1)[-1] if server.cfg.bind else "8000"
    folder = os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR",
        os.path.join(tempfile.gettempdir(), f"mimochat-prometheus-{port}"),
    )
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)
    server.log.info(
        "mimochat web: gunicorn gthread, %d process(es) x %d thread(s)",
        server.cfg.workers,
        server.cfg.threads,
    )


def post_worker_init(worker: Any) -> None:
    """Keep what the worker loaded at start out of the garbage collector's full collections.

    The app, Flask, Celery, kombu and the rest are ~90,000 objects that live as long as the
    worker. A full collection walked them all: 100-130 ms with every thread of the worker
    stopped, about once per 3,000 requests per worker (measured under bench/ingest.py's load),
    a stall for every request in flight. Frozen (the gc module's documented use of `freeze`),
    later collections walk only what was made since; none took over 2 ms in the same run.
    Collected first, so no start-up garbage is kept forever.
    """
    gc.collect()
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
