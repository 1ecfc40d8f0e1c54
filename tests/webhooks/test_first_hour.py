"""What a new operator reads from the web: Chinese as Chinese, □ for control characters, and a
`/metrics` that publishes only what this process can know."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from bot.core import metrics
from tests.helpers import APP_ID, APP_SECRET, unique

PREFIX = "/sandbox/wechat"
CREDENTIALS = {"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("思考一下", "思考一下"),
        ("bell\x07 and nul\x00", "bell□ and nul□"),
        ("esc\x1b[31mred", "esc□[31mred"),
        ("c1\x9f del\x7f", "c1□ del□"),
        ("tab\tand\nlines\r\n", "tab\tand\nlines\r\n"),
    ],
)
def test_outbox_json_is_readable(client: FlaskClient, sent: str, shown: str) -> None:
    token = client.get(f"{PREFIX}/cgi-bin/token", query_string=CREDENTIALS).get_json()
    user = unique()
    client.post(f"{PREFIX}/window", json={"user": user})
    send = f"{PREFIX}/cgi-bin/message/custom/send?access_token={token['access_token']}"
    message = {"touser": user, "msgtype": "text", "text": {"content": sent}}
    assert client.post(send, json=message).get_json()["errcode"] == 0
    res = client.get(f"{PREFIX}/outbox", query_string={"touser": user})
    raw = res.get_data(as_text=True)
    assert "\\u" not in raw  # Chinese as Chinese; no control character left to escape
    assert [m["content"] for m in res.get_json()] == [shown]


def test_web_metrics_leave_out_worker_only_series(client: FlaskClient) -> None:
    res = client.get("/metrics")
    names = {family.name for family in text_string_to_metric_families(res.get_data(as_text=True))}
    # What the web does know: its own webhook calls and the figures it reads from Redis.
    assert "mimochat_redis_up" in names and "mimochat_queue_depth" in names
    assert "mimochat_webhook_request_seconds" in names
    leaked = names & {n.removesuffix("_total") for n in metrics.WORKER_ONLY}
    assert not leaked, f"worker-only series published by the web as zeros: {sorted(leaked)}"
