"""Delivery of an answer to a WeChat user: format, split, send each part once."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from bot import jobs
from bot.formatting import number_parts, split_text, to_wechat_text
from bot.store import key
from bot.wechat_api import WeChatAPI, WeChatAPIError

log = logging.getLogger(__name__)

WECHAT_TEXT_LIMIT = 2000  # UTF-8 bytes per customer-service text (WeChat refuses ~2048+)
SENT_TTL = 7 * 86400


def wechat_parts(answer: str) -> list[str]:
    """The answer as WeChat text messages: plain text, split under the byte limit, numbered."""
    parts = split_text(to_wechat_text(answer), WECHAT_TEXT_LIMIT)
    return number_parts(parts, WECHAT_TEXT_LIMIT) or ["…"]


def deliver(result: dict[str, Any], *, client: redis.Redis, api: WeChatAPI) -> dict[str, Any]:
    """Send every part not sent yet; a retried delivery never repeats a part.

    Raises WeChatAPIError on the first failing part; the parts before it stay recorded.
    """
    parts = wechat_parts(result["answer"])
    sent_key = key("sent", result["job_id"])
    already = client.hgetall(sent_key)
    sent_now = 0
    for index, part in enumerate(parts):
        if str(index) in already:
            continue
        api.send_text(result["user"], part)
        # Recorded right after WeChat accepted it, so a retry resumes after this part.
        client.hset(sent_key, str(index), f"{time.time():.3f}")
        client.expire(sent_key, SENT_TTL)
        sent_now += 1
    jobs.record(client, result["job_id"], "delivered", parts=len(parts))
    log.info(
        "delivered job %s to %s: %d part(s), %d sent now",
        result["job_id"],
        result["channel"],
        len(parts),
        sent_now,
    )
    return {"parts": len(parts), "sent_now": sent_now, "delivered_at": time.time()}


def record_failure(client: redis.Redis, result: dict[str, Any], exc: WeChatAPIError) -> None:
    """Note a delivery that will not be retried, with WeChat's error code, for operators."""
    jobs.record(client, result["job_id"], "failed", error_code=exc.code, error=exc.message[:200])
