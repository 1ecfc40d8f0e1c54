"""`celery -A tasks.worker worker`: settings from the environment, engine loaded first."""

from __future__ import annotations

import logging

from celery.signals import celeryd_after_setup, worker_shutdown

from bot.logs import setup_logging
from bot.settings import Settings
from tasks import runtime
from tasks.celery_app import GPU_QUEUE, make_celery
from tasks.heartbeat import Heartbeat

settings = Settings.from_env()
setup_logging(settings)
app = make_celery(settings)
log = logging.getLogger("mimochat.worker")
_heartbeat: list[Heartbeat] = []


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
    engine = runtime.engine(settings)
    heartbeat.ready(engine.info)
    log.info("engine ready on %s: %s", sender, engine.info())


@worker_shutdown.connect
def stop_heartbeat(**_: object) -> None:
    """Show the worker offline at once on a clean stop."""
    for heartbeat in _heartbeat:
        heartbeat.stop()
