"""The console's Guards view: who is rate-limited, what safety decided, lifting a limit."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from bot.core.settings import Settings
from bot.pipeline import guards
from tests.helpers import ADMIN_TOKEN, unique
from tests.webhooks.admin.conftest import Browser

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def admin_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The console on, one question a minute per person, one refuse list."""
    (tmp_path / "refuse.txt").write_text("forbidden\n", encoding="utf-8")
    return settings.replace(
        admin_token=ADMIN_TOKEN,
        rate_limit_user="1/minute",
        safety_lists=f"refuse:{tmp_path / 'refuse.txt'}",
    )


@pytest.fixture
def decided(admin_settings: Settings, redis_client: redis.Redis) -> dict[str, str]:
    """One person limited and one question refused for its content."""
    limited, refused = unique(), unique()
    for _ in range(2):
        guards.check_question(
            admin_settings, redis_client, channel="wechat", user=limited, text="q"
        )
    verdict = guards.check_question(
        admin_settings, redis_client, channel="wechat", user=refused, text="so forbidden"
    )
    assert verdict is not None
    return {"limited": limited, "refused": refused}


@pytest.mark.parametrize(
    ("field", "who_key", "expect"),
    [
        ("limited", "limited", "1 per 1 minute"),
        ("decisions", "refused", "refuse:refuse.txt:forbidden"),
        ("decisions", "limited", "user:1 per 1 minute"),
    ],
)
def test_api_lists_limits_and_decisions(
    admin_client: FlaskClient, decided: dict[str, str], field: str, who_key: str, expect: str
) -> None:
    body = admin_client.get("/admin/api/guards", headers=AUTH).get_json()
    rows = [r for r in body[field] if decided[who_key] in (r.get("who"), r.get("user"))]
    assert rows and expect in (rows[0].get("limit") or rows[0].get("rule"))
    assert body["limits"]["user"] == "1/minute" and body["safety"]["terms"] == 1


def test_page_shows_them_and_lift_frees_the_person(
    logged_in: Browser, decided: dict[str, str], admin_settings: Settings, redis_client: redis.Redis
) -> None:
    page = logged_in.client.get("/admin/guards").get_data(as_text=True)
    assert decided["limited"] in page and "refuse:refuse.txt:forbidden" in page
    res = logged_in.client.post(
        "/admin/guards/lift",
        data={
            "channel": "wechat",
            "scope": "user",
            "who": decided["limited"],
            "csrf_token": logged_in.csrf,
        },
    )
    assert res.status_code == 302
    page = logged_in.client.get("/admin/guards").get_data(as_text=True)
    assert decided["limited"] not in page.split("Decisions")[0]  # off "Limited now"
    again = guards.check_question(
        admin_settings, redis_client, channel="wechat", user=decided["limited"], text="q"
    )
    assert again is None


def test_lift_needs_the_csrf_token(logged_in: Browser, decided: dict[str, str]) -> None:
    res = logged_in.client.post(
        "/admin/guards/lift", data={"channel": "wechat", "scope": "user", "who": decided["limited"]}
    )
    assert res.status_code in (400, 403)


@pytest.mark.parametrize("limit", ["x", "-1", "0", "99999", "1"])
def test_api_limit_is_parsed_safely(admin_client: FlaskClient, limit: str) -> None:
    res = admin_client.get(f"/admin/api/guards?limit={limit}", headers=AUTH)
    assert res.status_code == 200 and "decisions" in res.get_json()
