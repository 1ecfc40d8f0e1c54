"""The WeChat HTTP API client (the only module that calls it), with one access token in Redis.

Every process shares one token: fetching a new token invalidates the old one, so fetches are
serialised by a Redis lock and a process that finds a fresher token than the one that failed
uses it instead of fetching again.
"""

from __future__ import annotations

import json
import logging
import re
import time

import redis
import requests
from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatClientException
from wechatpy.session.redisstorage import RedisStorage

from bot.core import logs, metrics
from bot.core.settings import Settings
from bot.core.store import key

log = logging.getLogger(__name__)

TOKEN_ERRORS = frozenset({40001, 40014, 42001})  # invalid / malformed / expired access token
TRANSIENT_ERRORS = frozenset({-1, 45009, 45011})  # system busy, API rate limits


class WeChatAPIError(Exception):
    """A failed API call: `code` is WeChat's errcode (None for HTTP/network failures).

    `uncertain`: the request reached WeChat but no answer came back in time (a read timeout),
    so WeChat may have sent the message: sending it again could show it twice.
    """

    def __init__(
        self, code: int | None, message: str, transient: bool, uncertain: bool = False
    ) -> None:
        super().__init__(f"{code}: {message}" if code is not None else message)
        self.code = code
        self.message = message
        self.transient = transient
        self.uncertain = uncertain


class _Client(WeChatClient):
    """wechatpy's client pointed at `api_base`, with a token fetch that honours it."""

    def __init__(self, api: WeChatAPI, settings: Settings, storage: RedisStorage) -> None:
        super().__init__(
            settings.wechat_app_id,
            settings.wechat_app_secret,
            session=storage,
            timeout=settings.wechat_timeout,
            auto_retry=False,  # wechatpy's retry recurses without bound; WeChatAPI retries once
        )
        self.API_BASE_URL = api.base + "cgi-bin/"
        self._api = api

    def fetch_access_token(self) -> dict:
        """Fetch under the shared lock (wechatpy's own fetch hard-codes the real host)."""
        self._api.refresh_token(stale=None)
        return {"access_token": self.session.get(self.access_token_key)}


class WeChatAPI:
    """Customer-service messages and typing for one Official Account."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.base = settings.wechat_api_base.rstrip("/") + "/"
        storage = RedisStorage(client, prefix=key("wechat"))
        self.client = _Client(self, settings, storage)
        self.token_key = key("wechat", self.client.access_token_key)
        self.lock_key = key("wechat", "token-lock", settings.wechat_app_id)

    def current_token(self) -> str | None:
        """The shared token, if one is stored and not expired."""
        token = self.client.session.get(self.client.access_token_key)
        logs.add_secret(token)  # fetched by another process: masked in this one's logs too
        return token

    def refresh_token(self, stale: str | None) -> str:
        """Fetch a new token unless another process already replaced `stale`."""
        with self.redis.lock(self.lock_key, timeout=30, blocking_timeout=20):
            current = self.current_token()
            if current and current != stale:
                return current
            try:
                res = requests.get(
                    self.base + "cgi-bin/token",
                    params={
                        "grant_type": "client_credential",
                        "appid": self.settings.wechat_app_id,
                        "secret": self.settings.wechat_app_secret,
                    },
                    timeout=self.settings.wechat_timeout,
                )
                res.raise_for_status()
                data = res.json()
            except (requests.RequestException, ValueError) as exc:
                raise WeChatAPIError(
                    None, f"token fetch failed: {type(exc).__name__}", True
                ) from exc
            if data.get("errcode"):
                code = int(data["errcode"])
                raise WeChatAPIError(code, str(data.get("errmsg", "")), code in TRANSIENT_ERRORS)
            token = data["access_token"]
            logs.add_secret(token)  # never printed, whatever logs it later
            metrics.TOKEN_REFRESHES.inc()
            # Expire a little early so no call goes out with a token WeChat just dropped.
            ttl = max(60, int(data.get("expires_in", 7200)) - 300)
            self.client.session.set(self.client.access_token_key, token, ttl)
            log.info("wechat access token refreshed (valid %ss)", ttl)
            return token

    def _post(self, endpoint: str, payload: dict) -> dict:
        token = self.current_token() or self.refresh_token(stale=None)
        for attempt in (1, 2):
            try:
                return self.client.post(
                    endpoint,
                    params={"access_token": token},
                    data=json.dumps(payload, ensure_ascii=False).encode(),
                )
            except WeChatClientException as exc:
                code = exc.errcode
                if code in TOKEN_ERRORS and attempt == 1:
                    log.warning(
                        "wechat %s: access token rejected (%s), refreshing once", endpoint, code
                    )
                    token = self.refresh_token(stale=token)
                    continue
                transient = code is None or code in TRANSIENT_ERRORS or code in TOKEN_ERRORS
                raise WeChatAPIError(code, str(exc.errmsg or "HTTP error"), transient) from exc
            except requests.RequestException as exc:
                uncertain = isinstance(exc, requests.ReadTimeout)
                raise WeChatAPIError(None, f"{type(exc).__name__}", True, uncertain) from exc
        raise AssertionError("unreachable")

    def send_text(self, openid: str, content: str) -> None:
        """Send one customer-service text message."""
        payload = {"touser": openid, "msgtype": "text", "text": {"content": content}}
        started = time.monotonic()
        self._post("message/custom/send", payload)
        log.debug("wechat send took %.3fs", time.monotonic() - started)

    def typing(self, openid: str, on: bool = True) -> None:
        """Show (or cancel) the typing indicator in the user's chat."""
        self._post(
            "message/custom/typing",
            {"touser": openid, "command": "Typing" if on else "CancelTyping"},
        )


