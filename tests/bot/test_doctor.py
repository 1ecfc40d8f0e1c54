"""`mimochat doctor`: the WeCom robot's settings are checked when it is configured."""

from __future__ import annotations

import pytest

from bot.doctor import wecom_checks
from bot.settings import Settings
from tests.helpers import WECOM_AES_KEY, WECOM_TOKEN


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
def test_wecom_checks(changes: dict, failing: set) -> None:
    s = Settings(wecom_bot_token=WECOM_TOKEN, wecom_bot_aes_key=WECOM_AES_KEY).replace(**changes)
    results = wecom_checks(s)
    assert {c.name for c in results if not c.ok} == failing
    assert all(WECOM_AES_KEY not in c.detail for c in results)
