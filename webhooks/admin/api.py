"""The console's JSON API under /admin/api (Bearer token or login session + CSRF header)."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Blueprint, jsonify, request, url_for
from werkzeug.exceptions import HTTPException

from bot.channels.untrusted import load_json
from bot.channels.wechat import simulator
from bot.channels.wecom import sandbox as sandbox_wecom
from bot.channels.wecom import simulator as simulator_wecom
from bot.channels.wecom import ws_simulator
from bot.console import admin, doctor, messages, stats
from bot.core.store import Unavailable
from webhooks.admin.auth import OFF_TEXT, api_auth, console_on
from webhooks.services import services

bp = Blueprint("admin_api", __name__, url_prefix="/admin/api")
log = logging.getLogger(__name__)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):  # noqa: ANN201
    """JSON errors for scripts."""
    return jsonify(error=exc.description or exc.name), exc.code or 500


@bp.errorhandler(redis.RedisError)
@bp.errorhandler(Unavailable)
def unavailable(exc: Exception):  # noqa: ANN201
    """Redis down: 503, never a stack trace."""
    log.error("admin api: redis unavailable (%s)", type(exc).__name__)
    return jsonify(error="Redis is unreachable; try again"), 503


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


def _text(data: dict[str, Any], name: str, limit: int = 2000) -> str:
    value = data.get(name, "")
    return value.strip()[:limit] if isinstance(value, str) else ""


def _local_webhook(channel: str = "wechat_plain") -> str:
    """This server's webhook for a simulator channel (/wechat or /wecom)."""
    spec = simulator.CHANNELS.get(channel)
    endpoint = "wecom.receive" if spec and spec.path == "/wecom" else "wechat.receive"
    return url_for(endpoint, _external=True)


@bp.get("/stats")
@api_auth
def get_stats():  # noqa: ANN201
    """Queue depth per queue, workers, jobs in flight, answers/min, p50/p95, errors by code."""
    return jsonify(stats.collect(services().redis))


@bp.get("/doctor")
@api_auth
def get_doctor():  # noqa: ANN201
    """Every setup check; `?url=` adds the URL-verification handshake against a webhook."""
    s = services()
    url = request.args.get("url", "").strip() or None
    checks = doctor.run_checks(s.settings, client=s.redis, webhook_url=url)
    return jsonify(ok=all(c.ok for c in checks), checks=[c.to_dict() for c in checks])


@bp.get("/channels")
@api_auth
def get_channels():  # noqa: ANN201
    """What the simulator can speak as."""
    long_connection = ws_simulator.channel(services().settings)
    return jsonify(
        channels=[*(vars(c) for c in simulator.CHANNELS.values()), vars(long_connection)],
        local_url=_local_webhook(),
        local_urls={name: _local_webhook(name) for name in simulator.CHANNELS},
    )


def _simulate_wecom_ws(data: dict[str, Any]):  # noqa: ANN202
    """A group @mention over the long connection, through the fake WeCom (see GET simulate/<id>)."""
    s = services()
    try:
        sim = ws_simulator.simulate(
            s.settings,
            s.redis,
            _text(data, "user", 128),
            _text(data, "text"),
            chat_id=_text(data, "chat_id", 128),
        )
    except simulator.SimulationError as exc:
        return jsonify(error=str(exc)), 400
    return jsonify(sim)


def _simulate_wecom(channel: str, data: dict[str, Any], url: str):  # noqa: ANN202
    """A WeCom message: sent now, its stream refreshed in the background (see GET simulate/<id>)."""
    s = services()
    refreshes = data.get("refreshes")
    if refreshes is not None and (
        isinstance(refreshes, bool) or not isinstance(refreshes, int) or refreshes < 0
    ):
        return jsonify(error="refreshes must be a non-negative integer"), 400
    try:
        sim = simulator_wecom.simulate(
            s.settings,
            s.redis,
            channel,
            _text(data, "user", 128),
            _text(data, "text"),
            url=url,
            sink=url_for("admin_api.wecom_response", _external=True),
            chat_id=_text(data, "chat_id", 128),
            refreshes=refreshes,
        )
    except simulator.SimulationError as exc:
        return jsonify(error=str(exc)), 400
    return jsonify(sim.to_dict())


