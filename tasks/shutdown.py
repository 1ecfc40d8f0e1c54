"""A bound on the worker's warm shutdown: finish running jobs in time, or hand them back.

On SIGTERM Celery stops taking jobs and waits for the running ones, with no limit: with the
threads pool a generation cannot be interrupted, and Celery's own soft shutdown sleeps its whole
timeout and then cancels by killing pool processes, which threads do not have. So a watchdog
waits up to `MIMOCHAT_SHUTDOWN_GRACE` seconds for the running jobs; if some are still running
then, it puts every job this worker took and has not acknowledged back on its queue (at the
front, as kombu's own restore does) and ends the process at once, before a half-finished job can
be acknowledged. Jobs are acknowledged only after they finish (acks_late), so nothing
acknowledged is lost and nothing handed back was done: another worker answers it once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery.worker import state

log = logging.getLogger(__name__)

EXIT_HANDED_BACK = 75  # EX_TEMPFAIL: stopped with work handed back to the queue


def running_jobs() -> int:
    """Jobs this worker process is running now."""
    return len(state.active_requests)


def hand_back(consumer: Any) -> int:
    """Put every job this worker took and has not acknowledged back on its queue; the count."""
    channel = consumer.task_consumer.channel
    qos = channel.qos
    count = len(getattr(qos, "_delivered", {}) or {})
    qos.restore_unacked_once()
    return count


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


class ShutdownBound(threading.Thread):
    """Started when a warm shutdown begins; ends the process if jobs outlive the grace period."""

    def __init__(self, consumer: Any, grace: float, poll: float = 0.2) -> None:
        super().__init__(name="mimochat-shutdown-bound", daemon=True)
        self.consumer, self.grace, self.poll = consumer, grace, poll

    def run(self) -> None:
        deadline = time.monotonic() + self.grace
        log.info(
            "warm shutdown: waiting up to %.0fs for %d running job(s)", self.grace, running_jobs()
        )
        while time.monotonic() < deadline:
            if not running_jobs():
                return  # Celery finishes the shutdown and restores what it had only reserved
            time.sleep(self.poll)
        try:
            count = hand_back(self.consumer)
        except Exception:
            # Nothing restored: the jobs come back after the visibility timeout instead.
            log.exception("could not hand the running jobs back; they return after the timeout")
            count = 0
        log.warning(
            "shutdown grace of %.0fs over with %d job(s) running: handed %d back to the queue",
            self.grace,
            running_jobs(),
            count,
        )
        _flush_logs()
        os._exit(EXIT_HANDED_BACK)
