"""The console's read models, free of Flask so they are tested directly.

A job's timeline in words, one job seen whole (timeline, text so far, reasoning, what the
user received), recent conversations searchable by user. The admin token check and its
throttle live in `bot.console.guard`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from bot.channels.wechat import simulator
from bot.channels.wechat.api import explain
from bot.channels.wecom import simulator as simulator_wecom
from bot.console.guard import token_matches  # noqa: F401 (the token check lives in guard)
from bot.core import jobs, progress
from bot.core.settings import Settings
from bot.pipeline import moderation
from bot.pipeline.conversations import Conversations
from bot.text.visible import visible

log = logging.getLogger(__name__)


def _num(record: dict[str, str], name: str) -> float | None:
    try:
        return float(record[name])
    except (KeyError, ValueError):
        return None


def timeline(
    record: dict[str, str], sim: dict[str, Any] | None = None, origin: float | None = None
) -> list[dict[str, Any]]:
    """The stages of one job in order, each with when it happened (seconds after the webhook
    got it, or after `origin` when the job is unknown here) and what it tells in words."""
    received = _num(record, "received_at")
    start = received if received is not None else origin
    rows: list[dict[str, Any]] = []

    def row(stage: str, detail: str, at: float | None, ok: bool = True) -> None:
        rows.append(
            {
                "stage": stage,
                "at": at,
                "after": None if at is None or start is None else round(at - start, 3),
                "detail": detail,
                "ok": ok,
            }
        )

    if sim:
        tries = sim.get("attempts", [])
        last = tries[-1] if tries else {}
        status = last.get("status")
        row(
            "webhook",
            f"HTTP {status} in {last.get('seconds', 0) * 1000:.0f} ms"
            + (f" after {len(tries)} tries" if len(tries) > 1 else "")
            + (" — passive reply" if sim.get("passive_reply") else "")
            + _wecom_reply_note(sim),
            sim.get("sent_at"),
            bool(sim.get("ok")),
        )
    if received is not None:
        row("received", f"{record.get('kind', 'text')} from {record.get('user', '?')}", start)
    if (at := _num(record, "started_at")) is not None:
        row("started", f"waited {record.get('queue_wait', '?')} s in the gpu queue", at)
    if (at := _num(record, "generated_at")) is not None:
        # One `error` field serves every stage; a generation that failed has no finish_reason.
        failed = "finish_reason" not in record
        if failed:
            detail = f"generation failed ({record.get('error', '?')}): the user gets an apology"
        else:
            detail = (
                f"{record.get('generation_seconds', '?')} s, "
                f"{record.get('reasoning_tokens', '?')} reasoning + "
                f"{record.get('answer_tokens', '?')} answer tokens "
                f"({record.get('finish_reason', '?')})"
            )
        row("generated", detail, at, not failed)
    if (at := _num(record, "notice_at")) is not None:
        row(
            "notice",
            f"not ready by WeChat's try {record.get('attempt', '?')}: the user was told the "
            "answer comes with their next message",
            at,
        )
    if (at := _num(record, "handed_over_at")) is not None:
        row(
            "handed over",
            "not ready within WECOM_STREAM_WINDOW: the stream was closed with a note and the "
            "answer goes to the message's response_url",
            at,
        )
    if (at := _num(record, "delivered_at")) is not None:
        parts = record.get("parts", "?")
        plural = "s" if parts != "1" else ""
        if record.get("via") == "stream":
            detail = "finished by a stream refresh: the chat shows the whole answer"
        elif record.get("via") == "response_url":
            detail = "posted as Markdown to the message's response_url (the stream had ended)"
        elif record.get("via") == "next_message":
            detail = f"{parts} part{plural} handed to the passive reply (or the next message)"
        else:
            detail = f"{parts} message{plural} sent through the customer-service API"
        row("delivered", detail, at)
    if (at := _num(record, "failed_at")) is not None:
        code = record.get("error_code")
        row(
            "failed",
            explain(int(code), record.get("error", "")) if code else record.get("error", ""),
            at,
            False,
        )
    return rows


def _wecom_reply_note(sim: dict[str, Any]) -> str:
    reply = sim.get("reply") or {}
    if reply.get("msgtype") != "stream":
        return f" — {reply['msgtype']} reply" if reply.get("msgtype") else ""
    return " — finished stream" if (reply.get("stream") or {}).get("finish") else " — stream"


def _stored(store: Conversations, job_id: str) -> dict[str, Any]:
    """The stored answer's fields the console shows ({} when there is none yet)."""
    stored = store.stored_answer(job_id) if job_id else None
    return stored.model_dump(exclude={"job"}) if stored else {}


