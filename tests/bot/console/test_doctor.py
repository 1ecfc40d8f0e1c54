"""The doctor names each common misconfiguration in plain words (planted one at a time)."""

from __future__ import annotations

import pytest
import redis
import requests

from bot.channels.wechat.api import WeChatAPI
from bot.console import doctor
from bot.console.doctor import Check, run_checks, settings_checks, wecom_checks, worker_checks
from bot.core.settings import Settings
from tests.conftest import Stack
from tests.helpers import WECOM_AES_KEY, WECOM_TOKEN, free_port


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_good_settings_pass(settings: Settings) -> None:
    checks = settings_checks(settings.replace(admin_token="x" * 24))
    assert [c for c in checks if not c.ok] == []


@pytest.mark.parametrize(
    ("changes", "name", "phrase"),
    [
        (
            {"wechat_aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF"},
            "WECHAT_AES_KEY",
            "must be 43 characters, got 42",
        ),
        (
            {"wechat_aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF!"},
            "WECHAT_AES_KEY",
            "is not base64",
        ),
        (
            {"wechat_token": "my token!"},
            "WECHAT_TOKEN",
            "only letters and digits; it contains ' ' '!'",
        ),
        ({"wechat_token": "ab"}, "WECHAT_TOKEN", "must be 3-32 characters, got 2"),
        ({"wechat_token": ""}, "WECHAT_TOKEN", "missing"),
        ({"wechat_app_id": "wx123"}, "WECHAT_APP_ID", "wx followed by 16 hex characters"),
        (
            {"wechat_app_id": "WX00112233445566FF"},
            "WECHAT_APP_ID",
            "wx followed by 16 hex characters",
        ),
        ({"wechat_app_id": ""}, "WECHAT_APP_ID", "missing"),
        ({"wechat_app_secret": ""}, "WECHAT_APP_SECRET", "missing"),
        ({"wechat_reply_mode": "push"}, "WECHAT_REPLY_MODE", "must be one of auto"),
        ({"wechat_api_base": "api.weixin.qq.com"}, "WECHAT_API_BASE", "http(s) URL"),
        ({"admin_token": "short"}, "ADMIN_TOKEN", "too short"),
        ({"backend": "vllm"}, "MIMOCHAT_BACKEND", "must be one of"),
        ({"wecom_bot_aes_key": "tooshort"}, "WECOM_BOT_AES_KEY", "must be 43 characters"),
    ],
)
def test_each_malformed_setting_is_named(
    settings: Settings, changes: dict, name: str, phrase: str
) -> None:
    checks = settings_checks(settings.replace(**changes))
    failed = [c for c in checks if not c.ok]
    assert [c.name for c in failed] == [name]
    assert phrase in failed[0].detail
    assert failed[0].detail.startswith(name)  # the message itself names the setting


def test_redis_down_is_named_and_the_rest_skipped(settings: Settings) -> None:
    down = settings.replace(redis_url=f"redis://:hunter22@127.0.0.1:{free_port()}/0")
    checks = by_name(run_checks(down))
    assert not checks["redis"].ok
    assert "cannot reach REDIS_URL" in checks["redis"].detail
    assert "hunter22" not in checks["redis"].detail
    for name in ("workers: gpu", "workers: io", "model", "access token"):
        assert checks[name].skipped and "Redis" in checks[name].detail


def test_no_worker_is_named(live_sandbox: tuple[str, Settings], redis_client: redis.Redis) -> None:
    _, served = live_sandbox  # database 1: no worker writes heartbeats there
    checks = by_name(run_checks(served, client=redis_client))
    assert not checks["workers: gpu"].ok
    assert "no worker is consuming the gpu queue" in checks["workers: gpu"].detail
    assert "no worker is consuming the io queue" in checks["workers: io"].detail
    assert "no worker serves the gpu queue" in checks["model"].detail


def _forget_token(settings: Settings, client: redis.Redis) -> None:
    api = WeChatAPI(settings, client)
    api.client.session.delete(api.client.access_token_key)


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"wechat_app_id": "wx99999999999999aa"}, "40013: WECHAT_APP_ID is not a valid AppID"),
        ({"wechat_app_secret": "wrong-secret"}, "40125: WECHAT_APP_SECRET is wrong"),
    ],
)
def test_wrong_app_id_or_secret_against_the_sandbox(
    live_sandbox: tuple[str, Settings], redis_client: redis.Redis, changes: dict, phrase: str
) -> None:
    _, served = live_sandbox
    planted = served.replace(**changes)
    _forget_token(planted, redis_client)
    checks = by_name(run_checks(planted, client=redis_client))
    assert not checks["access token"].ok
    assert phrase in checks["access token"].detail


def test_ip_not_whitelisted(live_sandbox: tuple[str, Settings], redis_client: redis.Redis) -> None:
    base, served = live_sandbox
    _forget_token(served, redis_client)
    switch = f"{base}/sandbox/wechat/ip-whitelist"
    requests.post(switch, json={"listed": False}, timeout=5).raise_for_status()
    try:
        checks = by_name(run_checks(served, client=redis_client))
    finally:
        requests.post(switch, json={"listed": True}, timeout=5).raise_for_status()
    detail = checks["access token"].detail
    assert not checks["access token"].ok
    assert "40164" in detail and "IP whitelist" in detail and "127.0.0.1" in detail
    assert by_name(run_checks(served, client=redis_client))["access token"].ok


