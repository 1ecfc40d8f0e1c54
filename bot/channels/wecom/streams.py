"""WeCom intelligent robot use cases: group threads, streamed answers and the response_url fallback.

Generation is `bot.pipeline.answer` itself (the job's `user` is the thread's scope key); this module
decides what each callback gets and who delivers the final answer.

A question gets a `stream` reply at once; WeCom then polls with stream-refresh callbacks and
each reply carries the full text so far (read from `bot.core.progress`) until `finish: true`. The
final answer is delivered exactly once: by the refresh that finds it done (`final_by=stream`),
or, when refreshes stopped or the stream window closed first, by a check task that posts it to
the message's one-use `response_url` (`final_by=response_url`). A Redis HSETNX decides which.

Per stream id, Redis holds the asker, the chat, the job and how the stream ended; per person, a
sorted set of open streams enforces WeCom's limit of 3 questions in progress at once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from bot.channels.wecom.protocol import CONTENT_LIMIT, fit_content, stream_reply, text_reply
from bot.core import jobs, progress
from bot.core.contracts import Answer, IncomingMessage, Job, message_key, new_id
from bot.core.settings import WECOM_SCOPES, Settings
from bot.core.store import key
from bot.pipeline import commands, guards, moderation, thinking
from bot.pipeline.conversations import conversations
from bot.pipeline.ingest import BUSY_TEXT as QUEUE_BUSY_TEXT
from bot.pipeline.ingest import Enqueue, enqueue_job
from bot.pipeline.ledger import Ledger
from bot.text.split import utf8_len

log = logging.getLogger(__name__)

PostMarkdown = Callable[[str, str], None]

CHANNEL = "wecom"
STREAM_TTL = 2 * 3600  # longer than the response_url's life
RESPONSE_URL_TTL = 3600  # WeCom: a response_url works once, for one hour
QUESTION_EXCERPT = 60  # characters of the question quoted when addressing the asker
MIN_REASONING_BYTES = 200  # below this the <think> block is dropped to make room for the answer
DONE_STATES = ("done", "failed")

WELCOME_TEXT = (
    "Hi, I am MiMo, Xiaomi's reasoning model. Ask me anything; in a group, @mention me with "
    "your question. 你好，我是小米 MiMo 推理模型，直接提问即可；在群里请 @我 并提问。"
)
HELP_TEXT = (
    commands.HELP_TEXT + "\n\nIn a group, @mention me with your question; /reset there forgets "
    "the group thread you are in. 在群里请 @我 提问；在群里发 /reset 会清除你所在的对话。"
)
RESET_TEXTS = {
    "user_in_group": "Done — I have forgotten our conversation here. 已清除你在这里的对话记忆。",
    "group": "Done — I have forgotten this group's conversation, for everyone. 已清除本群的对话记忆。",
    "user": "Done — I have forgotten our conversation. 已清除记忆，我们重新开始吧。",
}
BUSY_TEXT = (
    "You already have {n} questions in progress. Please wait for one of them to finish, then "
    "ask again. 你已有 {n} 个问题正在回答中，请等其中一个答完再问。"
)
NOT_ALLOWED_TEXT = "Sorry, I am not enabled in this group. 抱歉，本群尚未开通机器人。"
EMPTY_TEXT = "Hi! @mention me followed by your question. 你好！@我 后面直接写问题即可。"
THINKING_TEXT = "_Thinking…_ 思考中…"
HANDOVER_NOTE = (
    "⏳ Still working on it — the full answer will follow as a new message. "
    "仍在思考，完整回答稍后单独发送。"
)
ELSEWHERE_TEXT = "The answer was sent as a separate message. 回答已单独发送。"
EXPIRED_TEXT = "This answer is no longer available. 该回答已过期。"

_WS = "[\\s\u2005]"  # WeCom puts U+2005 (four-per-em space) after a mention
_LEADING_MENTION = re.compile(rf"^{_WS}*@[^\s\u2005@]+{_WS}*")


@dataclass
class Reply:
    """What the webhook answers now: a payload to seal (None: an empty body)."""

    payload: dict[str, Any] | None = None
    job: Job | None = None
    stream_id: str = ""
    duplicate: bool = False


# --- group semantics ---


def strip_mention(text: str, bot_name: str = "") -> str:
    """The question without the @mention of the robot (its name anywhere, else a leading one)."""
    if bot_name:
        text = re.sub(rf"@{re.escape(bot_name)}(?={_WS}|$){_WS}*", "", text)
    else:
        text = _LEADING_MENTION.sub("", text, count=1)
    return text.replace("\u2005", " ").strip()


def scope_key(scope: str, message: IncomingMessage) -> str:
    """The conversation a message belongs to under a session scope (see WECOM_SESSION_SCOPE)."""
    if scope not in WECOM_SCOPES:
        raise ValueError(f"WECOM_SESSION_SCOPE must be one of {', '.join(WECOM_SCOPES)}")
    if message.chat_type != "group" or scope == "user":
        return f"u:{message.user}"
    if scope == "group":
        return f"g:{message.chat_id}"
    return f"g:{message.chat_id}:u:{message.user}"


def allowed(settings: Settings, message: IncomingMessage) -> bool:
    """False for a group that is not on a non-empty WECOM_GROUP_ALLOWLIST."""
    listed = {c.strip() for c in settings.wecom_group_allowlist.split(",") if c.strip()}
    return message.chat_type != "group" or not listed or message.chat_id in listed


def question_text(content: str, quote: str) -> str:
    """The user's turn as the model sees it: the quoted message (if any) as context first."""
    if not quote:
        return content
    quoted = "\n".join(f"> {line}" for line in quote.splitlines())
    return f"Quoted message:\n{quoted}\n\n{content}"


