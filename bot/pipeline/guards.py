"""The guard stage every channel shares: rate limits and content safety, questions and answers.

Order for a question (after the block list, which ingest checks first): the person's and the
group's rate limits, the refuse lists, the review service; only then is a job enqueued. A
refusal is a short polite reply; nothing is queued. Answers are checked once, when generation
ends and before anything is published as done (`check_answer`: lists, then the review service),
and every streamed frame is screened on its own (`screen_frame`: lists only, holding back an end
that could still grow into a listed term). Each decision is counted in metrics and listed for
the console (`bot.pipeline.guardlog`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
import requests

from bot.core import logs, metrics
from bot.core.contracts import Answer
from bot.core.settings import Settings
from bot.pipeline import guardlog, ratelimit, safety

log = logging.getLogger(__name__)

LIMITED_TEXT = (
    "You have asked a lot of questions in a short time. Please ask again in {wait}. "
    "提问有点频繁，请{wait_zh}后再问。"
)
REFUSED_TEXT = (
    "Sorry, I can't help with that question. Please ask something else. "
    "抱歉，这个问题我无法回答，请换个问题。"
)
WITHHELD_TEXT = (
    "Sorry, I can't show the answer to that question. Please ask something else. "
    "抱歉，这个问题的回答无法显示，请换个问题。"
)
DONE_STATES = ("done", "failed")


@dataclass(frozen=True)
class Verdict:
    """A question the guards refused: the reply, how (rate_limit | safety | review), the rule."""

    reply: str
    via: str
    rule: str


@lru_cache(maxsize=8)
def _exempt(value: str) -> frozenset[str]:
    return frozenset(u.strip() for u in value.split(",") if u.strip())


def _wait_words(seconds: float) -> tuple[str, str]:
    if seconds < 90:
        n = max(1, round(seconds))
        return f"{n} second{'s' * (n != 1)}", f" {n} 秒"
    if seconds < 90 * 60:
        n = round(seconds / 60)
        return f"{n} minutes", f" {n} 分钟"
    n = round(seconds / 3600)
    return f"{n} hour{'s' * (n != 1)}", f" {n} 小时"


def check_question(
    settings: Settings,
    client: redis.Redis,
    *,
    channel: str,
    user: str,
    text: str,
    group: str = "",
) -> Verdict | None:
    """Rate limits, refuse lists and review for a new question; None lets it be enqueued.

    Called once per message (on the platform's first try): retries find the ledger record and
    get the first try's reply, so they are never counted again.
    """
    if user not in _exempt(settings.rate_limit_exempt):
        refusal = ratelimit.hit(client, channel, "user", user, settings.rate_limit_user)
        if refusal is None and group:
            refusal = ratelimit.hit(client, channel, "group", group, settings.rate_limit_group)
        if refusal is not None:
            wait, wait_zh = _wait_words(refusal.wait)
            rule = f"{refusal.scope}:{refusal.limit}"
            guardlog.limited(client, channel, refusal)
            _decided(settings, client, "question", "rate_limited", channel, user, rule, text)
            return Verdict(LIMITED_TEXT.format(wait=wait, wait_zh=wait_zh), "rate_limit", rule)
    hits = safety.find(text, safety.lists_for(settings.safety_lists).questions)
    if hits:
        _decided(settings, client, "question", "refused", channel, user, hits[0].rule, text)
        return Verdict(REFUSED_TEXT, "safety", hits[0].rule)
    if settings.review_url:
        passed, rule = review(settings, "question", channel, user, text)
        if not passed:
            _decided(settings, client, "question", "review_refused", channel, user, rule, text)
            return Verdict(REFUSED_TEXT, "review", rule)
    note_pass()
    return None


def passes_quietly(settings: Settings, *, user: str, text: str) -> bool:
    """Whether a question passes `check_question` with nothing to count or ask: no rate limit
    applies to `user`, no review service is set and no list refuses `text`.

    Such a question is decided before its claim, so ingest may enqueue it in the claim's own
    round trip (`note_pass` then counts it, once).
    """
    if ratelimit.parsed(settings.rate_limit_user) and user not in _exempt(
        settings.rate_limit_exempt
    ):
        return False
    if settings.review_url:
        return False
    return not safety.find(text, safety.lists_for(settings.safety_lists).questions)


def note_pass() -> None:
    """Count a question the guards let through."""
    metrics.GUARD_DECISIONS.labels("question", "pass").inc()


def screen(settings: Settings, text: str) -> tuple[str, list[safety.Hit], bool]:
    """An answer's text after the lists: (text to show, hits, withheld)."""
    hits = safety.find(text, safety.lists_for(settings.safety_lists).answers)
    if any(h.action in ("withhold", "refuse") for h in hits):
        return WITHHELD_TEXT, hits, True
    return (safety.mask(text, hits) if hits else text), hits, False


def screen_answer(settings: Settings, result: Answer) -> Answer:
    """An answer as it may be shown (lists only, nothing recorded): before formatting a send."""
    shown, hits, withheld = screen(settings, result.answer)
    if not hits:
        return result
    reasoning = "" if withheld else safety.mask(result.reasoning, _hits(settings, result.reasoning))
    return result.model_copy(update={"answer": shown, "reasoning": reasoning})


def _hits(settings: Settings, text: str) -> list[safety.Hit]:
    return safety.find(text, safety.lists_for(settings.safety_lists).answers)


def check_answer(settings: Settings, client: redis.Redis, result: Answer) -> Answer:
    """The answer checked once, when generated: lists, then review; the decision recorded."""
    if result.apology:
        return result
    job = result.job
    user = job.asker or job.user
    shown, hits, withheld = screen(settings, result.answer)
    decision, rule = "pass", ""
    if hits:
        decision, rule = ("withheld" if withheld else "masked"), hits[0].rule
    elif settings.review_url:
        passed, rule = review(settings, "answer", job.channel, user, result.answer)
        if not passed:
            shown, withheld, decision = WITHHELD_TEXT, True, "review_withheld"
    reasoning_hits = [] if withheld else _hits(settings, result.reasoning)
    if decision == "pass" and not reasoning_hits:
        metrics.GUARD_DECISIONS.labels("answer", "pass").inc()
        return result
    if decision == "pass":
        decision, rule = "masked", reasoning_hits[0].rule
    _decided(settings, client, "answer", decision, job.channel, user, rule, result.answer)
    reasoning = "" if withheld else safety.mask(result.reasoning, reasoning_hits)
    return result.model_copy(update={"answer": shown, "reasoning": reasoning})


def screen_frame(settings: Settings, now: dict[str, str]) -> dict[str, str]:
    """A stream frame's progress with no listed term in it, nor the start of one."""
    if not settings.safety_lists:
        return now
    lists = safety.lists_for(settings.safety_lists)
    done = now.get("state") in DONE_STATES
    out = dict(now)
    for field in ("answer", "reasoning"):
        text = now.get(field, "")
        if not text:
            continue
        if not done:
            text = text[: safety.held_back(text, lists)]
        hits = safety.find(text, lists.answers)
        if any(h.action in ("withhold", "refuse") for h in hits):
            return {**out, "answer": WITHHELD_TEXT, "reasoning": ""}
        out[field] = safety.mask(text, hits) if hits else text
    return out


def review(settings: Settings, stage: str, channel: str, user: str, text: str) -> tuple[bool, str]:
    """Ask the review service; (passed, rule). Failure or timeout follows MIMOCHAT_REVIEW_FAIL.

    The service gets `{"stage", "channel", "user", "text"}` as JSON and answers
    `{"verdict": "pass" | "block", "rule": "..."}`.
    """
    body: dict[str, Any] = {"stage": stage, "channel": channel, "user": user, "text": text}
    try:
        response = requests.post(settings.review_url, json=body, timeout=settings.review_timeout)
        response.raise_for_status()
        answer = response.json()
        verdict = answer.get("verdict") if isinstance(answer, dict) else None
        if verdict not in ("pass", "block"):
            raise ValueError(f"unexpected verdict {verdict!r}")
    except (requests.RequestException, ValueError) as exc:
        closed = settings.review_fail == "closed"
        metrics.GUARD_DECISIONS.labels(stage, "review_failed_" + settings.review_fail).inc()
        log.warning(
            "review service failed (%s): failing %s",
            type(exc).__name__,
            "closed" * closed or "open",
        )
        return not closed, f"review:unavailable:{type(exc).__name__}"
    return verdict == "pass", f"review:{answer.get('rule') or verdict}"


def _decided(
    settings: Settings,
    client: redis.Redis,
    stage: str,
    decision: str,
    channel: str,
    user: str,
    rule: str,
    text: str,
) -> None:
    metrics.GUARD_DECISIONS.labels(stage, decision).inc()
    logs.stage(
        "guard", stage=stage, decision=decision, channel=channel, user=user, rule=rule, text=text
    )
    shown = text[:200] if settings.log_user_text else ""
    guardlog.decided(client, stage, decision, channel, user, rule, shown)