@bp.post("/simulate")
@api_auth
def simulate():  # noqa: ANN201
    """Send one message as the platform would; returns the webhook's answer and the job id
    (WeCom: also the simulation's id, whose view shows the stream growing)."""
    s = services()
    data = _body()
    channel = _text(data, "channel", 40) or (
        "wechat_aes" if s.settings.encrypted else "wechat_plain"
    )
    if channel == ws_simulator.NAME:
        return _simulate_wecom_ws(data)
    url = _text(data, "url") or _local_webhook(channel)
    if channel.startswith("wecom"):
        return _simulate_wecom(channel, data, url)
    try:
        out = simulator.build(s.settings, channel, _text(data, "user", 128), _text(data, "text"))
        simulator.open_sandbox_window(s.settings, out.user)
        sim = simulator.send(
            out,
            url,
            _text(data, "text"),
            retry_after=s.settings.wechat_platform_timeout,
            attempts=s.settings.wechat_attempts,
        )
    except simulator.SimulationError as exc:
        return jsonify(error=str(exc)), 400
    if sim.ok:
        sim.job_id = simulator.find_job(s.redis, "wechat", sim.user, sim.msg_id)
        simulator.save(s.redis, sim)
    return jsonify(sim.to_dict())


@bp.get("/simulate/<job_id>")
@api_auth
def simulation(job_id: str):  # noqa: ANN201
    """One job (or WeCom simulation): timeline, text so far, reasoning, what the user saw."""
    s = services()
    job_id = job_id[:64]
    if (over_ws := ws_simulator.view(s.redis, job_id)) is not None:
        return jsonify(over_ws)
    view = admin.wecom_view(s.redis, s.settings, job_id) or admin.job_view(
        s.redis, s.settings, job_id
    )
    if view is None:
        return jsonify(error="no such job (unknown or expired)"), 404
    return jsonify(view)


@bp.post("/wecom/response")
def wecom_response():  # noqa: ANN201
    """The response_url of simulated WeCom messages. Like WeCom's own, its one-use code is the
    credential: the robot posts here with no admin token."""
    if not console_on():
        return jsonify(error=OFF_TEXT), 404
    try:  # anyone may post here: deep, huge or broken JSON is a clean 400, never a 503
        body = load_json(raw) if (raw := request.get_data()) else None
    except ValueError as exc:
        return jsonify(errcode=40008, errmsg=f"body is not valid JSON ({exc})"), 400
    errcode, errmsg = sandbox_wecom.accept_response(
        services().redis, request.args.get("response_code", "")[:64], body
    )
    return jsonify(errcode=errcode, errmsg=errmsg)


@bp.post("/verify-url")
@api_auth
def verify_url():  # noqa: ANN201
    """WeChat's GET echostr handshake against a URL, with the signature computed."""
    s = services()
    data = _body()
    token = _text(data, "token", 64) or s.settings.wechat_token
    try:
        return jsonify(simulator.verify_url(_text(data, "url") or _local_webhook(), token))
    except simulator.SimulationError as exc:
        return jsonify(error=str(exc)), 400


@bp.get("/conversations")
@api_auth
def list_conversations():  # noqa: ANN201
    """Recent conversations; `?user=` filters by part of the user id."""
    rows = admin.recent_conversations(services().redis, request.args.get("user", ""))
    return jsonify(conversations=rows)


@bp.get("/conversations/<channel>/<path:user>")
@api_auth
def get_conversation(channel: str, user: str):  # noqa: ANN201
    """One user's stored conversation with reasoning."""
    s = services()
    return jsonify(admin.conversation(s.redis, s.settings, channel, user))


def _who() -> tuple[str, str] | None:
    data = _body()
    channel, user = _text(data, "channel", 40) or "wechat", _text(data, "user", 128)
    return (channel, user) if user else None


@bp.post("/conversations/reset")
@api_auth
def reset():  # noqa: ANN201
    """Forget one user's conversation: {channel, user}."""
    who = _who()
    if who is None:
        return jsonify(error="expected {channel, user}"), 400
    s = services()
    admin.reset_conversation(s.redis, s.settings, *who)
    return jsonify(channel=who[0], user=who[1], reset=True)


@bp.post("/conversations/block")
@api_auth
def block():  # noqa: ANN201
    """Block (or with blocked=false unblock) one user: {channel, user, blocked}."""
    who = _who()
    if who is None:
        return jsonify(error="expected {channel, user, blocked}"), 400
    blocked = _body().get("blocked", True) is not False
    admin.set_blocked(services().redis, *who, blocked)
    return jsonify(channel=who[0], user=who[1], blocked=blocked)


@bp.get("/messages")
@api_auth
def list_messages():  # noqa: ANN201
    """The message ledger by view (stuck, parked, apologized, …) with each record's reason."""
    view = request.args.get("state", "stuck")
    if view not in messages.VIEWS:
        return jsonify(error=f"state must be one of {', '.join(messages.VIEWS)}"), 400
    client = services().redis
    return jsonify(
        state=view, counts=messages.summary(client), records=messages.listing(client, view)
    )
