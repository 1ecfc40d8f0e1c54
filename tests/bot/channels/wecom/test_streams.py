"""WeCom use cases with a real Redis: group threads, limits, streams and the response_url fallback.

The response_url poster is a recorder here: these tests are about who delivers the final answer
and how often; the real HTTP post is exercised in test_wecom_api.py and the integration tests.
"""

from __future__ import annotations

import pytest
import redis

from bot.channels.wecom import streams as wecom
from bot.channels.wecom.protocol import CONTENT_LIMIT
from bot.core import jobs, progress
from bot.core.contracts import Answer, IncomingMessage, Job
from bot.core.progress import ProgressWriter
from bot.core.settings import Settings
from bot.engine.factory import get_engine
from bot.pipeline import commands, moderation
from bot.pipeline.answer import answer
from bot.pipeline.conversations import conversations
from bot.pipeline.ingest import BUSY_TEXT, QueueFull
from bot.pipeline.ledger import Ledger
from bot.text.split import utf8_len
from tests.helpers import make_job, unique


def msg(
    text: str = "@MiMo what is 2+2?",
    *,
    user: str | None = None,
    chat: str | None = "",
    kind: str = "text",
    msg_id: str | None = None,
    quote: str = "",
    event: str = "",
) -> IncomingMessage:
    chat_id = unique("g") if chat == "" else (chat or "")
    return IncomingMessage(
        channel="wecom",
        user=user or unique("u"),
        account="AIBOT",
        kind=kind,
        content=text,
        msg_id=unique("m") if msg_id is None else msg_id,
        event=event,
        chat_id=chat_id,
        chat_type="group" if chat_id else "single",
        quote=quote,
        response_url="https://example.invalid/response?response_code=abc",
    )


