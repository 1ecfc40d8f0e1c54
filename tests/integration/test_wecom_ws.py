"""The WeCom long connection end to end: fake WeCom WebSocket → connector process → Redis →
worker (tiny model) → stream frames and aibot_send_msg pushes, as the group sees them.

The fake WeCom (bot.channels.wecom.ws_sandbox) runs in this test process; each connector is a
real `python -m bot.cli.wecom_connect` process, and the worker is a live Celery worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.channels.wecom import streams
from bot.channels.wecom.lease import holder
from bot.channels.wecom.ws_sandbox import SandboxThread, Stream
from bot.cli.wecom_connect import connector_argv
from bot.core import progress
from bot.core.contracts import message_key
from bot.core.settings import Settings
from bot.pipeline.ledger import Ledger
from tests.conftest import Stack, start_process, stop_process
from tests.helpers import unique
from tests.integration.wecom_stacks import StackSpec, running_stacks

pytestmark = pytest.mark.integration

SECRET = "ws-secret"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ws_stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A web + worker on its own Redis database; answers take a second or more and grow."""
    spec = StackSpec(
        6,
        tmp_path_factory.mktemp("ws-stack"),
        {"thinking_budget": 256, "max_new_tokens": 64, "generation_delay": 1.0},
    )
    with running_stacks(base_settings, [spec]) as stacks:
        yield stacks[0]


@pytest.fixture(scope="module")
def fake() -> Iterator[SandboxThread]:
    """The fake WeCom long-connection server, on 127.0.0.1."""
    thread = SandboxThread({})
    thread.start()
    yield thread
    thread.stop()


class Connectors:
    """Connector processes of one bot (as `mimochat wecom-connect` runs them)."""

    def __init__(self, stack: Stack, fake: SandboxThread, logs: Path, **changes: object) -> None:
        self.bot = unique("bot")
        fake.fake.bots[self.bot] = SECRET
        self.settings = stack.settings.replace(
            wecom_bot_id=self.bot,
            wecom_bot_secret=SECRET,
            wecom_ws_url=fake.fake.url,
            **changes,
        )
        self.logs = logs
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        env = {**os.environ, **self.settings.to_env(), "PYTHONPATH": str(ROOT)}
        log = self.logs / f"connector-{len(self.procs)}.log"
        proc = start_process(connector_argv(), env, log)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                stop_process(proc)


@pytest.fixture
def connectors(
    ws_stack: Stack, fake: SandboxThread, tmp_path: Path
) -> Iterator[Callable[..., Connectors]]:
    made: list[Connectors] = []

    def make(**changes: object) -> Connectors:
        made.append(Connectors(ws_stack, fake, tmp_path, **changes))
        return made[-1]

    yield make
    for group in made:
        group.stop()


def wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def subscribed(fake: SandboxThread, bot: str) -> bool:
    return fake.fake.connected(bot) > 0


def record_state(stack: Stack, msg_id: str) -> str:
    record = Ledger(stack.redis).get(message_key("wecom", msg_id))
    return record.state if record else ""


def finished(fake: SandboxThread, chat: str) -> list[Stream]:
    return [s for s in fake.fake.stream_in(chat) if s.finished]


def test_group_questions_are_answered_by_growing_streams(
    ws_stack: Stack, fake: SandboxThread, connectors: Callable[..., Connectors]
) -> None:
    group = connectors()
    group.start()
    bot = group.bot
    wait(lambda: subscribed(fake, bot), 30, "the subscribe")
    assert (bot, 0) in fake.fake.subscribes
    chat, first_id, second_id = unique("g"), unique("m"), unique("m")
    fake.call(fake.fake.say(bot, "alice", "@MiMo what is 2+2?", chat_id=chat, msg_id=first_id))
    fake.call(fake.fake.say(bot, "bob", "@MiMo tell me a story", chat_id=chat, msg_id=second_id))
    # WeCom delivers the first message again: it must not get a second answer.
    fake.call(fake.fake.say(bot, "alice", "@MiMo what is 2+2?", chat_id=chat, msg_id=first_id))
    wait(lambda: len(finished(fake, chat)) == 2, 90, "both answers finished")
    wait(lambda: record_state(ws_stack, first_id) == "delivered", 10, "the ledger")
    assert record_state(ws_stack, second_id) == "delivered"
    time.sleep(1.0)
    shown = fake.fake.stream_in(chat)
    assert len(shown) == 2 and not fake.fake.pushed.get(chat) and not fake.fake.refused
    for stream, (asker, msg_id) in zip(
        # Matched by the header that names the asker: the tiny model's random reasoning may
        # itself write "@bob".
        sorted(shown, key=lambda s: "> **@bob**:" in s.content),
        [("alice", first_id), ("bob", second_id)],
        strict=True,
    ):
        assert f"> **@{asker}**:" in stream.content
        record = Ledger(ws_stack.redis).get(message_key("wecom", msg_id))
        assert record is not None
        answer = progress.read(ws_stack.redis, record.fields["job_id"]).get("answer", "")
        assert answer.strip() and answer in stream.content  # the whole answer in the last frame
        assert stream.contents[0].endswith(streams.THINKING_TEXT)
        assert len(stream.contents) >= 2  # pushed as it grew, then finished
        assert len(set(stream.contents[:-1])) == len(stream.contents) - 1
    # Two people in one group keep separate threads (the default scope: user_in_group).
    threads = {
        Ledger(ws_stack.redis).get(message_key("wecom", m)).job.user  # type: ignore[union-attr]
        for m in (first_id, second_id)
    }
    assert threads == {f"g:{chat}:u:alice", f"g:{chat}:u:bob"}


