"""What one worker process holds once: its Redis client, WeChat client and engine."""

from __future__ import annotations

import functools

import redis

from bot.channels.wechat.api import WeChatAPI
from bot.core.settings import Settings
from bot.core.store import connect, resolve_url
from bot.engine.base import Engine
from bot.engine.factory import get_engine


@functools.cache
def redis_client(settings: Settings) -> redis.Redis:
    """The process's Redis client."""
    return connect(resolve_url(settings))


@functools.cache
def wechat_api(settings: Settings) -> WeChatAPI:
    """The process's WeChat API client."""
    return WeChatAPI(settings, redis_client(settings))


def engine(settings: Settings) -> Engine:
    """The process's engine (built on first call)."""
    return get_engine(settings)
