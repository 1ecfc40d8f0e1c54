"""The WeChat API client against the sandbox served over real HTTP: tokens, errors, refresh."""

from __future__ import annotations

import pytest
import requests

from bot.channels.wechat.api import WeChatAPI, WeChatAPIError
from bot.core.settings import Settings
from bot.core.store import connect
from tests.helpers import user_with_window


def outbox(base: str, user: str) -> list[dict]:
    return requests.get(f"{base}/sandbox/wechat/outbox", params={"touser": user}, timeout=5).json()


def test_send_text_lands_in_outbox(live_sandbox) -> None:  # noqa: ANN001
    base, settings = live_sandbox
    api, user = WeChatAPI(settings, connect(settings.redis_url)), user_with_window(base)
    api.send_text(user, "你好")
    api.typing(user)
    assert [m["content"] for m in outbox(base, user)] == ["你好"]


def test_token_is_shared_by_clients(live_sandbox) -> None:  # noqa: ANN001
    base, settings = live_sandbox
    r = connect(settings.redis_url)
    first, second = WeChatAPI(settings, r), WeChatAPI(settings, r)
    first.send_text(user_with_window(base), "a")
    token = first.current_token()
    second.send_text(user_with_window(base), "b")
    assert second.current_token() == token  # the second client did not fetch (and invalidate) one


def test_invalidated_token_is_refreshed_once(live_sandbox) -> None:  # noqa: ANN001
    base, settings = live_sandbox
    api, user = WeChatAPI(settings, connect(settings.redis_url)), user_with_window(base)
    api.send_text(user, "one")
    stale = api.current_token()
    # Someone else fetched a token (say, another deployment): ours is now invalid (40001).
    requests.get(
        f"{base}/sandbox/wechat/cgi-bin/token",
        params={
            "grant_type": "client_credential",
            "appid": settings.wechat_app_id,
            "secret": settings.wechat_app_secret,
        },
        timeout=5,
    ).raise_for_status()
    api.send_text(user, "two")
    assert api.current_token() != stale
    assert [m["content"] for m in outbox(base, user)] == ["one", "two"]


def test_refresh_skipped_when_another_process_already_refreshed(live_sandbox) -> None:  # noqa: ANN001
    base, settings = live_sandbox
    r = connect(settings.redis_url)
    a, b = WeChatAPI(settings, r), WeChatAPI(settings, r)
    a.send_text(user_with_window(base), "x")
    stale = a.current_token()
    fresh = a.refresh_token(stale=stale)
    assert b.refresh_token(stale=stale) == fresh  # b saw 40001 with the stale token: no new fetch


@pytest.mark.parametrize(
    ("change", "code"),
    [({"wechat_app_secret": "wrong"}, 40125), ({"wechat_app_id": "wxffffffffffffffff"}, 40013)],
)
def test_wrong_credentials_are_permanent_errors(live_sandbox, change: dict, code: int) -> None:  # noqa: ANN001
    base, settings = live_sandbox
    bad: Settings = settings.replace(**change)
    r = connect(settings.redis_url)
    r.delete(*r.keys("mimochat:wechat:*") or ["none"])
    with pytest.raises(WeChatAPIError) as err:
        WeChatAPI(bad, r).send_text(user_with_window(base), "x")
    assert (err.value.code, err.value.transient) == (code, False)


def test_oversize_content_is_45002(live_sandbox) -> None:  # noqa: ANN001
    base, settings = live_sandbox
    with pytest.raises(WeChatAPIError) as err:
        WeChatAPI(settings, connect(settings.redis_url)).send_text(
            user_with_window(base), "字" * 1000
        )
    assert (err.value.code, err.value.transient) == (45002, False)


@pytest.mark.parametrize(("fault", "code"), [({"status": 502}, None), ({"errcode": -1}, -1)])
def test_server_failures_are_transient(live_sandbox, fault: dict, code: int | None) -> None:  # noqa: ANN001
    base, settings = live_sandbox
    api = WeChatAPI(settings, connect(settings.redis_url))
    api.send_text(user_with_window(base), "warm the token")
    requests.post(f"{base}/sandbox/wechat/faults", json=[fault], timeout=5).raise_for_status()
    with pytest.raises(WeChatAPIError) as err:
        api.send_text(user_with_window(base), "x")
    assert (err.value.code, err.value.transient) == (code, True)
