"""Per-user conversation history in Redis, with a TTL and a cap; each answer recorded once.

A history that cannot be read (a wrong type, a corrupt entry) is set aside under
`conv-unreadable:` for the operator and the question is answered without it: one bad key
never silences a user.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from bot.core.contracts import Answer, ContractError, Job
from bot.core.settings import Settings
from bot.core.store import key

log = logging.getLogger(__name__)
UNREADABLE_TTL = 30 * 86400  # kept for the operator to look at


class Conversations:
    """History of one channel's users, oldest turn first."""

    def __init__(self, client: redis.Redis, ttl: int, max_turns: int) -> None:
        self.redis = client
        self.ttl = ttl
        self.max_messages = max(2, 2 * max_turns)

    @staticmethod
    def _key(channel: str, user: str) -> str:
        return key("conv", channel, user)

    def history(self, channel: str, user: str) -> list[dict[str, Any]]:
        """Stored messages: dicts with role, content (and reasoning for the assistant)."""
        conv_key = self._key(channel, user)
        try:
            messages = [json.loads(raw) for raw in self.redis.lrange(conv_key, 0, -1)]
            if all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in messages):
                return messages
            problem = "an entry without role and content"
        except (redis.ResponseError, ValueError, TypeError) as exc:
            problem = type(exc).__name__
        self.set_aside(conv_key, problem)
        return []

    def set_aside(self, conv_key: str, problem: str) -> None:
        """Move an unreadable history out of the way, keeping it for the operator."""
        aside = key("conv-unreadable", conv_key.removeprefix(key("conv", "")))
        try:
            self.redis.rename(conv_key, aside)
            self.redis.expire(aside, UNREADABLE_TTL)
        except redis.ResponseError:  # gone meanwhile
            pass
        log.error(
            "conversation %s is unreadable (%s): set aside as %s; answering without it",
            conv_key,
            problem,
            aside,
        )

    def reset(self, channel: str, user: str) -> None:
        """Forget the conversation."""
        self.redis.delete(self._key(channel, user))

    def record(self, job: Job, result: Answer) -> Answer:
        """Store a job's answer and its turn once; a redelivered job gets the first answer back."""
        answer_key = key("answer", job.job_id)
        conv_key = self._key(job.channel, job.user)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(answer_key, conv_key)
                    existing = pipe.get(answer_key)
                    if existing:
                        pipe.reset()
                        return Answer.from_wire(existing)
                    remember = result.remember and pipe.type(conv_key) in ("list", "none")
                    pipe.multi()
                    pipe.set(answer_key, result.model_dump_json(), ex=max(self.ttl, 86400))
                    if remember:
                        pipe.rpush(
                            conv_key,
                            json.dumps({"role": "user", "content": job.text}),
                            json.dumps(
                                {
                                    "role": "assistant",
                                    "content": result.answer,
                                    "reasoning": result.reasoning,
                                    "job_id": job.job_id,
                                }
                            ),
                        )
                        pipe.ltrim(conv_key, -self.max_messages, -1)
                        pipe.expire(conv_key, self.ttl)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    def stored_answer(self, job_id: str) -> Answer | None:
        """The answer already recorded for a job, if any (an unreadable one counts as none)."""
        raw = self.redis.get(key("answer", job_id))
        if not raw:
            return None
        try:
            return Answer.from_wire(raw)
        except ContractError as exc:
            log.error("stored answer of job %s unreadable (%s): answering again", job_id, exc)
            return None


def conversations(settings: Settings, client: redis.Redis) -> Conversations:
    """The conversation store configured by settings."""
    return Conversations(client, settings.history_ttl, settings.history_max_turns)