# --- state in Redis ---


class Streams:
    """One hash per stream id: asker, chat, job, and how (and whether) the stream ended."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @staticmethod
    def key(stream_id: str) -> str:
        """Where a stream's state lives."""
        return key("wecom", "stream", stream_id)

    def put(self, stream_id: str, **fields: Any) -> None:
        """Set fields (and refresh the TTL)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.key(stream_id), mapping={k: str(v) for k, v in fields.items()})
            pipe.expire(self.key(stream_id), STREAM_TTL)
            pipe.execute()

    def get(self, stream_id: str) -> dict[str, str]:
        """The stream's state ({} if unknown or expired)."""
        return self.redis.hgetall(self.key(stream_id)) if stream_id else {}

    def claim(self, stream_id: str, how: str) -> bool:
        """Take the right to deliver the final answer (stream | response_url); first one wins."""
        return bool(self.redis.hsetnx(self.key(stream_id), "final_by", how))

    def delete(self, stream_id: str) -> None:
        """Forget a stream (an ingest that did not complete)."""
        self.redis.delete(self.key(stream_id))


_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _in_flight_key(user: str) -> str:
    return key("wecom", "inflight", user)


def admit(client: redis.Redis, user: str, stream_id: str, limit: int, stale_after: float) -> bool:
    """Count a new question against the person's limit; False when `limit` are already open."""
    now = time.time()
    args = [now - stale_after, limit, now, stream_id, int(stale_after) + 60]
    return bool(client.eval(_ADMIT, 1, _in_flight_key(user), *args))


def release(client: redis.Redis, user: str, stream_id: str) -> None:
    """The question's stream ended on WeCom's side: it no longer counts."""
    if user:
        client.zrem(_in_flight_key(user), stream_id)


def in_flight(client: redis.Redis, user: str) -> int:
    """How many of the person's questions are open now."""
    return int(client.zcard(_in_flight_key(user)))


# --- rendering ---


def _header(state: dict[str, str]) -> str:
    """In a group, the reply starts by naming the asker and quoting the question."""
    if state.get("chat_type") != "group":
        return ""
    question = " ".join(state.get("question", "").split())
    if len(question) > QUESTION_EXCERPT:
        question = question[: QUESTION_EXCERPT - 1] + "…"
    return f"> **@{state.get('asker', '')}**: {question}\n\n"


def _tail(text: str, limit: int) -> str:
    """The end of `text` in at most `limit` UTF-8 bytes, marked with a leading ellipsis."""
    if utf8_len(text) <= limit:
        return text
    budget, out = limit - utf8_len("…"), []
    for ch in reversed(text):
        budget -= utf8_len(ch)
        if budget < 0:
            break
        out.append(ch)
    return "…" + "".join(reversed(out))


