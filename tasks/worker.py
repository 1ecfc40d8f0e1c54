"""`celery -A tasks.worker worker`: settings from the environment, engine loaded first."""

from __future__ import annotations

import logging

from celery.signals import celeryd_after_setup

from bot.logs import setup_logging
from bot.settings import Settings
from tasks import runtime
from tasks.celery_app import GPU_QUEUE, make_celery

settings = Settings.from_env()
setup_logging(settings)
app = make_celery(settings)
log = logging.getLogger("mimochat.worker")


@celeryd_after_setup.connect
def load_engine(sender: str, instance: object, **_: object) -> None:
    """Build the engine before the worker consumes anything (only where it serves `gpu`)."""
    consume_from = instance.app.amqp.queues.consume_from or {}  # type: ignore[attr-defined]
    if GPU_QUEUE not in consume_from:
        return
    engine = runtime.engine(settings)
    log.info("engine ready on %s: %s", sender, engine.info())
