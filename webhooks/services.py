"""What the views share, built once per app: settings, Redis, the producer, the WeChat codec.

Kept apart from `webhooks.app` so blueprints import this and the app imports the blueprints:
no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app

from bot.channels.wechat.protocol import WeChatCodec
from bot.core.settings import Settings
from tasks.celery_app import Producer


@dataclass
class Services:
    """What the views share, built once per app."""

    settings: Settings
    redis: redis.Redis
    producer: Producer
    wechat: WeChatCodec


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["mimochat"]