def render_stream(settings: Settings, state: dict[str, str], now: dict[str, str]) -> str:
    """Stream content: `<think>` reasoning (if shown), the asker, the answer so far."""
    now = guards.screen_frame(settings, now)  # no listed term, not even for one refresh
    answer = now.get("answer", "")
    body = answer if answer else THINKING_TEXT
    main = fit_content(_header(state) + body, CONTENT_LIMIT - MIN_REASONING_BYTES // 2)
    reasoning = now.get("reasoning", "").strip()
    if not (settings.wecom_show_reasoning and reasoning):
        return main
    budget = CONTENT_LIMIT - utf8_len(main) - utf8_len("<think></think>\n\n")
    if budget < MIN_REASONING_BYTES:
        return main
    return f"<think>{_tail(reasoning, budget)}</think>\n\n{main}"


def render_markdown(state: dict[str, str], now: dict[str, str]) -> str:
    """The final answer as one Markdown message (no reasoning) for response_url."""
    return fit_content(_header(state) + (now.get("answer") or "…"))


# --- use cases ---


def _immediate(
    streams: Streams, stream_id: str, text: str, via: str = "immediate", reason: str | None = None
) -> Reply:
    """Answer without the model: a stream that is finished at once (retries get the same)."""
    streams.put(stream_id, final_by="immediate", finished=1, final_content=text)
    msg_key = streams.get(stream_id).get("key", "")
    if msg_key:
        Ledger(streams.redis).move(
            msg_key, "delivered", since=("received",), via=via, reason=reason
        )
    return Reply(stream_reply(stream_id, text, True), stream_id=stream_id)


def _finish(client: redis.Redis, state: dict[str, str], via: str) -> None:
    """The final answer went out (stream or response_url): the message's record says so."""
    msg_key = state.get("key", "")
    if msg_key:
        failed = progress.read(client, state.get("job_id", "")).get("state") == "failed"
        final = "apologized" if failed else "delivered"
        Ledger(client).move(msg_key, final, since=("*",), via=via)


def ingest(
    message: IncomingMessage,
    *,
    settings: Settings,
    client: redis.Redis,
    enqueue: Enqueue,
    via: str = "webhook",
) -> Reply:
    """Decide the reply to one callback: refresh, event, duplicate, command, notice or question."""
    if message.kind == "stream":
        return Reply(refresh(message.stream_id, settings=settings, client=client))
    if message.kind == "event":
        if message.event == "enter_chat":
            return Reply(text_reply(WELCOME_TEXT))
        return Reply()
    streams = Streams(client)
    stream_id = new_id()
    msg_key = message_key(CHANNEL, message.msg_id) if message.msg_id else ""
    # The state exists before the message is claimed, so a concurrent retry that finds the
    # claim always finds a stream to report on.
    streams.put(
        stream_id,
        asker=message.user,
        chat_id=message.chat_id,
        chat_type=message.chat_type,
        created_at=f"{time.time():.3f}",
        response_url=message.response_url,
        key=msg_key,
        via=via,  # "ws": the long-connection connector delivers it, not check_stream
    )
    ledger = Ledger(client)
    if msg_key:
        created, _tries = ledger.claim(
            msg_key,
            channel=CHANNEL,
            user=message.user,
            kind=message.kind,
            msg_id=message.msg_id,
            stream_id=stream_id,
            job_id=new_id(),
            request_id=message.request_id,
        )
        if not created:
            streams.delete(stream_id)
            record = ledger.get(msg_key)
            first = record.fields.get("stream_id", "") if record else ""
            job = record.job if record else None
            if record is not None and record.state == "received" and job is not None:
                # The first try failed after writing its job: send it again (run once).
                enqueue(job)
                ledger.move(msg_key, "queued", since=("received",))
            log.info("duplicate wecom message %s: answering with stream %s", message.msg_id, first)
            payload = refresh(first, settings=settings, client=client)
            return Reply(payload, stream_id=first, duplicate=True)
    try:
        return _decide(message, stream_id, streams, settings, client, enqueue)
    except Exception:
        # Not acknowledged: WeCom's retry must be taken, not found as a stale duplicate —
        # unless the job may already be queued (then the record stays and the sweeper owns it).
        try:
            record = ledger.get(msg_key) if msg_key else None
            if record is None or "job" not in record.fields:
                if msg_key:
                    ledger.forget(msg_key)
                streams.delete(stream_id)
                release(client, message.user, stream_id)
        except redis.RedisError:
            pass
        raise


def _decide(
    message: IncomingMessage,
    stream_id: str,
    streams: Streams,
    settings: Settings,
    client: redis.Redis,
    enqueue: Enqueue,
) -> Reply:
    if not allowed(settings, message):
        log.info("wecom group %s is not on the allowlist", message.chat_id)
        return _immediate(streams, stream_id, NOT_ALLOWED_TEXT)
    if moderation.is_blocked(client, CHANNEL, message.user):
        return _immediate(streams, stream_id, moderation.BLOCKED_TEXT)
    if message.kind not in ("text", "voice", "mixed"):
        return _immediate(streams, stream_id, commands.IMAGE_TEXT)
    content = message.content
    if message.chat_type == "group":
        content = strip_mention(content, settings.wecom_bot_name)
    if not content:
        if message.kind == "voice":
            return _immediate(streams, stream_id, commands.EMPTY_VOICE_TEXT)
        if message.kind == "mixed":
            return _immediate(streams, stream_id, commands.IMAGE_TEXT)
        return _immediate(streams, stream_id, EMPTY_TEXT)
    scope = scope_key(settings.wecom_session_scope, message)
    command = commands.match_command(content)
    if command == "help":
        return _immediate(streams, stream_id, HELP_TEXT)
    if command == "reset":
        conversations(settings, client).reset(CHANNEL, scope)
        return _immediate(streams, stream_id, RESET_TEXTS[settings.wecom_session_scope])
    if (choice := commands.think_choice(content)) is not None:
        reply = thinking.choose(settings, client, CHANNEL, scope, message.user, choice)
        return _immediate(streams, stream_id, reply)
    group = message.chat_id if message.chat_type == "group" else ""
    verdict = guards.check_question(
        settings, client, channel=CHANNEL, user=message.user, text=content, group=group
    )
    if verdict is not None:  # rate limit or content safety: a polite notice, nothing queued
        return _immediate(streams, stream_id, verdict.reply, verdict.via, reason=verdict.rule)
    limit = settings.wecom_max_in_flight
    stale_after = settings.wecom_stream_window + 60
    if not admit(client, message.user, stream_id, limit, stale_after):
        log.info("wecom user %s has %d questions in progress: notice", message.user, limit)
        return _immediate(streams, stream_id, BUSY_TEXT.format(n=limit))
    msg_key = message_key(CHANNEL, message.msg_id or stream_id)
    record = Ledger(client).get(msg_key) if message.msg_id else None
    job = Job(
        key=msg_key,
        job_id=record.fields["job_id"] if record else new_id(),
        request_id=message.request_id,
        channel=CHANNEL,
        user=scope,  # the conversation key: answer() reads and writes this thread
        account=message.account,
        text=question_text(content, message.quote),
        msg_id=message.msg_id,
        received_at=message.received_at,
        reply_mode="stream",
        stream_id=stream_id,
        asker=message.user,
        chat_id=message.chat_id,
        chat_type=message.chat_type,
    )
    if record is None:  # no msgid to dedupe on: a record of its own all the same
        Ledger(client).claim(msg_key, channel=CHANNEL, user=message.user, job_id=job.job_id)
    streams.put(stream_id, job_id=job.job_id, scope=scope, question=content[:500], key=msg_key)
    decision = enqueue_job(job, Ledger(client), client, enqueue, kind=message.kind)
    if decision.busy:
        Ledger(client).forget(msg_key)
        release(client, message.user, stream_id)
        return _immediate(streams, stream_id, QUEUE_BUSY_TEXT)
    state = streams.get(stream_id)
    content_now = render_stream(settings, state, {"state": "queued"})
    return Reply(stream_reply(stream_id, content_now, False), job=job, stream_id=stream_id)


def refresh(stream_id: str, *, settings: Settings, client: redis.Redis) -> dict[str, Any]:
    """The reply to a stream-refresh callback: the full text so far, finished when it is done."""
    streams = Streams(client)
    state = streams.get(stream_id)
    if not state:
        return stream_reply(stream_id, EXPIRED_TEXT, True)
    if state.get("finished") == "1":
        return stream_reply(stream_id, state.get("final_content", ""), True)
    job_id = state.get("job_id", "")
    if not job_id:  # the first callback is still being taken in
        return stream_reply(stream_id, render_stream(settings, state, {}), False)
    now = progress.read(client, job_id)
    if now.get("state") in DONE_STATES:
        if streams.claim(stream_id, "stream"):
            content = render_stream(settings, state, now)
            streams.put(stream_id, finished=1, final_content=content)
            release(client, state.get("asker", ""), stream_id)
            _finish(client, state, "stream")
            jobs.record(client, job_id, "delivered", via="stream")
            return stream_reply(stream_id, content, True)
        # A check task already sent the answer to response_url (or a concurrent refresh won).
        state = streams.get(stream_id)
        if state.get("final_by") == "stream" and state.get("final_content"):
            return stream_reply(stream_id, state["final_content"], True)
        return stream_reply(stream_id, ELSEWHERE_TEXT, True)
    if time.time() - float(state.get("created_at", 0)) >= settings.wecom_stream_window:
        # Close the stream before WeCom gives up on it; the check task posts the answer later.
        content = fit_content(
            render_stream(settings, state, now), CONTENT_LIMIT - utf8_len(HANDOVER_NOTE) - 2
        )
        content = f"{content}\n\n{HANDOVER_NOTE}"
        streams.put(stream_id, finished=1, handed_over=1, final_content=content)
        release(client, state.get("asker", ""), stream_id)
        jobs.record(client, job_id, "handed_over")
        log.info("wecom stream %s closed at the window; answer goes to response_url", stream_id)
        return stream_reply(stream_id, content, True)
    return stream_reply(stream_id, render_stream(settings, state, now), False)


def check_stream(
    stream_id: str, *, settings: Settings, client: redis.Redis, post: PostMarkdown
) -> str:
    """Post the answer to response_url unless a refresh delivered it; returns what happened.

    finished | posted | pending (answer not ready) | gone | expired | no_url. Raises the
    poster's error when the post fails (the task retries; the claim stays with response_url).
    """
    streams = Streams(client)
    state = streams.get(stream_id)
    if not state:
        return "gone"
    if state.get("final_by") in ("stream", "immediate"):
        return "finished"
    if state.get("via") == "ws":
        return "connector"  # the long connection pushes it (bot.channels.wecom.connector)
    if state.get("posted_at"):
        return "posted"
    job_id = state.get("job_id", "")
    now = progress.read(client, job_id) if job_id else {}
    if now.get("state") not in DONE_STATES:
        return "pending"
    if not state.get("final_by") and not streams.claim(stream_id, "response_url"):
        return "finished"  # a refresh took it between our read and our claim
    url = state.get("response_url", "")
    if not url:
        log.warning("wecom stream %s ended without a response_url: answer not delivered", stream_id)
        _undeliverable(client, state, "no response_url")
        return "no_url"
    if time.time() - float(state.get("created_at", 0)) > RESPONSE_URL_TTL:
        log.warning("wecom stream %s: response_url expired before the answer", stream_id)
        _undeliverable(client, state, "response_url expired")
        return "expired"
    post(url, render_markdown(state, now))
    closed = {} if state.get("finished") == "1" else {"final_content": ELSEWHERE_TEXT}
    streams.put(stream_id, posted_at=f"{time.time():.3f}", finished=1, **closed)
    release(client, state.get("asker", ""), stream_id)
    _finish(client, state, "response_url")
    jobs.record(client, job_id, "delivered", via="response_url")
    log.info("wecom stream %s: answer posted to response_url", stream_id)
    return "posted"


def _undeliverable(client: redis.Redis, state: dict[str, str], why: str) -> None:
    """No way left to reach the asker: the record keeps the answer, parked, with the reason."""
    if state.get("key"):
        Ledger(client).move(state["key"], "parked", since=("*",), parked_because=why)


def show_final(client: redis.Redis, result: Answer) -> None:
    """Make a finished answer what the next stream refresh shows (an apology, a stored answer)."""
    if progress.read(client, result.job_id).get("state") in DONE_STATES:
        return
    state = "failed" if result.apology else "done"
    progress.ProgressWriter(client, result.job_id).finish(result.answer, result.reasoning, state)


def give_up(client: redis.Redis, stream_id: str, why: str) -> None:
    """response_url refused the answer for good: the record keeps it, parked, with the reason."""
    _undeliverable(client, Streams(client).get(stream_id), why)
