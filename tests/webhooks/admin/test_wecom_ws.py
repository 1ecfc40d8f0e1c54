"""The console's "WeCom robot — long connection" channel against a real fake WeCom WebSocket
server and a real connector: the @mention goes over the WebSocket, the view shows the frames."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from bot.channels.wecom import ws_simulator
from bot.channels.wecom.streams import HANDOVER_NOTE
from bot.cli import running
from bot.core.progress import ProgressWriter
from bot.core.settings import Settings
from bot.core.store import connect
from tests.bot.channels.wecom.ws_live import answer, live_connector
from tests.helpers import ADMIN_TOKEN, unique
from webhooks.app import create_app

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def console(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def offered(client: FlaskClient) -> dict[str, Any]:
    channels = client.get("/admin/api/channels", headers=BEARER).get_json()["channels"]
    return next(c for c in channels if c["name"] == ws_simulator.NAME)


def view_of(client: FlaskClient, sim_id: str) -> dict[str, Any]:
    res = client.get(f"/admin/api/simulate/{sim_id}", headers=BEARER)
    assert res.status_code == 200
    return res.get_json()


def wait_view(client: FlaskClient, sim_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The simulation's view once the page would stop polling (done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = view_of(client, sim_id)
        if view["done"]:
            return view
        time.sleep(0.1)
    raise AssertionError(f"simulation {sim_id} not done in {timeout}s: {view}")


@pytest.mark.parametrize(
    "ws_url",
    ["wss://openws.work.weixin.qq.com", "ws://127.0.0.1:9"],  # WeCom's own (never probed); closed
    ids=["wecom", "nothing-listening"],
)
def test_without_a_fake_the_channel_says_how_to_get_one(
    admin_settings: Settings, ws_url: str
) -> None:
    client = console(admin_settings.replace(wecom_ws_url=ws_url))
    channel = offered(client)
    assert not channel["available"]
    assert "mimochat demo" in channel["note"] and "WECOM_WS_URL" in channel["note"]
    body = {"channel": ws_simulator.NAME, "user": "u", "text": "hi"}
    res = client.post("/admin/api/simulate", json=body, headers=BEARER)
    assert res.status_code == 400
    assert "mimochat demo" in res.get_json()["error"]
    page = client.get("/admin/simulator").status_code  # logged out: redirected, never a 500
    assert page in (200, 302)


def test_a_group_mention_shows_the_stream_frames_the_connector_pushed(
    admin_settings: Settings,
) -> None:
    redis_client = connect(admin_settings.redis_url)
    with live_connector(admin_settings, redis_client) as live:
        client = console(live.settings)
        assert offered(client)["available"]
        user, group = unique("zhang"), unique("g")
        body = {"channel": ws_simulator.NAME, "user": user, "text": "What is 2+2?"}
        res = client.post("/admin/api/simulate", json={**body, "chat_id": group}, headers=BEARER)
        assert res.status_code == 200, res.get_json()
        sim = res.get_json()
        assert sim["ok"] and sim["sim_id"] and sim["text"] == "@MiMo What is 2+2?"
        job = live.job()
        assert job.text == "What is 2+2?"  # the connector stripped the @mention
        answer(redis_client, job, "Two and two make four.")
        view = wait_view(client, sim["sim_id"])
    assert view["kind"] == ws_simulator.NAME and not view["error"]
    (stream,) = view["streams"]
    assert stream["finished"] and not stream["handed_over"] and view["pushed"] == []
    assert (stream["asker"], stream["question"]) == (user, "What is 2+2?")
    assert stream["answer"].strip() == "Two and two make four."
    assert len(stream["frames"]) >= 2 and stream["frames"][-1] == len(stream["content"])
    stages = [row["stage"] for row in view["timeline"]]
    assert stages[0] == "callback" and f"stream frame {len(stream['frames'])}" in stages
    assert view["timeline"][-1]["detail"].endswith("finish")


def test_a_running_demos_fake_is_found_through_its_file(
    admin_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A console whose own WECOM_WS_URL is WeCom's finds the demo's fake via ~/.cache/mimochat."""
    monkeypatch.setenv("HOME", str(tmp_path))
    redis_client = connect(admin_settings.redis_url)
    with live_connector(admin_settings, redis_client) as live:
        demo = running.record("127.0.0.1", 8125, tmp_path, "", live.settings.wecom_ws_url)
        client = console(live.settings.replace(wecom_ws_url="wss://openws.work.weixin.qq.com"))
        assert offered(client)["available"]
        body = {"channel": ws_simulator.NAME, "user": unique("wu"), "text": "hello"}
        res = client.post("/admin/api/simulate", json=body, headers=BEARER)
        assert res.status_code == 200, res.get_json()
        assert live.job().text == "hello"
        running.forget(demo)
    assert not offered(client)["available"]


def test_an_answer_past_the_window_shows_the_send_msg_push(admin_settings: Settings) -> None:
    redis_client = connect(admin_settings.redis_url)
    with live_connector(admin_settings, redis_client, wecom_stream_window=0.5) as live:
        client = console(live.settings)
        body = {"channel": ws_simulator.NAME, "user": unique("li"), "text": "slow one"}
        sim = client.post("/admin/api/simulate", json=body, headers=BEARER).get_json()
        job = live.job()
        deadline = time.monotonic() + 10
        # The stream shows once the connector's first frame went out (after the job is queued).
        while not [s for s in view_of(client, sim["sim_id"])["streams"] if s["handed_over"]]:
            assert time.monotonic() < deadline, "the stream was not handed over"
            time.sleep(0.1)
        ProgressWriter(redis_client, job.job_id, min_interval=0).finish("The whole answer.", "")
        view = wait_view(client, sim["sim_id"])
    (stream,) = view["streams"]
    assert stream["content"].rstrip().endswith(HANDOVER_NOTE)
    (pushed,) = view["pushed"]
    assert "The whole answer." in pushed["content"]
    assert view["timeline"][-1]["stage"] == "push 1"
