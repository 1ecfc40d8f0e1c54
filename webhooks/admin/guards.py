"""Console routes of the guards: the Guards page, lifting a limit, and its JSON for scripts."""

from __future__ import annotations

from flask import jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers.response import Response as WerkzeugResponse

from bot.console import guardview
from webhooks.admin import api, pages
from webhooks.admin.auth import api_auth
from webhooks.services import services


@pages.bp.get("/guards")
@pages.login_required
def guards_page():  # noqa: ANN201
    """Who is rate-limited now and what content safety decided, with the rule that fired."""
    s = services()
    return render_template(
        "admin/guards.html", page="guards", view=guardview.overview(s.redis, s.settings)
    )


@pages.bp.post("/guards/lift")
@pages.login_required
def lift_limit() -> WerkzeugResponse:
    """Lift one person's (or group's) rate limit now."""
    s = services()
    form = request.form
    if form.get("channel") and form.get("who") and form.get("scope") in ("user", "group"):
        guardview.lift(s.redis, s.settings, form["channel"], form["scope"], form["who"])
    return redirect(url_for("admin.guards_page"))


@api.bp.get("/guards")
@api_auth
def get_guards():  # noqa: ANN201
    """Limits in force, who is limited now, recent safety and rate-limit decisions."""
    s = services()
    limit = request.args.get("limit", "100")
    count = min(int(limit), guardview.KEEP) if limit.isdigit() and int(limit) > 0 else 100
    return jsonify(guardview.overview(s.redis, s.settings, count))