def test_access_token_obtained(
    live_sandbox: tuple[str, Settings], redis_client: redis.Redis
) -> None:
    _, served = live_sandbox
    _forget_token(served, redis_client)
    first = by_name(run_checks(served, client=redis_client))["access token"]
    again = by_name(run_checks(served, client=redis_client))["access token"]
    assert (first.ok, first.detail) == (True, "obtained and shared in Redis")
    assert again.ok and "shared in Redis" in again.detail  # reused: no fetch that invalidates it


def test_wrong_token_fails_url_verification(
    live_sandbox: tuple[str, Settings], redis_client: redis.Redis
) -> None:
    base, served = live_sandbox
    right = by_name(run_checks(served, client=redis_client, webhook_url=f"{base}/wechat"))
    assert right["webhook URL"].ok
    planted = served.replace(wechat_token="notTheWebhooksToken")
    checks = by_name(run_checks(planted, client=redis_client, webhook_url=f"{base}/wechat"))
    assert not checks["webhook URL"].ok
    assert "WECHAT_TOKEN differs" in checks["webhook URL"].detail
    assert "notTheWebhooksToken" not in checks["webhook URL"].detail


GPU_READY = {
    "hostname": "gpu1@h",
    "queues": ["gpu"],
    "state": "ready",
    "engine": {
        "engine": "transformers",
        "model": "XiaomiMiMo/MiMo-7B-RL",
        "device": "cuda:0",
        "dtype": "bfloat16",
        "weight_bytes": 15_300_000_000,
        "cuda": {"name": "H100", "total_bytes": 80_000_000_000, "reserved_bytes": 21_000_000_000},
    },
}
IO_READY = {"hostname": "io1@h", "queues": ["io"], "state": "ready", "engine": {}}


@pytest.mark.parametrize(
    ("online", "failing", "model_phrase"),
    [
        ([], {"workers: gpu", "workers: io", "model"}, "no worker serves the gpu queue"),
        ([IO_READY], {"workers: gpu", "model"}, "no worker serves the gpu queue"),
        ([{**GPU_READY, "state": "loading"}, IO_READY], {"model"}, "still loading on gpu1@h"),
        (
            [GPU_READY, IO_READY],
            set(),
            "XiaomiMiMo/MiMo-7B-RL on cuda:0 (bfloat16), 15.3 GB of weights, H100: 21.0 GB of 80.0 GB",
        ),
    ],
)
def test_worker_checks(settings: Settings, online: list, failing: set, model_phrase: str) -> None:
    checks = by_name(worker_checks(settings.replace(model="XiaomiMiMo/MiMo-7B-RL"), online))
    assert {n for n, c in checks.items() if not c.ok} == failing
    assert model_phrase in checks["model"].detail


@pytest.mark.integration
def test_live_worker_and_model_seen(stack: Stack) -> None:
    checks = by_name(run_checks(stack.settings, client=stack.redis))
    assert checks["workers: gpu"].ok and checks["workers: io"].ok, checks
    assert checks["model"].ok
    assert "tiny on cpu (float32)" in checks["model"].detail
    assert checks["access token"].ok


@pytest.mark.parametrize(
    ("mode", "passive_only", "phrase"),
    [
        ("passive", False, "webhook's reply"),
        ("customer_service", False, "verified"),
        ("auto", False, "in effect now: customer service"),
        ("auto", True, "in effect now: passive (WeChat answered 48001"),
    ],
)
def test_reply_mode_in_effect(
    settings: Settings, redis_client: redis.Redis, mode: str, passive_only: bool, phrase: str
) -> None:
    planted = settings.replace(wechat_reply_mode=mode, wechat_app_id="wx" + "0" * 14 + "ab")
    flag = f"mimochat:wechat:passive-only:{planted.wechat_app_id}"
    if passive_only:
        redis_client.set(flag, "1")
    try:
        assert phrase in doctor.reply_mode_check(planted, redis_client).detail
    finally:
        redis_client.delete(flag)


@pytest.mark.parametrize(
    ("changes", "failing"),
    [
        ({}, set()),
        ({"wecom_bot_token": "", "wecom_bot_aes_key": ""}, set()),
        ({"wecom_bot_token": "no spaces allowed"}, {"WECOM_BOT_TOKEN"}),
        ({"wecom_bot_aes_key": "short"}, {"WECOM_BOT_AES_KEY"}),
        ({"wecom_session_scope": "everyone"}, {"WECOM_SESSION_SCOPE"}),
    ],
)
def test_wecom_robot_settings(changes: dict, failing: set) -> None:
    s = Settings(wecom_bot_token=WECOM_TOKEN, wecom_bot_aes_key=WECOM_AES_KEY).replace(**changes)
    results = [c for c in settings_checks(s) + wecom_checks(s) if c.name.startswith("WECOM")]
    assert {c.name for c in results if not c.ok} == failing
    assert all(WECOM_AES_KEY not in c.detail for c in results)
