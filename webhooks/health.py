"""`/healthz` (process alive) and `/readyz` (Redis reachable, a worker online for every queue).

Container healthchecks and restarts use `/healthz`: a web process whose workers are away must
still take messages in (they wait, durably, in the queue). `/readyz` says whether the system can
answer now: for deploy gates, monitoring and alerts, not for taking the web out of a load balancer.
"""

from __future__ import annotations

import redis
from flask import Blueprint, jsonify

from tasks import inspect
from webhooks.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # noqa: ANN201
    """The process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():  # noqa: ANN201
    """Ready when Redis answers and every queue has at least one live worker; else 503."""
    client = services().redis
    try:
        client.ping()
        online = inspect.workers_online(client)
    except (redis.RedisError, OSError) as exc:
        return jsonify(status="unavailable", redis=f"down: {type(exc).__name__}"), 503
    missing = sorted(q for q, names in online.items() if not names)
    body = {"redis": "ok", "workers": {q: len(names) for q, names in online.items()}}
    if missing:
        return jsonify(status="not ready", missing_workers=missing, **body), 503
    return jsonify(status="ready", **body)
