"""The JSON API over real HTTP: stats, doctor, simulator, URL verification, conversations."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from flask.testing import FlaskClient

from bot.channels.wecom import streams as wecom
from bot.channels.wecom.api import post_markdown
from bot.core import jobs
from bot.core.contracts import Answer
from bot.core.progress import ProgressWriter
from bot.core.settings import Settings
from bot.core.store import connect
from bot.pipeline import commands, moderation
from bot.pipeline.conversations import Conversations
from tests.conftest import Stack
from tests.helpers import ADMIN_TOKEN, make_job, unique

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def call(base: str, method: str, path: str, **kw) -> requests.Response:  # noqa: ANN003
    return requests.request(method, f"{base}/admin/api/{path}", headers=BEARER, timeout=30, **kw)


def test_stats_counts_a_job_in_flight_and_queue_depth(
    admin_client: FlaskClient, admin_settings: Settings
) -> None:
    client = connect(admin_settings.redis_url)
    before = admin_client.get("/admin/api/stats", headers=BEARER).get_json()
    jobs.record(client, unique("job"), "received", channel="wechat", user=unique(), text="q")
    client.rpush("io", "{}")  # a message waiting on the io queue (removed below)
    try:
        after = admin_client.get("/admin/api/stats", headers=BEARER).get_json()
    finally:
        client.rpop("io")
    assert after["in_flight"] == before["in_flight"] + 1
    assert after["in_flight_by_stage"]["queued"] == before["in_flight_by_stage"]["queued"] + 1
    assert after["queues"]["io"] == before["queues"]["io"] + 1
    assert set(after) >= {"answers_per_minute", "time_to_answer", "errors", "workers"}


def test_doctor_over_the_api(live_admin: tuple[str, Settings]) -> None:
    base, _ = live_admin
    res = call(base, "GET", "doctor", params={"url": f"{base}/wechat"})
    assert res.status_code == 200
    checks = {c["name"]: c for c in res.json()["checks"]}
    assert checks["access token"]["ok"], checks["access token"]
    assert checks["webhook URL"]["ok"], checks["webhook URL"]
    assert not checks["workers: gpu"]["ok"]  # nothing consumes db 1
    assert res.json()["ok"] is False
    assert ADMIN_TOKEN not in res.text


@pytest.mark.parametrize("channel", ["wechat_aes", "wechat_plain"])
def test_simulate_builds_the_real_request_and_finds_the_job(
    live_admin: tuple[str, Settings], channel: str
) -> None:
    base, settings = live_admin
    user = unique()
    res = call(base, "POST", "simulate", json={"channel": channel, "user": user, "text": "2+2?"})
    assert res.status_code == 200, res.text
    sim = res.json()
    assert sim["ok"] and sim["job_id"], sim
    assert [a["status"] for a in sim["attempts"]] == [200]
    assert sim["url"] == f"{base}/wechat"
    assert "customer-service" in sim["verdict"]
    view = call(base, "GET", f"simulate/{sim['job_id']}").json()
    assert view["user"] == user and view["question"] == "2+2?"
    assert [row["stage"] for row in view["timeline"]] == ["webhook", "received"]
    assert view["progress"]["state"] == "queued"
    assert view["messages"] == []  # the sandbox outbox is read, nothing delivered yet
    queued = jobs.get(connect(settings.redis_url), sim["job_id"])
    assert queued["msg_id"] == sim["msg_id"]


def test_simulate_shows_a_passive_reply(live_admin: tuple[str, Settings]) -> None:
    base, _ = live_admin
    sim = call(base, "POST", "simulate", json={"user": unique(), "text": "/help"}).json()
    assert sim["passive_reply"] == commands.HELP_TEXT
    assert sim["job_id"] is None
    assert "passive reply" in sim["verdict"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"channel": "telegram", "user": "u", "text": "t"}, "unknown channel"),
        ({"channel": "wecom_group", "user": "u", "text": ""}, "a user id and a message"),
        ({"channel": "wecom_single", "user": "u", "text": "t", "refreshes": -1}, "refreshes"),
        ({"channel": "wecom_single", "user": "u", "text": "t", "refreshes": True}, "refreshes"),
        ({"user": "u", "text": ""}, "a user id and a message"),
        ({"user": "u", "text": "t", "url": "ftp://example.invalid/wechat"}, "not an http(s) URL"),
    ],
)
def test_simulate_refuses_what_it_cannot_build(
    admin_client: FlaskClient, body: dict, error: str
) -> None:
    res = admin_client.post("/admin/api/simulate", json=body, headers=BEARER)
    assert res.status_code == 400
    assert error in res.get_json()["error"]


def test_unknown_job_is_404(admin_client: FlaskClient) -> None:
    res = admin_client.get("/admin/api/simulate/nope", headers=BEARER)
    assert res.status_code == 404 and res.is_json


def test_verify_url_against_the_webhook(live_admin: tuple[str, Settings]) -> None:
    base, _ = live_admin
    good = call(base, "POST", "verify-url", json={"url": f"{base}/wechat"}).json()
    assert good["ok"] and good["body"] == good["echostr"]
    assert len(good["signature"]) == 40
    bad = call(base, "POST", "verify-url", json={"url": f"{base}/wechat", "token": "whatItyped"})
    assert bad.json()["status"] == 403 and not bad.json()["ok"]
    assert "token" in bad.json()["diagnosis"]
    assert "whatItyped" not in bad.text


def test_conversations_search_open_reset_block(
    live_admin: tuple[str, Settings],
) -> None:
    base, settings = live_admin
    client = connect(settings.redis_url)
    user = unique("o_search")
    job_id = unique("job")
    jobs.record(client, job_id, "received", channel="wechat", user=user, text="hello there")
    job = make_job(user, "hello there").model_copy(update={"job_id": job_id})
    Conversations(client, 3600, 10).record(
        job, Answer(job=job, answer="hi!", reasoning="they greet me")
    )
    rows = call(base, "GET", "conversations", params={"user": user[-8:]}).json()["conversations"]
    assert [r["user"] for r in rows] == [user]
    opened = call(base, "GET", f"conversations/wechat/{user}").json()
    assert [m["content"] for m in opened["history"]] == ["hello there", "hi!"]
    assert opened["history"][1]["reasoning"] == "they greet me"
    assert call(base, "POST", "conversations/reset", json={"user": user}).json()["reset"]
    assert call(base, "GET", f"conversations/wechat/{user}").json()["history"] == []
    assert call(base, "POST", "conversations/block", json={"user": user}).json()["blocked"]
    assert moderation.is_blocked(client, "wechat", user)
    rows = call(base, "GET", "conversations", params={"user": user}).json()["conversations"]
    assert rows[0]["blocked"] is True
    # The blocked user's next message gets the polite notice and no job.
    sim = call(base, "POST", "simulate", json={"user": user, "text": "hello?"}).json()
    assert sim["passive_reply"] == moderation.BLOCKED_TEXT and sim["job_id"] is None
    call(base, "POST", "conversations/block", json={"user": user, "blocked": False})
    assert not moderation.is_blocked(client, "wechat", user)


def test_reset_and_block_need_a_user(admin_client: FlaskClient) -> None:
    for path in ("conversations/reset", "conversations/block"):
        res = admin_client.post(f"/admin/api/{path}", json={}, headers=BEARER)
        assert res.status_code == 400


def test_redis_down_is_503_json(admin_settings: Settings) -> None:
    from webhooks.app import create_app

    app = create_app(admin_settings.replace(redis_url="redis://127.0.0.1:1/0"))
    res = app.test_client().get("/admin/api/stats", headers=BEARER)
    assert res.status_code == 503
    assert "Redis" in res.get_json()["error"]


@pytest.fixture
def passive_stack(
    admin_on_stack: tuple[str, Settings], stack: Stack
) -> Iterator[tuple[str, Stack]]:
    """The console on the live stack, the account switched to passive replies (as after 48001)."""
    flag = f"mimochat:wechat:passive-only:{stack.settings.wechat_app_id}"
    stack.redis.set(flag, "1")
    try:
        yield admin_on_stack[0], stack
    finally:
        stack.redis.delete(flag)
        requests.post(f"{stack.url}/sandbox/wechat/engine", json={"delay": 0}, timeout=5)


@pytest.mark.integration
def test_simulator_shows_the_passive_reply(passive_stack: tuple[str, Stack]) -> None:
    base, _stack = passive_stack
    sim = call(base, "POST", "simulate", json={"user": unique(), "text": "quick one"}).json()
    assert sim["ok"] and sim["passive_reply"], sim
    assert "passive reply after" in sim["verdict"]
    view = call(base, "GET", f"simulate/{sim['job_id']}").json()
    assert view["done"] and view["delivered_via"] == "next_message"
    assert view["answer"]  # the model's answer, formatted for WeChat in the passive reply
    assert sim["passive_reply"] != commands.STILL_THINKING_TEXT


@pytest.mark.integration
def test_simulator_retries_like_wechat_when_the_answer_is_slow(
    passive_stack: tuple[str, Stack],
) -> None:
    """Injected: 6 s of generation delay; WeChat's timeout is 2 s in the stack's settings.

    Counted: the first tries time out and are sent again (same MsgId, one job); the last try
    gets the honest notice as its passive reply.
    """
    base, stack = passive_stack
    requests.post(f"{stack.url}/sandbox/wechat/engine", json={"delay": 6}, timeout=5)
    user = unique()
    sim = call(base, "POST", "simulate", json={"user": user, "text": "slow one"}).json()
    attempts = stack.settings.wechat_attempts
    assert [a["outcome"] for a in sim["attempts"]] == ["timeout"] * (attempts - 1) + ["answered"]
    assert sim["passive_reply"] == commands.STILL_THINKING_TEXT
    assert f"after {attempts - 1} retries" in sim["verdict"]
    assert len([j for j in jobs.recent(stack.redis, 100) if j.get("user") == user]) == 1
    view = call(base, "GET", f"simulate/{sim['job_id']}").json()
    assert "notice" in [row["stage"] for row in view["timeline"]]


# --- WeCom robot channels ---


def wait_view(base: str, sim_id: str, timeout: float = 60.0) -> dict:
    """The simulation's view once the page would stop polling (done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = call(base, "GET", f"simulate/{sim_id}").json()
        if view["done"]:
            return view
        time.sleep(0.2)
    raise AssertionError(f"simulation {sim_id} not done in {timeout}s: {view}")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("channel", "public"),
    [("wecom_single", False), ("wecom_group", False), ("wecom_group", True)],
    ids=["single", "group", "group-public-url"],
)
def test_wecom_simulation_streams_the_answer(
    admin_on_stack: tuple[str, Settings], stack: Stack, channel: str, public: bool
) -> None:
    """The console plays WeCom against /wecom (its own, or the stack's as a "public URL"):
    encrypted callback, @mention in a group, stream refreshes until the answer is finished."""
    base, _ = admin_on_stack
    user, group = unique("zhang"), unique("g") if channel == "wecom_group" else ""
    body = {"channel": channel, "user": user, "text": "What is 2+2?", "chat_id": group}
    if public:
        body["url"] = f"{stack.url}/wecom"
    sim = call(base, "POST", "simulate", json=body).json()
    assert sim["ok"] and sim["sim_id"] and sim["job_id"], sim
    assert sim["url"] == body.get("url", f"{base}/wecom")
    assert sim["reply"]["msgtype"] == "stream" and not sim["reply"]["stream"]["finish"]
    assert "stream started" in sim["verdict"]
    view = wait_view(base, sim["sim_id"])

    record = jobs.get(stack.redis, sim["job_id"])
    assert record["text"] == "What is 2+2?"  # the robot stripped the @mention
    assert record.get("chat_id", "") == group
    said = view["chat"]["events"][0]
    assert said["text"] == ("@MiMo What is 2+2?" if group else "What is 2+2?")
    stream = view["chat"]["stream"]
    assert stream["finish"] and not stream["handed_over"]
    assert stream["versions"][0]["refresh"] == 0 and not stream["versions"][0]["finish"]
    assert view["chat"]["refreshes"] >= 1 and view["chat"]["loop"] == "finished"
    assert view["delivered_via"] == "stream" and view["chat"]["response_url"] is None
    # What the chat shows is the stored answer, the asker quoted in a group.
    assert stream["answer"].strip() == view["answer"].strip()
    assert (stream["asker"], stream["question"]) == ((user, "What is 2+2?") if group else ("", ""))
    assert stream["reasoning"] == (view["reasoning"] or "").strip()
    stages = [row["stage"] for row in view["timeline"]]
    for stage in ("webhook", "received", "started", "generated", "delivered", "stream end"):
        assert stage in stages, stages
    delivered = next(r for r in view["timeline"] if r["stage"] == "delivered")
    assert "stream refresh" in delivered["detail"]
    generated = next(r for r in view["timeline"] if r["stage"] == "generated")
    assert "reasoning +" in generated["detail"] and "answer tokens" in generated["detail"]


