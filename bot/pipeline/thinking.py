"""Thinking control: `/think off|on|deep` per person and conversation, kept in Redis.

off: no reasoning at all (a zero budget: the engines close `<think>` at once and answer);
on: `MIMOCHAT_THINKING_BUDGET`; deep: `MIMOCHAT_THINKING_BUDGET_DEEP`. Without a choice, the
channel's default (`WECHAT_THINKING`, `WECOM_THINKING`) applies.
"""

from __future__ import annotations

import redis

from bot.core.contracts import Job
from bot.core.settings import Settings
from bot.core.store import key

LEVELS = ("off", "on", "deep")
TTL = 90 * 86400  # a choice not renewed in three months lapses to the channel's default

CHOSEN_TEXT = {
    "off": "Thinking is off: I will answer at once, without reasoning first. "
    "已关闭思考：我会直接回答。发送 /思考 开 恢复。",
    "on": "Thinking is on: I reason before answering. 已开启思考：我会先思考再回答。",
    "deep": "Deep thinking is on: I take longer and reason more before answering. "
    "已开启深度思考：我会花更多时间思考。",
}
NOW_TEXT = (
    "Thinking is {level} now. Send /think off, /think on or /think deep to change it. "
    "当前思考模式：{level}。发送 /思考 关、/思考 开 或 /深度思考 切换。"
)


def _key(channel: str, scope: str, person: str) -> str:
    return key("thinking", channel, scope, person)


def default(settings: Settings, channel: str) -> str:
    """The channel's level when the person chose none."""
    return settings.wecom_thinking if channel == "wecom" else settings.wechat_thinking


def level(settings: Settings, client: redis.Redis, channel: str, scope: str, person: str) -> str:
    """The person's level in this conversation (their choice, else the channel's default)."""
    chosen = client.get(_key(channel, scope, person))
    return chosen if chosen in LEVELS else default(settings, channel)


def choose(
    settings: Settings, client: redis.Redis, channel: str, scope: str, person: str, choice: str
) -> str:
    """Apply a /think command (an empty choice only reports); the reply to send."""
    if choice not in LEVELS:
        return NOW_TEXT.format(level=level(settings, client, channel, scope, person))
    client.set(_key(channel, scope, person), choice, ex=TTL)
    return CHOSEN_TEXT[choice]


def budget(settings: Settings, client: redis.Redis, job: Job) -> int:
    """The reasoning budget (tokens) of a job, from its asker's level."""
    chosen = level(settings, client, job.channel, job.user, job.asker or job.user)
    if chosen == "off":
        return 0
    return settings.thinking_budget_deep if chosen == "deep" else settings.thinking_budget
