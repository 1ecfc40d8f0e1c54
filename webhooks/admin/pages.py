"""Console pages: login, live view, simulator, conversations, setup checks (server-rendered)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, redirect, render_template, request, session, url_for
from werkzeug.wrappers.response import Response as WerkzeugResponse

from bot.channels.wechat import simulator
from bot.channels.wecom import simulator as simulator_wecom
from bot.channels.wecom import ws_simulator
from bot.console import admin, messages
from bot.console.guard import Verdict
from webhooks.admin.auth import (
    CSRF_FIELD,
    OFF_TEXT,
    console_on,
    csrf_ok,
    csrf_token,
    logged_in,
    secret_verdict,
    start_session,
)
from webhooks.services import services

bp = Blueprint("admin", __name__, url_prefix="/admin")
log = logging.getLogger(__name__)


@bp.before_request
def console_switch():  # noqa: ANN201
    """With no ADMIN_TOKEN every page (login included) only says that the console is off."""
    if not console_on():
        return render_template("admin/off.html", text=OFF_TEXT), 404
    return None


@bp.context_processor
def page_context() -> dict[str, Any]:
    """What every template may use."""
    return {"csrf_token": csrf_token, "csrf_field": CSRF_FIELD, "logged_in": logged_in()}


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Pages for logged-in operators; POSTs also need the form's CSRF token."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not logged_in():
            return redirect(url_for("admin.login", next=request.path))
        if request.method == "POST" and not csrf_ok():
            return render_template(
                "admin/error.html",
                text="Expired or missing form token: reload the page and try again.",
            ), 403
        return view(*args, **kwargs)

    return wrapped


def _safe_next(target: str | None) -> str:
    """Only a path inside the console (no open redirect)."""
    if target and target.startswith("/admin") and not target.startswith("//"):
        return target
    return url_for("admin.live")


@bp.route("/login", methods=["GET", "POST"])
def login():  # noqa: ANN201
    """The token form; a correct token starts a session."""
    error = ""
    status = 200
    if request.method == "POST":
        address = request.remote_addr or "?"
        if not csrf_ok():
            error, status = "The form expired: please try again.", 403
        # One atomic throttle admits, compares and counts (bot.console.guard).
        elif (verdict := secret_verdict(request.form.get("token", ""))) is Verdict.THROTTLED:
            error, status = "Too many failed attempts: wait a few minutes.", 429
        elif verdict is Verdict.OK:
            start_session()
            log.info("admin login from %s", address)
            return redirect(_safe_next(request.args.get("next")))
        else:
            log.warning("failed admin login from %s", address)
            error, status = "That is not the admin token.", 401
    return render_template("admin/login.html", error=error), status


@bp.post("/logout")
def logout() -> WerkzeugResponse:
    """End the session (a CSRF-protected POST, so no page can log you out)."""
    if logged_in() and csrf_ok():
        session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/")
@login_required
def live():  # noqa: ANN201
    """Live view: queues, workers, in flight, rate, latency, errors."""
    return render_template("admin/live.html", page="live")


@bp.get("/simulator")
@login_required
def simulator_page():  # noqa: ANN201
    """Chat simulator."""
    local = url_for("wechat.receive", _external=True)
    wecom = url_for("wecom.receive", _external=True)
    # The long connection has no webhook: it goes through the fake WeCom, when one answers.
    channels = [*simulator.CHANNELS.values(), ws_simulator.channel(services().settings)]
    urls = {"/wecom": wecom, "/wechat": local}
    return render_template(
        "admin/simulator.html",
        page="simulator",
        channels=channels,
        local_url=local,
        local_urls={c.name: urls.get(c.path, "") for c in channels},
        default_group=simulator_wecom.DEFAULT_GROUP,
        refresh=services().settings.wecom_sandbox_refresh_interval,
        encrypted=services().settings.encrypted,
        timeout=services().settings.wechat_platform_timeout,
        attempts=services().settings.wechat_attempts,
    )


@bp.get("/conversations")
@login_required
def conversations():  # noqa: ANN201
    """Recent conversations, searchable by user; one opened with its reasoning."""
    s = services()
    query = request.args.get("user", "")
    rows = admin.recent_conversations(s.redis, query)
    opened = None
    channel, user = request.args.get("channel", ""), request.args.get("open", "")
    if channel and user:
        opened = admin.conversation(s.redis, s.settings, channel, user)
    return render_template(
        "admin/conversations.html", page="conversations", rows=rows, query=query, opened=opened
    )


@bp.post("/conversations/reset")
@login_required
def reset_conversation() -> WerkzeugResponse:
    """Forget one user's conversation."""
    s = services()
    channel, user = request.form.get("channel", ""), request.form.get("user", "")
    if channel and user:
        admin.reset_conversation(s.redis, s.settings, channel, user)
    return redirect(url_for("admin.conversations", channel=channel, open=user))


@bp.post("/conversations/block")
@login_required
def block_user() -> WerkzeugResponse:
    """Block or unblock one user."""
    s = services()
    channel, user = request.form.get("channel", ""), request.form.get("user", "")
    if channel and user:
        admin.set_blocked(s.redis, channel, user, request.form.get("blocked") == "1")
    return redirect(url_for("admin.conversations", channel=channel, open=user))


@bp.get("/messages")
@login_required
def messages_page():  # noqa: ANN201
    """The message ledger: stuck, parked and apologized messages with their reasons."""
    client = services().redis
    view = request.args.get("state", "stuck")
    if view not in messages.VIEWS:
        view = "stuck"
    return render_template(
        "admin/messages.html",
        page="messages",
        view=view,
        views=messages.VIEWS,
        counts=messages.summary(client),
        rows=messages.listing(client, view),
    )


@bp.get("/setup")
@login_required
def setup():  # noqa: ANN201
    """Doctor and URL-verification tester."""
    return render_template(
        "admin/setup.html", page="setup", local_url=url_for("wechat.receive", _external=True)
    )
