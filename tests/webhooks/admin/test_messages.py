"""The console's Messages view: ledger records by state (stuck, parked, apologized) with reasons."""

from __future__ import annotations

import pytest
import redis
from flask.testing import FlaskClient

from bot.pipeline.ledger import Ledger
from tests.helpers import ADMIN_TOKEN, make_job, unique
from tests.webhooks.admin.conftest import Browser

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def records(redis_client: redis.Redis) -> dict[str, str]:
    """One message in each interesting state, with the reason the ledger gave."""
    ledger = Ledger(redis_client)
    keys = {}
    for state, fields in (
        ("parked", {"parked_because": "45015: the user's 48-hour reply window has closed"}),
        ("apologized", {"reason": "generation failed: RuntimeError"}),
        ("generating", {"worker": f"{unique('gone@')}:1"}),  # no heartbeat: stuck
    ):
        job = make_job(unique())
        ledger.claim(job.key, user=job.user, channel="wechat", job_id=job.job_id)
        ledger.move(job.key, state, **fields)
        keys[state] = job.key
    return keys


@pytest.mark.parametrize(
    ("view", "state", "reason"),
    [
        ("parked", "parked", "45015"),
        ("apologized", "apologized", "RuntimeError"),
        ("stuck", "generating", ""),
    ],
)
def test_api_lists_records_by_state_with_their_reason(
    admin_client: FlaskClient, records: dict[str, str], view: str, state: str, reason: str
) -> None:
    res = admin_client.get(f"/admin/api/messages?state={view}", headers=AUTH)
    assert res.status_code == 200
    body = res.get_json()
    [row] = [r for r in body["records"] if r["key"] == records[state]]
    assert row["state"] == state and reason in row["reason"]
    assert body["counts"][view] >= 1


def test_unknown_state_is_a_400(admin_client: FlaskClient) -> None:
    res = admin_client.get("/admin/api/messages?state=lost", headers=AUTH)
    assert res.status_code == 400 and "stuck" in res.get_json()["error"]


def test_the_page_shows_stuck_messages(logged_in: Browser, records: dict[str, str]) -> None:
    page = logged_in.client.get("/admin/messages?state=stuck").get_data(as_text=True)
    assert records["generating"] in page and "Messages" in page
    parked = logged_in.client.get("/admin/messages?state=parked").get_data(as_text=True)
    assert "48-hour reply window" in parked
