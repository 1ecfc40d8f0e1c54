"""The console's view of the message ledger: what is stuck, parked or apologized, and why."""

from __future__ import annotations

import time
from typing import Any

import redis

from bot.console import workers
from bot.pipeline.ledger import STATES, Ledger

# The lists an operator looks at, newest first; "stuck" is computed, the others are states.
VIEWS = ("stuck", "parked", "apologized", "delivered", "generating", "queued")


def _row(fields: dict[str, str], msg_key: str, now: float) -> dict[str, Any]:
    updated = float(fields.get("updated_at") or 0)
    deadline = float(fields["deadline"]) if fields.get("deadline") else None
    return {
        "key": msg_key,
        "state": fields.get("state", ""),
        "channel": fields.get("channel", ""),
        "user": fields.get("user", ""),
        "job_id": fields.get("job_id", ""),
        "reason": fields.get("parked_because") or fields.get("reason") or "",
        "attempts": int(fields.get("attempts") or 0),
        "tries": int(fields.get("tries") or 0),
        "worker": fields.get("worker", ""),
        "uncertain": int(fields.get("uncertain") or 0),
        "via": fields.get("via", ""),
        "updated_at": updated,
        "age": round(now - updated, 1) if updated else None,
        "overdue": round(now - deadline, 1) if deadline and deadline < now else None,
    }


def listing(client: redis.Redis, view: str, limit: int = 50) -> list[dict[str, Any]]:
    """Records in one view, newest first (stuck: past their deadline or held by a dead worker)."""
    ledger, now = Ledger(client), time.time()
    if view == "stuck":
        keys = list(ledger.due(now, limit=max(limit, 500)))
        alive = workers.alive_ids(client)
        for msg_key in ledger.in_state("generating", limit=500):
            record = ledger.get(msg_key)
            if record is not None and record.worker not in alive and msg_key not in keys:
                keys.append(msg_key)
    elif view in STATES:
        keys = ledger.in_state(view, limit=limit)
    else:
        raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")
    rows = []
    for msg_key in keys:
        record = ledger.get(msg_key)
        if record is not None:
            rows.append(_row(record.fields, msg_key, now))
    # Cut after sorting: a worker that died a moment ago must not fall behind `limit` records
    # that have been overdue for longer.
    rows.sort(key=lambda r: r["updated_at"], reverse=True)
    return rows[:limit]


def summary(client: redis.Redis) -> dict[str, int]:
    """How many records each state lists now, and how many are stuck."""
    counts = Ledger(client).counts()
    return {"stuck": len(listing(client, "stuck", limit=500)), **counts}
