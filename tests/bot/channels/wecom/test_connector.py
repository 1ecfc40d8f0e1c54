"""The connector with real parts: the fake WeCom server on 127.0.0.1, a real Redis, the real ingest.

The enqueue function records each Job and the test plays the worker's part by writing the
job's progress with the real `ProgressWriter`, as generation does — so each test decides how
the answer grows and when it ends. The live worker is in tests/integration/test_wecom_ws.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from bot.channels.wecom import frames, streams
from bot.channels.wecom.connector import Connector
from bot.channels.wecom.lease import holder
from bot.channels.wecom.protocol import CONTENT_LIMIT, TRUNCATED_NOTE
from bot.channels.wecom.ws_sandbox import FakeWeCom
from bot.core.contracts import Job
from bot.core.progress import ProgressWriter
from bot.core.settings import Settings
from bot.core.store import Unavailable, key
from bot.pipeline.ingest import BUSY_TEXT, QueueFull
from bot.pipeline.ledger import Ledger
from bot.text.split import utf8_len
from tests.bot.channels.wecom.ws_helpers import run, until
from tests.helpers import unique

SECRET = "s3cret"


@dataclass
class Rig:
    """A fake WeCom, a connector on it, and the jobs it enqueued."""

    fake: FakeWeCom
    bot: str
    settings: Settings
    client: redis.Redis
    jobs: list[Job] = field(default_factory=list)
    connectors: list[Connector] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stops: list[asyncio.Event] = field(default_factory=list)

    def start(self, **options: Any) -> Connector:
        """One more connector process (as `wecom-connect` would run)."""
        defaults = {"interval": 0.05, "lease_ttl": 1.0, "backoff_base": 0.05, "backoff_max": 0.2}
        connector = Connector(self.settings, self.client, self.jobs.append, **defaults, **options)
        stop = asyncio.Event()
        self.connectors.append(connector)
        self.stops.append(stop)
        self.tasks.append(asyncio.create_task(connector.run(stop)))
        return connector

    async def stop(self, index: int) -> None:
        """Stop one connector as SIGTERM does."""
        self.stops[index].set()
        await self.tasks[index]

    async def job(self, count: int = 1) -> Job:
        """The `count`-th job enqueued (waits for it)."""
        await until(lambda: len(self.jobs) >= count, what=f"{count} jobs enqueued")
        return self.jobs[count - 1]

    def frames_of(self, chat: str) -> list[str]:
        """Every stream content the chat was shown, in order."""
        return [c for s in self.fake.stream_in(chat) for c in s.contents]

    def state(self, job: Job) -> str:
        record = Ledger(self.client).get(job.key)
        return record.state if record else ""


def job_key(job: Job) -> str:
    return key("job", job.job_id)


@contextlib.asynccontextmanager
async def rig(settings: Settings, redis_client: redis.Redis, **changes: Any) -> AsyncIterator[Rig]:
    bot = unique("bot")
    fake = FakeWeCom({bot: SECRET}, stream_limit=changes.pop("stream_limit", 360.0))
    await fake.start()
    changed = settings.replace(
        wecom_bot_id=bot, wecom_bot_secret=SECRET, wecom_ws_url=fake.url, **changes
    )
    the_rig = Rig(fake, bot, changed, redis_client)
    try:
        yield the_rig
    finally:
        for stop in the_rig.stops:
            stop.set()
        await asyncio.gather(*the_rig.tasks, return_exceptions=True)
        await fake.stop()
        # The connector's threads opened connections of their own: close them all now.
        redis_client.connection_pool.disconnect()


async def grow(client: redis.Redis, job: Job, parts: list[str], state: str = "done") -> str:
    """Play the worker: the answer grows part by part, then is finished."""
    writer = ProgressWriter(client, job.job_id, min_interval=0)
    writer.add("reasoning", "Let me think.")
    for part in parts:
        writer.add("answer", part)
        await asyncio.sleep(0.12)
    writer.finish("".join(parts), "Let me think.", state)
    return "".join(parts)


@pytest.mark.parametrize(
    "parts",
    [
        ["Line one.\n", "Line two.\n\n", "- item\n- item two"],  # newlines kept
        ["word " * 40, "more " * 200, "end " * 100],  # far beyond 600 characters
    ],
    ids=["newlines", "long"],
)
def test_group_question_is_answered_by_growing_stream_frames(
    settings: Settings, redis_client: redis.Redis, parts: list[str]
) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client, wecom_show_reasoning=False) as r:
            r.start()
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            group = unique("g")
            await r.fake.say(r.bot, "alice", "@MiMo tell me", chat_id=group)
            job = await r.job()
            assert job.reply_mode == "stream" and job.chat_id == group
            answer = await grow(redis_client, job, parts)
            await until(lambda: r.state(job) == "delivered", what="delivered")
            (stream,) = r.fake.stream_in(group)
            assert stream.finished and answer in stream.content  # the whole answer, newlines kept
            assert stream.contents[0].endswith(streams.THINKING_TEXT)
            assert len(stream.contents) >= 3  # it grew on the way
            assert len(set(stream.contents[:-1])) == len(stream.contents) - 1  # never twice
            assert not r.fake.pushed and not r.fake.refused
            record = Ledger(redis_client).get(job.key)
            assert record is not None and record.fields.get("via") == "ws_stream"

    run(scenario())


def test_an_answer_over_the_byte_limit_ends_with_the_note(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client) as r:
            r.start()
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            await r.fake.say(r.bot, "bob", "essay please")
            job = await r.job()
            await grow(redis_client, job, ["长" * 4000, "文" * 4000])
            await until(lambda: r.state(job) == "delivered", what="delivered")
            (stream,) = r.fake.stream_in("bob")
            assert stream.finished and stream.content.endswith(TRUNCATED_NOTE)
            assert max(utf8_len(c) for c in stream.contents) <= CONTENT_LIMIT

    run(scenario())


@pytest.mark.parametrize(
    ("text", "expected"),
    [("/help", streams.HELP_TEXT), ("@MiMo", streams.EMPTY_TEXT)],
)
def test_commands_and_notices_finish_at_once(
    settings: Settings, redis_client: redis.Redis, text: str, expected: str
) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client) as r:
            r.start()
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            group = unique("g")
            await r.fake.say(r.bot, "carol", text, chat_id=group)
            await until(lambda: bool(r.fake.stream_in(group)), what="the reply")
            (stream,) = r.fake.stream_in(group)
            assert stream.finished and stream.contents == [expected]
            assert not r.jobs

    run(scenario())


def test_a_redelivered_msgid_gets_no_second_answer(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client) as r:
            r.start()
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            group, msg_id = unique("g"), unique("m")
            await r.fake.say(r.bot, "dave", "@MiMo hi", chat_id=group, msg_id=msg_id)
            job = await r.job()
            await r.fake.say(r.bot, "dave", "@MiMo hi", chat_id=group, msg_id=msg_id)
            await grow(redis_client, job, ["hello"])
            await until(lambda: r.state(job) == "delivered", what="delivered")
            await asyncio.sleep(0.3)
            assert len(r.jobs) == 1 and len(r.fake.stream_in(group)) == 1
            assert not r.fake.pushed

    run(scenario())


def test_two_people_in_one_group_keep_separate_threads(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client) as r:
            r.start()
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            group = unique("g")
            await r.fake.say(r.bot, "erin", "@MiMo one", chat_id=group)
            await r.fake.say(r.bot, "frank", "@MiMo two", chat_id=group)
            await r.job(2)
            # The two callbacks are taken in concurrently: find each person's job by its asker.
            first, second = sorted(r.jobs, key=lambda j: j.asker)
            assert (first.asker, second.asker) == ("erin", "frank")
            assert {first.user, second.user} == {f"g:{group}:u:erin", f"g:{group}:u:frank"}
            await grow(redis_client, first, ["for erin"])
            await grow(redis_client, second, ["for frank"])
            await until(lambda: r.state(first) == r.state(second) == "delivered", what="both")
            contents = [s.content for s in r.fake.stream_in(group)]
            assert any("@erin" in c and "for erin" in c for c in contents)
            assert any("@frank" in c and "for frank" in c for c in contents)

    run(scenario())


def test_past_the_stream_window_the_answer_is_handed_over_to_send_msg(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        # The fake expires streams after 2 s (846608); the connector closes them at 1 s.
        async with rig(settings, redis_client, wecom_stream_window=1.0, stream_limit=2.0) as r:
            r.start()
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            group = unique("g")
            await r.fake.say(r.bot, "gina", "@MiMo slow one", chat_id=group)
            job = await r.job()
            writer = ProgressWriter(redis_client, job.job_id, min_interval=0)
            writer.add("answer", "partial…")
            await until(lambda: any(s.finished for s in r.fake.stream_in(group)), 5, "handover")
            (stream,) = r.fake.stream_in(group)
            assert stream.content.endswith(streams.HANDOVER_NOTE)
            await asyncio.sleep(2.2)  # past WeCom's limit too: nothing may touch the stream
            writer.finish("partial… and the whole answer", "", "done")
            await until(lambda: r.state(job) == "delivered", what="delivered")
            await asyncio.sleep(0.3)
            assert r.fake.pushed == {group: [r.fake.pushed[group][0]]}  # exactly once
            assert "the whole answer" in r.fake.pushed[group][0]
            assert (frames.RESPOND, frames.ERR_STREAM_EXPIRED) not in r.fake.refused
            record = Ledger(redis_client).get(job.key)
            assert record is not None and record.fields.get("via") == "send_msg"

    run(scenario())


@pytest.mark.parametrize("how", ["close", "drop", "replaced"])
def test_an_answer_in_flight_across_a_reconnect_is_delivered_once(
    settings: Settings, redis_client: redis.Redis, how: str
) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client) as r:
            connector = r.start(displaced_delay=0.2)
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            await r.fake.say(r.bot, "hank", "@MiMo question")
            job = await r.job()
            if how == "close":
                await r.fake.close(r.bot)
            elif how == "drop":
                await r.fake.drop(r.bot)
            else:  # another connection for the bot (outside this deployment) takes over
                await r.fake.event(r.bot, "hank", "disconnected_event")
                await r.fake.close(r.bot)
            await until(lambda: connector.client.sessions >= 2, 10, "reconnected")
            await grow(redis_client, job, ["after ", "the reconnect"])
            await until(lambda: r.state(job) == "delivered", what="delivered")
            await asyncio.sleep(0.3)
            assert r.fake.pushed == {"hank": [r.fake.pushed["hank"][0]]}
            assert "after the reconnect" in r.fake.pushed["hank"][0]

    run(scenario())


def test_a_failed_generation_is_apologized_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client) as r:
            r.start()
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            await r.fake.say(r.bot, "ivan", "question")
            job = await r.job()
            await grow(redis_client, job, ["Sorry, something went wrong."], state="failed")
            await until(lambda: r.state(job) == "apologized", what="apologized")

    run(scenario())


def test_enter_chat_is_greeted(settings: Settings, redis_client: redis.Redis) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client) as r:
            r.start()
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            await r.fake.event(r.bot, "judy", "enter_chat")
            await until(lambda: bool(r.fake.welcomes), what="the welcome")
            assert r.fake.welcomes[0]["text"]["content"] == streams.WELCOME_TEXT

    run(scenario())


def test_one_connection_per_bot_and_a_takeover_resumes_pending_answers(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client) as r:
            first = r.start()
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            second = r.start()
            await asyncio.sleep(1.5)  # longer than the lease's TTL: it is renewed, not taken
            assert len(r.fake.subscribes) == 1 and second.client.sessions == 0
            assert holder(redis_client, r.bot).startswith(first.owner)
            await r.fake.say(r.bot, "kate", "question")
            job = await r.job()
            await r.stop(0)  # the holder goes; its pending answer must not be lost
            await until(lambda: second.client.sessions == 1, 10, "the takeover")
            assert holder(redis_client, r.bot).startswith(second.owner)
            await grow(redis_client, job, ["answered by the new holder"])
            await until(lambda: r.state(job) == "delivered", what="delivered")
            assert r.fake.pushed["kate"] == [r.fake.pushed["kate"][0]]

    run(scenario())


class Broken:
    """An enqueue function that fails as the producer does when the broker is full or down."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self, job: Job) -> None:
        raise self.exc