# What WeChat's error codes mean for an operator, in plain words (the console and the doctor).
ERROR_HELP = {
    -1: "WeChat is busy right now; try again in a moment",
    40001: "WeChat rejected the access token or the AppSecret (another system may have fetched "
    "a newer token)",
    40002: "the token request was malformed (grant_type)",
    40013: "WECHAT_APP_ID is not a valid AppID: copy it from 设置与开发 → 基本配置 in the "
    "Official Account console (it starts with wx)",
    40125: "WECHAT_APP_SECRET is wrong for this AppID: reset it under 设置与开发 → 基本配置 → "
    "AppSecret and copy the new one",
    40164: "this server's IP address is not on the account's IP whitelist: add it under "
    "设置与开发 → 基本配置 → IP白名单",
    41002: "WECHAT_APP_ID is missing",
    41004: "WECHAT_APP_SECRET is missing",
    45015: "the user has not written to the account in the last 48 hours, so it may not send "
    "them customer-service messages",
    45047: "the 5 customer-service messages allowed per user message are used up",
    48001: "this account may not use this API: customer-service messages need a verified "
    "service account; use WECHAT_REPLY_MODE=passive or auto",
    89503: "this call came from an IP that needs an administrator's confirmation in the "
    "Official Account console",
}


def explain(code: int | None, message: str = "") -> str:
    """An error code in plain words (with the IP WeChat saw for 40164)."""
    if code is None:
        return f"cannot reach the WeChat API ({message or 'network error'})"
    text = ERROR_HELP.get(code, f"WeChat answered error {code}: {message}")
    if code == 40164 and (m := re.search(r"invalid ip ([0-9a-fA-F.:]+)", message)):
        text += f" (WeChat saw this server as {m.group(1)})"
    return f"{code}: {text}"


def check_access_token(settings: Settings, client: redis.Redis) -> tuple[bool, str]:
    """Can an access token be had from WECHAT_API_BASE? (ok, plain-words detail).

    Uses the shared token when one is stored (a fresh fetch would invalidate the workers' one);
    otherwise fetches one under the shared lock and stores it for everyone.
    """
    api = WeChatAPI(settings, client)
    had = api.current_token() is not None
    try:
        api.refresh_token(stale=None)
    except WeChatAPIError as exc:
        return False, explain(exc.code, exc.message)
    except redis.RedisError as exc:
        return False, f"cannot share the token: Redis is unreachable ({type(exc).__name__})"
    return True, "a valid token is shared in Redis" if had else "obtained and shared in Redis"
