"""`/healthz` (process alive) and `/readyz` (Redis reachable)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from webhooks.app import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # noqa: ANN201
    """The process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():  # noqa: ANN201
    """Ready when Redis answers."""
    services().redis.ping()
    return jsonify(status="ready")
