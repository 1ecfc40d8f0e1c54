"""The generation task (gpu queue): answer one job, then hand the answer to delivery."""

from __future__ import annotations

import logging
import time

from celery import Celery

from bot.channels.wechat import reply_mode
from bot.core import metrics
from bot.core.settings import Settings
from bot.pipeline import service
from tasks import runtime

log = logging.getLogger(__name__)


def register(app: Celery, settings: Settings) -> None:
    """Define the generation task on `app`."""

    @app.task(name="mimochat.generate", acks_late=True)
    def generate(job: dict) -> None:
        started = time.time()
        client = runtime.redis_client(settings)
        if (
            job["channel"] == "wechat"
            and reply_mode.effective(settings, client) != reply_mode.PASSIVE
        ):
            app.send_task("mimochat.typing", args=[job], queue="io")
        with metrics.generating():
            result = service.answer(
                job,
                settings=settings,
                client=client,
                engine=runtime.engine(settings),
            )
        if float(result.get("answered_at") or 0) >= started:  # not an earlier try's answer
            metrics.generation_done(result)
        app.send_task("mimochat.deliver", args=[result], queue="io")
