"""The guards' settings (rate limits, content safety, thinking), a mixin of `Settings`.

Kept apart so `settings.py` stays small; `Settings` inherits these fields, and `.env.example`
lists them in their own group after the others.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings

from bot.core.setting_types import (
    HTTP_URL_WORDS,
    RATE_LIMIT_WORDS,
    SAFETY_LISTS_WORDS,
    OptionalHttpUrlStr,
    RateLimitStr,
    ReviewFail,
    SafetyListsStr,
    Thinking,
    setting,
)


class GuardSettings(BaseSettings):
    """Per-user rate limits and quotas, content safety lists and review, thinking defaults."""

    rate_limit_user: RateLimitStr = setting(
        "MIMOCHAT_RATE_LIMIT_USER",
        "",
        "Questions one person may ask (5/minute;100/day); empty: no limit.",
        allowed=RATE_LIMIT_WORDS,
    )
    rate_limit_group: RateLimitStr = setting(
        "MIMOCHAT_RATE_LIMIT_GROUP",
        "",
        "Questions one WeCom group may ask, all members together; empty: no limit.",
        allowed=RATE_LIMIT_WORDS,
    )
    rate_limit_exempt: str = setting(
        "MIMOCHAT_RATE_LIMIT_EXEMPT",
        "",
        "User ids (comma-separated) never rate-limited: operators, testers.",
    )
    safety_lists: SafetyListsStr = setting(
        "MIMOCHAT_SAFETY_LISTS",
        "",
        "Word lists as action:path,... (refuse: the question; mask / withhold: the answer); "
        "one term a line, reloaded when a file changes; empty: none.",
        allowed=SAFETY_LISTS_WORDS,
    )
    review_url: OptionalHttpUrlStr = setting(
        "MIMOCHAT_REVIEW_URL",
        "",
        "External review service questions and answers are POSTed to; empty: none.",
        allowed=f"{HTTP_URL_WORDS}, or empty",
    )
    review_timeout: float = setting(
        "MIMOCHAT_REVIEW_TIMEOUT", 2.0, "Seconds to wait for the review service.", gt=0
    )
    review_fail: ReviewFail = setting(
        "MIMOCHAT_REVIEW_FAIL",
        "open",
        "When the review service fails or times out: open (let it through) | closed (refuse).",
    )
    wechat_thinking: Thinking = setting(
        "WECHAT_THINKING", "on", "WeChat's default for /think: off | on | deep."
    )
    wecom_thinking: Thinking = setting(
        "WECOM_THINKING", "on", "WeCom's default for /think: off | on | deep."
    )
    thinking_budget_deep: int = setting(
        "MIMOCHAT_THINKING_BUDGET_DEEP",
        8192,
        "Reasoning budget (tokens) of /think deep; /think on uses MIMOCHAT_THINKING_BUDGET.",
        ge=0,
    )
