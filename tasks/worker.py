"""`celery -A tasks.worker worker`: settings from the environment, engine loaded first.

Celery signals hook in what a production worker needs: a heartbeat in Redis (tasks/heartbeat.py),
its Prometheus metrics on `MIMOCHAT_METRICS_HOST`:`MIMOCHAT_METRICS_PORT` (127.0.0.1 unless
set), the request id of the job it runs on every log line, and a bounded warm shutdown
(tasks/shutdown.py).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import (
    celeryd_after_setup,
    task_postrun,
    task_prerun,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from bot.console.workers import worker_id
from bot.core import lifeline, logs, metrics
from bot.core.logs import setup_logging
from bot.core.settings import load_or_exit
from bot.pipeline.sweeper import Sweeper
from tasks import dispatch, runtime
from tasks.celery_app import make_celery
from tasks.heartbeat import Heartbeat
from tasks.names import GPU_QUEUE
from tasks.shutdown import ShutdownBound

# Bad settings stop the worker here, named, before Celery connects or loads a model.
settings = load_or_exit(program="celery worker (tasks.worker)")
setup_logging(settings)
app = make_celery(settings)
log = logging.getLogger("mimochat.worker")
_heartbeat: list[Heartbeat] = []
_running: dict[str, Any] = {}


@celeryd_after_setup.connect
def load_engine(sender: str, instance: object, **_: object) -> None:
    """Build the engine before the worker consumes anything (only where it serves `gpu`)."""
    consume_from = instance.app.amqp.queues.consume_from or {}  # type: ignore[attr-defined]
    # The console and the doctor see this worker (and its model) through its heartbeat.
    heartbeat = Heartbeat(runtime.redis_client(settings), sender, list(consume_from))
    heartbeat.start()
    _heartbeat.append(heartbeat)
    if GPU_QUEUE not in consume_from:
        heartbeat.ready(None)
        return
    try:
        engine = runtime.engine(settings)
    except Exception as exc:  # whatever it is, this worker cannot answer
        # Celery logs and swallows a signal handler's exception and would then consume jobs
        # it cannot answer; this process ends instead, before it takes anything from a queue,
        # with a code its supervisor knows not to restart.
        log.debug("engine failed to load", exc_info=True)
        heartbeat.stop()
        lifeline.cannot_start(lifeline.engine_failure(exc))
    # The heartbeat also carries the generations in flight: the web's engine batch size figure.
    heartbeat.ready(lambda: {**engine.info(), "generating": metrics.generations_in_flight()})
    log.info("engine ready on %s: %s", sender, engine.info())


@worker_shutdown.connect
def stop_heartbeat(**_: object) -> None:
    """Show the worker offline at once on a clean stop; hand the sweeper's lease on."""
    for heartbeat in _heartbeat:
        heartbeat.stop()
    if "sweeper" in _running:
        _running.pop("sweeper").stop()


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Serve this process's metrics on host:port; 0 if off or the port is taken.

    Loopback unless MIMOCHAT_METRICS_HOST says otherwise: the figures are nobody else's business
    until an operator opens them to a Prometheus elsewhere (in containers: 0.0.0.0).
    """
    if not port:
        return 0
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        # A second worker on the same machine: it works on, without its own metrics.
        log.warning("metrics server not started on %s:%d: %s", host, port, exc)
        return 0
    log.info("metrics on http://%s:%d/metrics", host, port)
    return port


@worker_ready.connect
def on_ready(sender: Any, **_: object) -> None:
    """Serve metrics once the worker consumes; keep its consumer for a bounded shutdown."""
    start_metrics_server(settings.metrics_port, settings.metrics_host)
    _running["consumer"] = sender
    # Every worker runs a sweeper; a Redis lease lets one sweep at a time (bot.pipeline.sweeper).
    client = runtime.redis_client(settings)
    sweeper = Sweeper(
        client,
        settings,
        dispatch.sweeper_actions(app, settings, client),
        owner=worker_id(str(getattr(sender, "hostname", "worker"))),
    )
    sweeper.start()
    _running["sweeper"] = sweeper


@worker_shutting_down.connect
def on_shutting_down(sig: str, how: str, **_: object) -> None:
    """Leave the readiness count at once, and bound a warm shutdown by MIMOCHAT_SHUTDOWN_GRACE."""
    for heartbeat in _heartbeat:
        heartbeat.stop()
    consumer = _running.get("consumer")
    if how == "Warm" and consumer is not None and "bound" not in _running:
        _running["bound"] = ShutdownBound(consumer, settings.shutdown_grace)
        _running["bound"].start()


@task_prerun.connect
def bind_request(args: tuple | None = None, **_: object) -> None:
    """Every line logged while a task runs carries its job's request id."""
    logs.clear()
    payload = args[0] if args else None
    if isinstance(payload, dict):
        # A Job carries the ids itself; an Answer carries the Job it answers.
        inner = payload.get("job")
        job: dict[str, Any] = inner if isinstance(inner, dict) else payload
        logs.bind(request_id=job.get("request_id"), job_id=job.get("job_id"))


@task_postrun.connect
def unbind_request(**_: object) -> None:
    """The thread's next task starts with no fields bound."""
    logs.clear()