def test_wecom_answer_after_the_stream_arrives_by_response_url(
    live_admin: tuple[str, Settings],
) -> None:
    """No worker on db 1: the answer is planted as generation would leave it, refreshes stop at
    once, and the robot's own check posts it (over HTTP) to the response_url the console gave."""
    base, settings = live_admin
    client = connect(settings.redis_url)
    body = {"channel": "wecom_group", "user": unique("li"), "text": "late?", "refreshes": 0}
    sim = call(base, "POST", "simulate", json=body).json()
    assert sim["ok"] and sim["job_id"], sim
    ProgressWriter(client, sim["job_id"]).finish("It is 4.", "two and two")
    outcome = wecom.check_stream(
        sim["stream_id"], settings=settings, client=client, post=post_markdown
    )
    assert outcome == "posted"
    view = wait_view(base, sim["sim_id"], timeout=10)
    late = view["chat"]["response_url"]
    assert (late["asker"], late["question"], late["answer"]) == (body["user"], "late?", "It is 4.")
    assert view["delivered_via"] == "response_url"
    stages = {row["stage"]: row for row in view["timeline"]}
    assert "response_url" in stages["delivered"]["detail"]
    assert not stages["refreshes"]["ok"]  # WeCom stopped refreshing: why the late route
    assert view["chat"]["stream"]["answer"] == ""  # the group saw only "Thinking…" streamed
    # The response_url works once, as WeCom's does.
    response_url = wecom.Streams(client).get(sim["stream_id"])["response_url"]
    assert response_url.startswith(f"{base}/admin/api/wecom/response?response_code=")
    markdown = {"msgtype": "markdown", "markdown": {"content": "twice"}}
    again = requests.post(response_url, json=markdown, timeout=5).json()
    assert again["errcode"] == 40058