def test_enter_chat_is_greeted(fake: SandboxThread, connectors: Callable[..., Connectors]) -> None:
    group = connectors()
    group.start()
    wait(lambda: subscribed(fake, group.bot), 30, "the subscribe")
    before = len(fake.fake.welcomes)
    fake.call(fake.fake.event(group.bot, "carol", "enter_chat"))
    wait(lambda: len(fake.fake.welcomes) > before, 15, "the welcome")
    assert fake.fake.welcomes[-1]["text"]["content"] == streams.WELCOME_TEXT


def test_a_dropped_connection_is_dialled_again_and_answers_continue(
    ws_stack: Stack, fake: SandboxThread, connectors: Callable[..., Connectors]
) -> None:
    group = connectors()
    group.start()
    bot = group.bot
    wait(lambda: subscribed(fake, bot), 30, "the subscribe")
    msg_id = unique("m")
    fake.call(fake.fake.say(bot, "dave", "a question in flight", msg_id=msg_id))
    time.sleep(0.3)
    fake.call(fake.fake.drop(bot))  # a network drop while the answer is being generated
    started = time.monotonic()
    wait(lambda: subscribed(fake, bot), 30, "the new subscribe")
    assert time.monotonic() - started < 30
    wait(lambda: record_state(ws_stack, msg_id) == "delivered", 90, "the answer in flight")
    # It went out once: on its stream if it finished before the drop, else by aibot_send_msg.
    time.sleep(1.0)
    done = finished(fake, "dave")
    assert len(done) + len(fake.fake.pushed.get("dave", [])) == 1
    fake.call(fake.fake.close(bot))  # a clean close by the server
    wait(lambda: subscribed(fake, bot), 30, "the subscribe after a clean close")
    after = unique("m")
    fake.call(fake.fake.say(bot, "dave", "and the next question", msg_id=after))
    wait(lambda: record_state(ws_stack, after) == "delivered", 90, "the next answer")


def test_one_holder_and_a_takeover_after_sigkill(
    ws_stack: Stack, fake: SandboxThread, connectors: Callable[..., Connectors]
) -> None:
    group = connectors()
    first = group.start()
    wait(lambda: subscribed(fake, group.bot), 30, "the first subscribe")
    group.start()
    time.sleep(8.0)  # the second runs, sees the lease held, and stays idle
    assert [b for b, code in fake.fake.subscribes if b == group.bot and code == 0] == [group.bot]
    owner = holder(ws_stack.redis, group.bot)
    assert f":{first.pid}|" in owner
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    started = time.monotonic()
    wait(lambda: holder(ws_stack.redis, group.bot) not in ("", owner), 30, "the takeover")
    wait(lambda: subscribed(fake, group.bot), 30, "the new holder's subscribe")
    assert time.monotonic() - started < 30
    msg_id = unique("m")
    fake.call(fake.fake.say(group.bot, "erin", "are you still there?", msg_id=msg_id))
    wait(lambda: record_state(ws_stack, msg_id) == "delivered", 90, "the answer")
    assert finished(fake, "erin")


def test_an_answer_past_the_stream_window_arrives_by_send_msg_once(
    ws_stack: Stack, fake: SandboxThread, connectors: Callable[..., Connectors]
) -> None:
    # The generation takes more than a second; the connector closes streams at 0.5 s.
    group = connectors(wecom_stream_window=0.5)
    group.start()
    wait(lambda: subscribed(fake, group.bot), 30, "the subscribe")
    chat, msg_id = unique("g"), unique("m")
    fake.call(fake.fake.say(group.bot, "frank", "@MiMo slow", chat_id=chat, msg_id=msg_id))
    wait(lambda: record_state(ws_stack, msg_id) == "delivered", 90, "the answer")
    time.sleep(1.0)
    (stream,) = fake.fake.stream_in(chat)
    assert stream.finished and stream.content.endswith(streams.HANDOVER_NOTE)
    assert len(fake.fake.pushed[chat]) == 1 and "@frank" in fake.fake.pushed[chat][0]
    record = Ledger(ws_stack.redis).get(message_key("wecom", msg_id))
    assert record is not None and record.fields.get("via") == "send_msg"