class Queue:
    """Stands in for the broker: these tests look at the decision, not at Celery."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def __call__(self, job: Job) -> None:
        self.jobs.append(job)


def ingest(message: IncomingMessage, settings: Settings, client: redis.Redis, queue: Queue):  # noqa: ANN201
    return wecom.ingest(message, settings=settings, client=client, enqueue=queue)


def stream(reply: wecom.Reply) -> dict:
    assert reply.payload is not None and reply.payload["msgtype"] == "stream"
    return reply.payload["stream"]


@pytest.mark.parametrize(
    ("text", "bot_name", "expected"),
    [
        ("@MiMo what is 2+2", "", "what is 2+2"),
        ("@MiMo\u2005你好", "", "你好"),
        ("  @MiMo   hi there", "", "hi there"),
        ("@MiMo @alice who is she?", "", "@alice who is she?"),
        ("@MiMo", "", ""),
        ("no mention here", "", "no mention here"),
        ("hello @MiMo how are you", "MiMo", "hello how are you"),
        ("translate this @Mi Mo", "Mi Mo", "translate this"),
        ("@MiMo-bot hi", "MiMo", "@MiMo-bot hi"),
        ("@MiMo email a@b.c", "MiMo", "email a@b.c"),
    ],
)
def test_strip_mention(text: str, bot_name: str, expected: str) -> None:
    assert wecom.strip_mention(text, bot_name) == expected


@pytest.mark.parametrize(
    ("scope", "chat", "expected"),
    [
        ("user_in_group", "g1", "g:g1:u:alice"),
        ("user_in_group", None, "u:alice"),
        ("group", "g1", "g:g1"),
        ("group", None, "u:alice"),
        ("user", "g1", "u:alice"),
        ("user", None, "u:alice"),
    ],
)
def test_scope_key(scope: str, chat: str | None, expected: str) -> None:
    assert wecom.scope_key(scope, msg(user="alice", chat=chat)) == expected


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="WECOM_SESSION_SCOPE"):
        wecom.scope_key("everyone", msg())


@pytest.mark.parametrize(
    ("allowlist", "chat", "ok"),
    [("", "g1", True), ("g1, g2", "g2", True), ("g1,g2", "g3", False), ("g1", None, True)],
)
def test_group_allowlist(settings: Settings, allowlist: str, chat: str | None, ok: bool) -> None:
    s = settings.replace(wecom_group_allowlist=allowlist)
    assert wecom.allowed(s, msg(chat=chat)) is ok


def test_question_in_group_is_enqueued_in_the_askers_thread(
    settings: Settings, redis_client: redis.Redis
) -> None:
    queue = Queue()
    m = msg("@MiMo what is 2+2?", user="alice", chat=unique("g"))
    reply = ingest(m, settings, redis_client, queue)
    [job] = queue.jobs
    assert (job.user, job.asker, job.text) == (
        f"g:{m.chat_id}:u:alice",
        "alice",
        "what is 2+2?",
    )
    shown = stream(reply)
    assert (shown["id"], shown["finish"]) == (job.stream_id, False)
    assert shown["content"].startswith("> **@alice**: what is 2+2?")
    assert wecom.THINKING_TEXT in shown["content"]
    assert jobs.get(redis_client, job.job_id)["scope"] == job.user
    state = wecom.Streams(redis_client).get(job.stream_id)
    assert state["job_id"] == job.job_id


def test_quote_becomes_context(settings: Settings, redis_client: redis.Redis) -> None:
    queue = Queue()
    ingest(msg("@MiMo is this right?", quote="2+2=5"), settings, redis_client, queue)
    assert queue.jobs[0].text == "Quoted message:\n> 2+2=5\n\nis this right?"


def test_repeated_msgid_is_one_question(settings: Settings, redis_client: redis.Redis) -> None:
    queue = Queue()
    m = msg(msg_id=unique("dup"))
    replies = [ingest(m, settings, redis_client, queue) for _ in range(3)]
    assert len(queue.jobs) == 1
    assert [r.duplicate for r in replies] == [False, True, True]
    assert {stream(r)["id"] for r in replies} == {queue.jobs[0].stream_id}
    assert wecom.in_flight(redis_client, m.user) == 1


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (msg("@MiMo /help"), wecom.HELP_TEXT),
        (msg("@MiMo 帮助"), wecom.HELP_TEXT),
        (msg("@MiMo"), wecom.EMPTY_TEXT),
        (msg("", kind="image", chat=None), commands.IMAGE_TEXT),
        (msg("", kind="file", chat=None), commands.IMAGE_TEXT),
        (msg("", kind="voice", chat=None), commands.EMPTY_VOICE_TEXT),
        (msg("@MiMo", kind="mixed"), commands.IMAGE_TEXT),
    ],
)
def test_answers_without_the_model(
    settings: Settings, redis_client: redis.Redis, message: IncomingMessage, text: str
) -> None:
    queue = Queue()
    reply = ingest(message, settings, redis_client, queue)
    assert queue.jobs == []
    assert (stream(reply)["content"], stream(reply)["finish"]) == (text, True)
    again = wecom.refresh(reply.stream_id, settings=settings, client=redis_client)
    assert again["stream"]["content"] == text  # a refresh or retry gets the same reply


@pytest.mark.parametrize(
    ("scope", "reset_by", "forgotten"),
    [
        ("user_in_group", "alice", {"alice-here"}),
        ("group", "bob", {"group"}),
        ("user", "alice", {"alice-here", "alice-elsewhere"}),
    ],
)
def test_reset_works_per_scope(
    settings: Settings, redis_client: redis.Redis, scope: str, reset_by: str, forgotten: set
) -> None:
    s = settings.replace(wecom_session_scope=scope)
    chat, other = unique("g"), unique("g")
    store = conversations(s, redis_client)
    threads = {
        "alice-here": f"g:{chat}:u:alice",
        "bob-here": f"g:{chat}:u:bob",
        "alice-elsewhere": f"g:{other}:u:alice",
        "group": f"g:{chat}",
    }
    if scope == "user":
        threads["alice-here"] = threads["alice-elsewhere"] = "u:alice"
    for name, thread in threads.items():
        job = make_job(thread, name, channel="wecom", mode="stream")
        store.record(job, Answer(job=job, answer="ok"))
    reply = ingest(msg("@MiMo /reset", user=reset_by, chat=chat), s, redis_client, Queue())
    assert stream(reply)["content"] == wecom.RESET_TEXTS[scope]
    emptied = {name for name, thread in threads.items() if not store.history("wecom", thread)}
    assert emptied == forgotten


def test_fourth_question_in_flight_gets_the_notice(
    settings: Settings, redis_client: redis.Redis
) -> None:
    queue, user, chat = Queue(), unique("u"), unique("g")
    replies = [ingest(msg(f"@MiMo q{i}", user=user, chat=chat), settings, redis_client, queue)
               for i in range(4)]  # fmt: skip
    assert len(queue.jobs) == 3
    assert [stream(r)["finish"] for r in replies] == [False, False, False, True]
    assert stream(replies[3])["content"] == wecom.BUSY_TEXT.format(n=3)
    other = ingest(msg("@MiMo me too", chat=chat), settings, redis_client, queue)
    assert not stream(other)["finish"]  # the limit is per person
    # The first answer finishes on a refresh: the person may ask again.
    ProgressWriter(redis_client, queue.jobs[0].job_id).finish("4", "")
    wecom.refresh(replies[0].stream_id, settings=settings, client=redis_client)
    again = ingest(msg("@MiMo q5", user=user, chat=chat), settings, redis_client, queue)
    assert not stream(again)["finish"]


def test_group_not_on_the_allowlist_is_told_so(
    settings: Settings, redis_client: redis.Redis
) -> None:
    s = settings.replace(wecom_group_allowlist="g-allowed")
    queue = Queue()
    refused = ingest(msg(chat="g-other"), s, redis_client, queue)
    assert stream(refused)["content"] == wecom.NOT_ALLOWED_TEXT
    ingest(msg(chat="g-allowed"), s, redis_client, queue)
    ingest(msg("what is 2+2?", chat=None), s, redis_client, queue)
    assert len(queue.jobs) == 2


@pytest.mark.parametrize(("event", "payload"), [("enter_chat", True), ("feedback", False)])
def test_events(settings: Settings, redis_client: redis.Redis, event: str, payload: bool) -> None:
    reply = ingest(msg(kind="event", event=event, chat=None), settings, redis_client, Queue())
    if payload:
        assert reply.payload == {"msgtype": "text", "text": {"content": wecom.WELCOME_TEXT}}
    else:
        assert reply.payload is None


def test_enqueue_failure_keeps_the_question_and_the_retry_sends_it_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """The broker failed mid-publish: the job may or may not be queued, so it is kept."""
    sent: list[Job] = []

    def broken(job: Job) -> None:
        sent.append(job)
        raise ConnectionError("broker down")

    m = msg(msg_id=unique("m"))
    with pytest.raises(ConnectionError):
        wecom.ingest(m, settings=settings, client=redis_client, enqueue=broken)
    queue = Queue()
    reply = ingest(m, settings, redis_client, queue)  # WeCom's retry
    assert reply.duplicate and [j.job_id for j in queue.jobs] == [sent[0].job_id]
    record = Ledger(redis_client).get(sent[0].key)
    assert record is not None and record.state == "queued"


def start(settings: Settings, client: redis.Redis, **kw: object) -> tuple[Job, wecom.Reply]:
    queue = Queue()
    reply = ingest(msg(**kw), settings, client, queue)  # type: ignore[arg-type]
    return queue.jobs[0], reply


def test_refresh_shows_text_so_far_then_finishes_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    job, reply = start(settings, redis_client, user="alice")
    sid, writer = reply.stream_id, ProgressWriter(redis_client, job.job_id, min_interval=0)
    writer.add("reasoning", "Two plus two")
    thinking = wecom.refresh(sid, settings=settings, client=redis_client)["stream"]
    assert not thinking["finish"]
    assert thinking["content"].startswith("<think>Two plus two</think>\n\n> **@alice**")
    hidden = settings.replace(wecom_show_reasoning=False)
    assert (
        "<think>"
        not in wecom.refresh(sid, settings=hidden, client=redis_client)["stream"]["content"]
    )
    writer.add("answer", "The answer")
    assert wecom.refresh(sid, settings=hidden, client=redis_client)["stream"]["content"].endswith(
        "The answer"
    )
    writer.finish("The answer is 4.", "Two plus two is four.")
    done = wecom.refresh(sid, settings=settings, client=redis_client)["stream"]
    assert done["finish"] and done["content"].endswith("The answer is 4.")
    assert wecom.refresh(sid, settings=settings, client=redis_client)["stream"] == done
    assert jobs.get(redis_client, job.job_id)["via"] == "stream"
    posted: list[tuple[str, str]] = []
    outcome = wecom.check_stream(
        sid, settings=settings, client=redis_client, post=lambda *a: posted.append(a)
    )
    assert (outcome, posted) == ("finished", [])


def test_answer_ready_without_refresh_goes_to_response_url_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    job, reply = start(settings, redis_client, user="bob")
    posted: list[tuple[str, str]] = []

    def check() -> str:
        return wecom.check_stream(
            reply.stream_id,
            settings=settings,
            client=redis_client,
            post=lambda *a: posted.append(a),
        )

    assert check() == "pending"
    ProgressWriter(redis_client, job.job_id).finish("Four.", "reasoning")
    assert [check(), check()] == ["posted", "posted"]
    [(url, content)] = posted
    assert url.endswith("response_code=abc")
    assert content.startswith("> **@bob**") and content.endswith("Four.")
    assert "reasoning" not in content
    late = wecom.refresh(reply.stream_id, settings=settings, client=redis_client)["stream"]
    assert (late["finish"], late["content"]) == (True, wecom.ELSEWHERE_TEXT)
    assert wecom.in_flight(redis_client, "bob") == 0


def test_failed_post_is_retried_without_losing_the_claim(
    settings: Settings, redis_client: redis.Redis
) -> None:
    job, reply = start(settings, redis_client)
    ProgressWriter(redis_client, job.job_id).finish("Four.", "")

    def down(_url: str, _content: str) -> None:
        raise ConnectionError("response_url unreachable")

    with pytest.raises(ConnectionError):
        wecom.check_stream(reply.stream_id, settings=settings, client=redis_client, post=down)
    refreshed = wecom.refresh(reply.stream_id, settings=settings, client=redis_client)["stream"]
    assert refreshed["content"] == wecom.ELSEWHERE_TEXT  # the claim stays with response_url
    posted: list = []
    outcome = wecom.check_stream(
        reply.stream_id, settings=settings, client=redis_client, post=lambda *a: posted.append(a)
    )
    assert (outcome, len(posted)) == ("posted", 1)


def test_stream_window_closes_the_stream_and_hands_over(
    settings: Settings, redis_client: redis.Redis
) -> None:
    s = settings.replace(wecom_stream_window=0.0)
    job, reply = start(s, redis_client, user="carol")
    ProgressWriter(redis_client, job.job_id, min_interval=0).add("answer", "Partial")
    closed = wecom.refresh(reply.stream_id, settings=s, client=redis_client)["stream"]
    assert closed["finish"]
    assert "Partial" in closed["content"] and closed["content"].endswith(wecom.HANDOVER_NOTE)
    assert wecom.in_flight(redis_client, "carol") == 0  # WeCom's interaction is over
    posted: list = []

    def check() -> str:
        return wecom.check_stream(
            reply.stream_id, settings=s, client=redis_client, post=lambda *a: posted.append(a)
        )

    assert check() == "pending"
    ProgressWriter(redis_client, job.job_id).finish("Partial answer, now complete.", "")
    assert check() == "posted"
    assert posted[0][1].endswith("Partial answer, now complete.")
    again = wecom.refresh(reply.stream_id, settings=s, client=redis_client)["stream"]
    assert again == closed


def test_check_without_response_url_or_state(settings: Settings, redis_client: redis.Redis) -> None:
    queue = Queue()
    m = msg()
    m.response_url = ""
    reply = ingest(m, settings, redis_client, queue)
    ProgressWriter(redis_client, queue.jobs[0].job_id).finish("x", "")
    args = {"settings": settings, "client": redis_client, "post": lambda *a: None}
    assert wecom.check_stream(reply.stream_id, **args) == "no_url"
    assert wecom.check_stream(unique("nostream"), **args) == "gone"
    unknown = wecom.refresh(unique("nostream"), settings=settings, client=redis_client)
    assert unknown["stream"]["content"] == wecom.EXPIRED_TEXT


@pytest.mark.parametrize(
    ("answer_bytes", "reasoning_bytes"),
    [(100, 100), (100, 50_000), (30_000, 100), (30_000, 30_000)],
)
def test_rendered_content_fits_and_keeps_the_answer(
    answer_bytes: int, reasoning_bytes: int
) -> None:
    s = Settings()
    state = {"chat_type": "group", "asker": "dave", "question": "q" * 200}
    now = {"state": "done", "answer": "a" * answer_bytes, "reasoning": "r" * reasoning_bytes}
    content = wecom.render_stream(s, state, now)
    assert utf8_len(content) <= CONTENT_LIMIT
    assert content.count("a") >= min(answer_bytes, CONTENT_LIMIT - 1000)
    if answer_bytes < 1000:
        assert content.startswith("<think>") and content.endswith("a" * answer_bytes)
    assert "> **@dave**: " + "q" * (wecom.QUESTION_EXCERPT - 1) + "…" in content
    single = wecom.render_stream(s, {"chat_type": "single"}, now)
    assert "**@" not in single


def test_answer_with_the_tiny_engine_lands_in_the_scope_thread(
    settings: Settings, redis_client: redis.Redis
) -> None:
    job, reply = start(settings, redis_client, user="erin", chat="g-tiny-" + unique(""))
    answer(job, settings=settings, client=redis_client, engine=get_engine(settings))
    assert progress.read(redis_client, job.job_id)["state"] == "done"
    history = conversations(settings, redis_client).history("wecom", job.user)
    assert [m["role"] for m in history] == ["user", "assistant"]
    final = wecom.refresh(reply.stream_id, settings=settings, client=redis_client)["stream"]
    assert final["finish"] and final["content"].endswith(history[1]["content"])


def test_blocked_person_and_full_queue_get_a_notice_and_no_job(
    settings: Settings, redis_client: redis.Redis
) -> None:
    user = unique("u")
    moderation.block(redis_client, "wecom", user)
    queue = Queue()
    blocked = ingest(msg(user=user), settings, redis_client, queue)
    assert (stream(blocked)["content"], queue.jobs) == (moderation.BLOCKED_TEXT, [])

    def full(_job: Job) -> None:
        raise QueueFull("9 waiting, limit 9")

    other = unique("u")
    busy = wecom.ingest(msg(user=other), settings=settings, client=redis_client, enqueue=full)
    assert (stream(busy)["content"], stream(busy)["finish"]) == (BUSY_TEXT, True)
    assert wecom.in_flight(redis_client, other) == 0