@pytest.mark.parametrize(
    "exc", [QueueFull("10 waiting"), Unavailable("broker down")], ids=["full", "down"]
)
def test_a_question_that_cannot_be_queued_gets_the_busy_notice(
    settings: Settings, redis_client: redis.Redis, exc: Exception
) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client) as r:
            connector = Connector(r.settings, redis_client, Broken(exc), interval=0.05)
            stop = asyncio.Event()
            task = asyncio.create_task(connector.run(stop))
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            await r.fake.say(r.bot, "leo", "question")
            await until(lambda: bool(r.fake.stream_in("leo")), what="the notice")
            (stream,) = r.fake.stream_in("leo")
            assert stream.finished and stream.contents == [BUSY_TEXT]
            stop.set()
            await task

    run(scenario())


def test_feedback_is_recorded_with_the_answer_it_rates(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        async with rig(settings, redis_client) as r:
            r.start()
            await until(lambda: r.fake.connected(r.bot) > 0, what="subscribed")
            await r.fake.say(r.bot, "mia", "question")
            job = await r.job()
            await grow(redis_client, job, ["an answer"])
            await until(lambda: r.state(job) == "delivered", what="delivered")
            (stream,) = r.fake.stream_in("mia")
            rated = {"id": stream.stream_id, "type": 2, "content": "wrong"}
            await r.fake.event(r.bot, "mia", "feedback_event", feedback_event=rated)
            await until(lambda: bool(redis_client.hget(job_key(job), "feedback")), what="saved")
            assert redis_client.hget(job_key(job), "feedback") == "bad"
            assert redis_client.hget(job_key(job), "feedback_comment") == "wrong"

    run(scenario())