def job_view(client: redis.Redis, settings: Settings, job_id: str) -> dict[str, Any] | None:
    """One job seen whole: simulation, timeline, text so far, reasoning, messages received."""
    record = jobs.get(client, job_id)
    sim = simulator.load(client, job_id)
    if not record and not sim:
        return None
    store = Conversations(client, settings.history_ttl, settings.history_max_turns)
    answer = _stored(store, job_id)
    live = progress.read(client, job_id)
    user = record.get("user") or (sim or {}).get("user", "")
    since = _num(record, "received_at") or (sim or {}).get("sent_at", 0.0)
    stage = record.get("stage", "")
    return {
        "job_id": job_id,
        "stage": stage,
        "done": "delivered_at" in record or "failed_at" in record,
        "delivered_via": record.get("via") if "delivered_at" in record else None,
        "channel": record.get("channel", ""),
        "user": user,
        "question": record.get("text", (sim or {}).get("text", "")),
        "simulation": sim,
        "timeline": timeline(record, sim),
        "progress": {
            "state": live.get("state", "queued" if record else ""),
            "answer": live.get("answer", ""),
            "reasoning": live.get("reasoning", ""),
        },
        "answer": answer.get("answer"),
        "reasoning": answer.get("reasoning"),
        "tokens": {
            k: answer.get(k) for k in ("prompt_tokens", "reasoning_tokens", "answer_tokens")
        },
        "messages": simulator.sandbox_outbox(settings, user, since) if user else None,
    }


def _chat_rows(chat: dict[str, Any], origin: float | None) -> list[dict[str, Any]]:
    """Timeline rows for what the chat showed: first text, finish, late message, failures."""
    rows: list[dict[str, Any]] = []

    def row(stage: str, detail: str, at: float, ok: bool = True) -> None:
        after = None if origin is None else round(at - origin, 3)
        rows.append({"stage": stage, "at": at, "after": after, "detail": detail, "ok": ok})

    stream = chat["stream"]
    if stream:
        versions = stream["versions"]
        if first := next((v for v in versions if v["refresh"] and not v["finish"]), None):
            row(
                "streaming",
                f"the chat shows model text from refresh {first['refresh']}; "
                f"{len(versions)} versions over {chat['refreshes']} refreshes",
                first["at"],
            )
        if stream["finish"]:
            last = versions[-1]
            how = (
                "closed the stream with “the full answer will follow”"
                if stream["handed_over"]
                else "brought finish: true with the whole answer"
            )
            row("stream end", f"refresh {last['refresh']} {how}", last["at"])
    if late := chat["response_url"]:
        row(
            "response_url", f"a Markdown message arrived ({len(late['content'])} chars)", late["at"]
        )
    for error in chat["errors"]:
        where = f"refresh {error['refresh']}" if error.get("refresh") else "the message"
        row(
            "error",
            f"{where}: HTTP {error.get('status')} {error.get('body', '')}"[:300],
            error["at"],
            False,
        )
    for event in chat["events"]:
        if event["kind"] in ("refresh_stopped", "refresh_expired"):
            why = "stopped" if event["kind"] == "refresh_stopped" else "gave up after 6 minutes"
            row("refreshes", f"WeCom {why} after {event['refresh']} refreshes", event["at"], False)
    return rows


def wecom_view(client: redis.Redis, settings: Settings, sim_id: str) -> dict[str, Any] | None:
    """One simulated WeCom message as the chat saw it, with its job's timeline when the job
    is in this Redis (a public URL's deployment may keep its own)."""
    sim = simulator.load(client, sim_id)
    if sim is None or not simulator_wecom.is_wecom(sim):
        return None
    job_id = sim.get("job_id") or ""
    record = jobs.get(client, job_id) if job_id else {}
    chat = simulator_wecom.transcript(client, sim_id)
    store = Conversations(client, settings.history_ttl, settings.history_max_turns)
    answer = _stored(store, job_id)
    origin = _num(record, "received_at") or sim.get("sent_at")
    rows = timeline(record, sim, origin) + _chat_rows(chat, origin)
    rows.sort(key=lambda r: (r["at"] is None, r["at"] or 0.0))
    stream = chat["stream"]
    handed = bool(stream and stream["handed_over"]) or "handed_over_at" in record
    finished = bool(stream and stream["finish"] and not handed)
    if "delivered_at" in record:
        via = record.get("via")
    else:
        via = "response_url" if chat["response_url"] else "stream" if finished else None
    ended = chat["loop"] != "running"
    if not sim.get("ok") or chat["response_url"] or finished or "failed_at" in record:
        done = True
    elif stream is None or not record:
        # Nothing to wait for here, or the job lives in another Redis: a late answer gets
        # the robot's grace period to arrive through response_url.
        waited = time.time() - (chat["loop_ended_at"] or time.time())
        done = ended and (stream is None or waited > settings.wecom_fallback_grace + 5)
    else:
        done = False
    live = progress.read(client, job_id) if job_id else {}
    return {
        "kind": "wecom",
        "sim_id": sim_id,
        "job_id": job_id or None,
        "stage": record.get("stage", ""),
        "done": done,
        "delivered_via": via,
        "channel": sim["channel"],
        "user": sim.get("user", ""),
        "chat_id": sim.get("chat_id", ""),
        "question": record.get("text", sim.get("text", "")),
        "simulation": sim,
        "timeline": rows,
        "chat": chat,
        "progress": {
            "state": live.get("state", "queued" if record else ""),
            "answer": live.get("answer", ""),
            "reasoning": live.get("reasoning", ""),
        },
        "answer": answer.get("answer"),
        "reasoning": answer.get("reasoning"),
        "tokens": {
            k: answer.get(k) for k in ("prompt_tokens", "reasoning_tokens", "answer_tokens")
        },
    }


