"""Per-user conversation history in Redis, with a TTL and a cap; each answer recorded once."""

from __future__ import annotations

import json
from typing import Any

import redis

from bot.core.store import key


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
        return [json.loads(raw) for raw in self.redis.lrange(self._key(channel, user), 0, -1)]

    def reset(self, channel: str, user: str) -> None:
        """Forget the conversation."""
        self.redis.delete(self._key(channel, user))

    def record(self, job: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        """Store a job's answer and its turn once; a redelivered job gets the first answer back."""
        answer_key = key("answer", job["job_id"])
        conv_key = self._key(job["channel"], job["user"])
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(answer_key)
                    existing = pipe.get(answer_key)
                    if existing:
                        pipe.reset()
                        return json.loads(existing)
                    pipe.multi()
                    pipe.set(answer_key, json.dumps(result), ex=max(self.ttl, 86400))
                    if result.get("remember", True):
                        pipe.rpush(
                            conv_key,
                            json.dumps({"role": "user", "content": job["text"]}),
                            json.dumps(
                                {
                                    "role": "assistant",
                                    "content": result["answer"],
                                    "reasoning": result.get("reasoning", ""),
                                    "job_id": job["job_id"],
                                }
                            ),
                        )
                        pipe.ltrim(conv_key, -self.max_messages, -1)
                        pipe.expire(conv_key, self.ttl)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    def stored_answer(self, job_id: str) -> dict[str, Any] | None:
        """The answer already recorded for a job, if any."""
        raw = self.redis.get(key("answer", job_id))
        return json.loads(raw) if raw else None
