"""The doctor's look at the long connection: who holds it, or whether the id and secret work.

Subscribing is the only way to check the id and secret, and a new connection for a bot replaces
the one WeCom has — so the probe subscribes only when no connector holds the lease; when one
does, its holder is reported instead (its subscription already proves the credentials).
"""

from __future__ import annotations

import asyncio

import redis
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from bot.channels.wecom import frames
from bot.channels.wecom.lease import holder
from bot.core.settings import Settings

PROBE_TIMEOUT = 5.0


async def subscribe_once(url: str, bot_id: str, secret: str, timeout: float = PROBE_TIMEOUT) -> int:
    """Dial, subscribe, and return the ack's errcode (the connection is closed at once)."""
    request = frames.frame(frames.SUBSCRIBE, {"bot_id": bot_id, "secret": secret})
    async with asyncio.timeout(timeout):
        async with connect(url, ping_interval=None, close_timeout=1) as ws:
            await ws.send(frames.encode(request))
            while True:
                reply = frames.decode(await ws.recv())
                if not reply.get("cmd") and frames.req_id_of(reply) == frames.req_id_of(request):
                    return int(reply.get("errcode") or 0)


def long_connection(settings: Settings, client: redis.Redis | None) -> tuple[bool, str]:
    """(ok, words) for the doctor: not configured, held by whom, or the subscribe's answer."""
    bot_id, url = settings.wecom_bot_id, settings.wecom_ws_url
    if not (bot_id and settings.wecom_bot_secret):
        return True, "not configured (WECOM_BOT_ID / WECOM_BOT_SECRET unset)"
    if client is not None:
        try:
            owner = holder(client, bot_id)
        except redis.RedisError as exc:
            return False, f"cannot read the lease: {exc}"
        if owner:
            name, _, token = owner.rpartition("|")
            return True, f"held by {name} (fencing token {token}); not probed, to keep it up"
    try:
        errcode = asyncio.run(subscribe_once(url, bot_id, settings.wecom_bot_secret))
    except (OSError, WebSocketException, TimeoutError, ValueError) as exc:
        return False, f"cannot subscribe at {url}: {type(exc).__name__}: {exc}"
    if errcode:
        return False, f"subscribe refused at {url}: errcode {errcode}, {frames.explain(errcode)}"
    return True, f"bot {bot_id} subscribes at {url}; no connector holds it now"