def person(channel: str, user: str) -> str | None:
    """Whom a conversation key stands for: the id Block acts on (None for a shared thread).

    A WeCom history is stored under its thread's scope key (`u:<userid>`, or
    `g:<chatid>:u:<userid>` for one person in a group), while blocking is by WeCom userid;
    a whole group's thread (`g:<chatid>`, WECOM_SESSION_SCOPE=group) is nobody's to block.
    """
    if channel != "wecom":
        return user
    if user.startswith("u:"):
        return user[2:]
    if user.startswith("g:"):
        return user.split(":u:", 1)[1] if ":u:" in user else None
    return user  # a bare userid (the API's callers may give one)


def recent_conversations(
    client: redis.Redis, query: str = "", limit: int = 50
) -> list[dict[str, Any]]:
    """Conversations with recent messages, newest first, filtered by a part of their user's id.

    `user` is the key the history is stored under (a WeCom thread's scope key, see `person`).
    """
    query = query.strip().lower()
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for row in jobs.recent(client, jobs.RECENT_MAX):
        channel, asker = row.get("channel", ""), row.get("user", "")
        user = row.get("scope") or asker  # WeCom: the thread, where answer() keeps the history
        if not user or (query and query not in user.lower() and query not in asker.lower()):
            continue
        entry = seen.get((channel, user))
        if entry is None:
            if len(seen) >= limit:
                continue
            entry = seen[(channel, user)] = {
                "channel": channel,
                "user": user,
                "person": person(channel, user),
                "last_text": visible(row.get("text", "")),
                "last_at": _num(row, "received_at"),
                "last_job": row["job_id"],
                "last_stage": row.get("stage", ""),
                "jobs": 0,
            }
        entry["jobs"] += 1
    blocked: dict[str, set[str]] = {}
    for entry in seen.values():
        if entry["channel"] not in blocked:
            blocked[entry["channel"]] = moderation.blocked(client, entry["channel"])
        entry["blocked"] = entry["person"] in blocked[entry["channel"]]
    return list(seen.values())


def conversation(
    client: redis.Redis, settings: Settings, channel: str, user: str
) -> dict[str, Any]:
    """One user's stored conversation (with reasoning) and whether they are blocked."""
    store = Conversations(client, settings.history_ttl, settings.history_max_turns)
    who = person(channel, user)
    history = [
        {
            k: visible(v) if k in ("content", "reasoning") and isinstance(v, str) else v
            for k, v in m.items()
        }
        for m in store.history(channel, user)
    ]
    return {
        "channel": channel,
        "user": user,
        "person": who,
        "blocked": who is not None and moderation.is_blocked(client, channel, who),
        "history": history,
    }


def reset_conversation(client: redis.Redis, settings: Settings, channel: str, user: str) -> None:
    """Forget one user's conversation (as their own /reset would)."""
    Conversations(client, settings.history_ttl, settings.history_max_turns).reset(channel, user)
    log.info("admin reset the %s conversation of %s", channel, user)


def set_blocked(client: redis.Redis, channel: str, user: str, blocked: bool) -> None:
    """Block or unblock one user (given by id or by their WeCom thread's key)."""
    who = person(channel, user)
    if who is None:
        log.warning(
            "admin block of %s %s ignored: a shared group thread is no one user", channel, user
        )
        return
    (moderation.block if blocked else moderation.unblock)(client, channel, who)
    log.info("admin %s %s user %s", "blocked" if blocked else "unblocked", channel, who)
