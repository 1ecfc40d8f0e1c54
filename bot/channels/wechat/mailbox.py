"""Answers waiting for the user's next message, and how one passive reply carries them.

WeChat lets a passive reply carry one text message, and a customer-service window allows five
sends. What cannot go out now waits here, in order, as ready-to-send pieces (each under the
byte limit); the next message from the user takes as many as fit into one reply. Taking is
atomic, so two concurrent requests never hand out the same piece.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from bot.core.store import key
from bot.text.split import utf8_len

PART_LIMIT = 1900  # UTF-8 bytes of one WeChat text, leaving room for a hint under ~2000
MORE_HINT = "（还有 {n} 条，回复“继续”查看 / {n} more: reply “more”）"
SEPARATOR = "\n\n————\n\n"
CONTINUE_WORDS = frozenset({"继续", "more", "next", "continue", "c", "1", "/more"})

# The job's mark and its pieces in one step: the passive reply takes the mailbox the moment the
# mark appears, and a worker dying between the two must not leave a mark with nothing behind it
# (a retried delivery would see the mark and put nothing).
_PUT = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return 1
end
return 0
"""
TAKE_WINDOW = 20  # pieces read per take: more never fit into one reply


def is_continue(text: str) -> bool:
    """True for the keyword that asks for the next waiting part."""
    return text.strip().lower() in CONTINUE_WORDS


@dataclass
class Piece:
    """One ready-to-send text waiting for the user."""

    job_id: str
    text: str
    question: str = ""

    def to_json(self) -> str:
        """Serialized form in Redis."""
        return json.dumps({"job_id": self.job_id, "text": self.text, "question": self.question})

    @classmethod
    def from_json(cls, raw: str) -> Piece:
        """Parse the serialized form."""
        data: dict[str, Any] = json.loads(raw)
        return cls(data["job_id"], data["text"], data.get("question", ""))


class Mailbox:
    """One user's waiting answers on one channel."""

    def __init__(self, client: redis.Redis, channel: str, user: str, ttl: int) -> None:
        self.redis = client
        self.key = key("pending", channel, user)
        self.ttl = ttl

    def put(self, pieces: list[Piece]) -> None:
        """Queue pieces after whatever is already waiting (once per job: a retry adds nothing)."""
        if not pieces:
            return
        marker = key("pending-job", pieces[0].job_id)
        self.redis.eval(_PUT, 2, self.key, marker, self.ttl, *(p.to_json() for p in pieces))

    def has_job(self, job_id: str) -> bool:
        """True once a job's answer has been queued here (it may already be taken)."""
        return bool(self.redis.exists(key("pending-job", job_id)))

    def size(self) -> int:
        """How many pieces wait."""
        return int(self.redis.llen(self.key))

    def take(self, limit_bytes: int) -> tuple[str, int]:
        """The text of one reply made of the next waiting pieces, and how many remain after it.

        Optimistic (WATCH): only the pieces that fit are removed, in the same step that checks
        nobody else took them meanwhile, so a process dying mid-take loses nothing and two
        concurrent takes never hand out one piece twice or out of order.
        """
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    raw: list[str] = pipe.lrange(self.key, 0, TAKE_WINDOW - 1)
                    text, used = compose([Piece.from_json(r) for r in raw], limit_bytes)
                    if not used:
                        pipe.unwatch()
                        return "", 0
                    pipe.multi()
                    pipe.ltrim(self.key, used, -1)
                    pipe.llen(self.key)
                    remaining = int(pipe.execute()[-1])
                    break
                except redis.WatchError:
                    continue  # another take (or a put) came first: read again
        if remaining:
            text = _with_hint(text, remaining, limit_bytes)
        return text, remaining


def compose(pieces: list[Piece], limit_bytes: int) -> tuple[str, int]:
    """Pack consecutive pieces into one message under the limit; returns (text, pieces used).

    Answers to different questions get a short "Re:" header so the user can tell them apart.
    Room for the "more" hint is kept free.
    """
    budget = limit_bytes - utf8_len(MORE_HINT.format(n=99)) - 2
    several_jobs = len({p.job_id for p in pieces}) > 1
    out, used, last_job = "", 0, None
    for piece in pieces:
        body = piece.text
        if several_jobs and piece.job_id != last_job and piece.question:
            body = f"【{_short(piece.question)}】\n{body}"
        candidate = (
            body if not out else out + (SEPARATOR if piece.job_id != last_job else "\n\n") + body
        )
        if out and utf8_len(candidate) > budget:
            break
        out, used, last_job = candidate, used + 1, piece.job_id
    return out, used


def _short(question: str, chars: int = 24) -> str:
    question = " ".join(question.split())
    return question if len(question) <= chars else question[: chars - 1] + "…"


def _with_hint(text: str, remaining: int, limit_bytes: int) -> str:
    hint = MORE_HINT.format(n=remaining)
    joined = f"{text}\n\n{hint}"
    return joined if utf8_len(joined) <= limit_bytes else text
