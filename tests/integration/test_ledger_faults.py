"""Exactly one answer for every message, whatever fails: the ledger's fault tests.

Real processes (a web process, Celery workers), a private persistent Redis and the sandbox
WeChat. Each test says what it injected and counts, per message: answered once, lost (no
answer, no apology) and doubled. Two faults strike at one exact line (a Redis error right
after a publish, or during a send): there the webhook's or the delivery task's function runs
in this process against a Redis reached through a proxy the test cuts (tests/integration/
proxy.py) — a process cannot be made to fail between two given lines otherwise; the worker
that answers is still a real one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from bot.channels.wechat.api import WeChatAPI
from bot.channels.wechat.delivery import deliver
from bot.channels.wechat.protocol import message_xml, parse_message, read_reply
from bot.channels.wechat.reply_mode import ServiceWindow
from bot.core.contracts import Answer, message_key
from bot.core.settings import Settings
from bot.core.store import connect
from bot.pipeline import ledger_lua
from bot.pipeline.ingest import ingest
from bot.pipeline.ledger import Ledger
from tasks.celery_app import Producer
from tests.conftest import start_process, stop_process
from tests.helpers import ACCOUNT, AES_KEY, APP_ID, TOKEN, make_job, unique
from tests.integration.conftest import FaultStack, PrivateRedis, fresh, web_stack
from tests.integration.proxy import CuttableProxy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def roomy_web(
    base_settings: Settings, fault_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultStack]:
    """The web on the private Redis with room for 50 waiting questions (no busy replies)."""
    yield from web_stack(base_settings, fault_redis, tmp_path_factory, 50)


@pytest.fixture
def stack(roomy_web: FaultStack) -> Iterator[FaultStack]:
    """The stack for one test: empty queues, no planned faults; its workers stopped after."""
    yield from fresh(roomy_web)


def msg_id(xml: str) -> str:
    found = re.search(r"<MsgId>(\d+)</MsgId>", xml)
    assert found
    return found.group(1)


def record_of(stack: FaultStack, xml: str) -> dict[str, str]:
    record = Ledger(stack.redis).get(message_key("wechat", msg_id(xml)))
    return record.fields if record else {}


def count(stack: FaultStack, users: list[str], each: int = 1) -> dict[str, int]:
    """answered once / lost / doubled over `users`, once every one has `each` message(s)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(len(stack.outbox(u)) < each for u in users):
        time.sleep(0.2)
    time.sleep(2.0)  # a doubled answer would arrive now
    got = [len(stack.outbox(u)) for u in users]
    return {
        "answered once": sum(n == each for n in got),
        "lost": sum(n < each for n in got),
        "doubled": sum(n > each for n in got),
    }


def all_once(n: int) -> dict[str, int]:
    return {"answered once": n, "lost": 0, "doubled": 0}


def test_worker_sigkilled_with_shipped_defaults_is_answered_within_60_s(stack: FaultStack) -> None:
    """Injected: SIGKILL of the worker generating the message (its generation takes 30 s),
    every timing setting at its shipped default (visibility timeout 3600 s). Counted: one
    message, answered once within 60 s of the kill (the sweeper finds the dead holder by its
    heartbeat), lost 0, doubled 0."""
    doomed, _ = stack.start_worker(generation_delay=30.0)
    user = unique()
    xml = message_xml(user, ACCOUNT, content="slow question")
    assert stack.post(xml).text == "success"
    stack.wait(lambda: record_of(stack, xml).get("state") == "generating", 20, "generation")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(5)
    killed = time.monotonic()
    stack.start_worker()
    stack.wait_outbox(user, 1, timeout=60 - (time.monotonic() - killed))
    assert time.monotonic() - killed < 60
    assert count(stack, [user]) == all_once(1)
    assert record_of(stack, xml)["state"] == "delivered"


def test_unreadable_history_never_silences_a_user(stack: FaultStack) -> None:
    """Injected: the user's stored history made unreadable (a string where a list belongs).
    Counted: 5 messages, answered once each, lost 0, doubled 0; the bad history kept aside."""
    stack.start_worker()
    user = unique()
    stack.redis.set(f"mimochat:conv:wechat:{user}", "not a list")
    for n in range(5):
        assert stack.post(message_xml(user, ACCOUNT, content=f"question {n}")).text == "success"
        stack.wait_outbox(user, n + 1, timeout=60)
    assert count(stack, [user], each=5) == all_once(1)
    assert stack.redis.exists(f"mimochat:conv-unreadable:wechat:{user}")


def test_a_job_missing_a_field_is_answered_from_the_ledgers_copy(stack: FaultStack) -> None:
    """Injected: 2 queued jobs rewritten in the broker without their `text` field (no worker
    yet). Counted: both answered once, lost 0, doubled 0."""
    users = [unique(), unique()]
    for u in users:
        assert stack.post(message_xml(u, ACCOUNT, content="hello")).text == "success"
    for index, raw in enumerate(stack.redis.lrange("gpu", 0, -1)):
        envelope = json.loads(raw)
        args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
        args[0].pop("text")
        envelope["body"] = base64.b64encode(json.dumps([args, kwargs, embed]).encode()).decode()
        stack.redis.lset("gpu", index, json.dumps(envelope))
    stack.start_worker()
    assert count(stack, users) == all_once(2)


def test_wechat_api_down_past_every_retry_parks_the_answers(stack: FaultStack) -> None:
    """Injected: every customer-service send refused with 503 while 3 answers are delivered
    (2 retries each, backoff at most 1 s). Counted: 3 answers parked, none sent; each user's
    next message carries the parked answer in its passive reply: answered once 3, lost 0,
    doubled 0 (the outbox then holds only the second answers)."""
    stack.start_worker(task_retries=2, retry_backoff_max=1)
    stack.plan_faults([{"status": 503, "on": "send"}] * 40)
    users = [unique() for _ in range(3)]
    first = {u: message_xml(u, ACCOUNT, content="first question") for u in users}
    for u in users:
        assert stack.post(first[u]).text == "success"
    for u in users:
        stack.wait(lambda u=u: record_of(stack, first[u]).get("state") == "parked", 60, "parking")
    assert all(stack.outbox(u) == [] for u in users)
    stack.plan_faults([])
    carried = 0
    for u in users:
        res = stack.post(message_xml(u, ACCOUNT, content="second question"))
        reply = read_reply(res.text, token=TOKEN, aes_key=AES_KEY, app_id=APP_ID)
        carried += bool(reply.get("Content"))
    assert carried == 3
    assert count(stack, users) == all_once(3)  # the second answers, each once


def test_redis_killed_with_20_messages_in_flight(stack: FaultStack) -> None:
    """Injected: the Redis server SIGKILLed (append-only file fsynced on every write) while 20
    messages are queued or generating, and restarted 3 s later. Counted: answered (or
    apologized) once 20, lost 0, doubled 0."""
    stack.start_worker(generation_delay=1.0, stuck_after=20.0)
    users = [unique() for _ in range(20)]
    for u in users:
        assert stack.post(message_xml(u, ACCOUNT, content="in flight")).text == "success"
    time.sleep(1.5)
    stack.server.kill()
    time.sleep(3.0)
    stack.server.start()
    assert count(stack, users) == all_once(20)


def test_a_redis_error_right_after_the_publish_doubles_nothing(
    stack: FaultStack, fault_redis: PrivateRedis
) -> None:
    """Injected: Redis unreachable from the webhook right after the job was published, before
    ingest could mark it queued (3 messages; the webhook would answer 503); then WeChat's 2
    retries of each. Counted: answered once 3, lost 0, doubled 0."""
    proxy = CuttableProxy(fault_redis.port)
    settings = stack.settings.replace(redis_url=proxy.url)
    client = connect(proxy.url)
    producer = Producer(stack.settings)

    def publish_then_fail(job: object) -> None:
        producer.generation(job)  # type: ignore[arg-type]
        proxy.cut()

    users = [unique() for _ in range(3)]
    try:
        for u in users:
            stack.open_window(u)
            message = parse_message(message_xml(u, ACCOUNT, content="once please"))
            with pytest.raises(redis.ConnectionError):
                ingest(message, settings=settings, client=client, enqueue=publish_then_fail)
            proxy.restore()
            for _ in range(2):  # WeChat's retries
                retry = ingest(
                    message, settings=settings, client=client, enqueue=producer.generation
                )
                assert retry.duplicate
        stack.start_worker()
        assert count(stack, users) == all_once(3)
    finally:
        proxy.close()


def test_a_redis_error_during_delivery_sends_nothing_twice(
    stack: FaultStack, fault_redis: PrivateRedis
) -> None:
    """Injected: Redis unreachable from the delivery while WeChat holds its send for 2 s (the
    part goes out; recording it fails); the delivery then retried as Celery would. Counted:
    answered once 1, lost 0, doubled 0; the part counted uncertain, not resent."""
    proxy = CuttableProxy(fault_redis.port)
    settings = stack.settings.replace(redis_url=proxy.url)
    user = unique()
    stack.open_window(user)
    direct, via_proxy = stack.redis, connect(proxy.url)
    ServiceWindow(settings, direct, user).open()
    api = WeChatAPI(stack.settings, direct)
    result = Answer(job=make_job(user), answer="the answer")
    Ledger(direct).claim(result.job.key)
    stack.plan_faults([{"delay": 2, "on": "send"}])
    threading.Timer(0.7, proxy.cut).start()
    try:
        with pytest.raises(redis.ConnectionError):
            deliver(result, settings=settings, client=via_proxy, api=api)
        proxy.restore()
        outcome = deliver(result, settings=settings, client=via_proxy, api=api)  # the retry
        assert outcome.uncertain == 1
        assert count(stack, [user]) == all_once(1)
        record = Ledger(direct).get(result.job.key)
        assert record is not None and record.state == "delivered"
    finally:
        proxy.close()


def test_an_answer_after_the_client_timeout_is_not_sent_twice(stack: FaultStack) -> None:
    """Injected: WeChat answering the send 2.5 s late (client timeout 1 s), having sent it.
    Counted: answered once 1, lost 0, doubled 0; the record says 1 uncertain part."""
    stack.start_worker(wechat_timeout=1.0)
    stack.plan_faults([{"delay": 2.5, "on": "send"}])
    user = unique()
    xml = message_xml(user, ACCOUNT, content="slow network")
    assert stack.post(xml).text == "success"
    assert count(stack, [user]) == all_once(1)
    stack.wait(lambda: record_of(stack, xml).get("state") == "delivered", 10, "delivered")
    assert record_of(stack, xml)["uncertain"] == "1"


def test_a_worker_without_the_model_libraries_takes_nothing(
    stack: FaultStack, tmp_path: Path
) -> None:
    """Injected: a worker whose `import torch` fails (a `torch` package that raises first on
    its path), started with 2 messages queued; then a working worker. Counted: the broken
    worker exits at once having taken nothing; answered once 2, lost 0, doubled 0."""
    users = [unique(), unique()]
    for u in users:
        assert stack.post(message_xml(u, ACCOUNT, content="hello")).text == "success"
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
    )
    env = {**stack.env, "PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}"}
    from bot.cli.supervisor import worker_argv

    log = stack.logs / "no-torch.log"
    broken = start_process(worker_argv("gpu,io", 2, "no-torch"), env, log)
    try:
        assert broken.wait(60) != 0
    finally:
        stop_process(broken, signal.SIGKILL)
    assert "mimochat[engine]" in log.read_text()
    assert stack.redis.llen("gpu") == 2 and stack.redis.hlen("unacked") == 0
    stack.start_worker()
    assert count(stack, users) == all_once(2)
    assert requests.get(f"{stack.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("script", "changes"),
    [
        ("admit", {}),  # a plain question: claimed and enqueued by one script
        # A limit to count first: claim | limit | the enqueue script.
        ("enqueue", {"rate_limit_user": "100/minute"}),
    ],
)
def test_a_reply_lost_after_the_enqueue_script_doubles_nothing(
    stack: FaultStack, fault_redis: PrivateRedis, script: str, changes: dict[str, str]
) -> None:
    """Injected: the script that enqueues (`admit`: the claim, job, push and queued mark in one
    step; `enqueue`: the job, push and queued mark after a separate claim) runs in Redis, and
    its reply is lost on the way back (3 messages; the webhook would answer 503); then WeChat's
    2 retries of each, through the production publisher (`Producer.generation`, envelope path).
    Counted: answered once 3, lost 0, doubled 0."""
    text = {"admit": ledger_lua.ADMIT, "enqueue": ledger_lua.ENQUEUE}[script]
    mark = ledger_lua.sha(text).encode()  # run by its SHA: only its calls hold it
    proxy = CuttableProxy(fault_redis.port)
    settings = stack.settings.replace(redis_url=proxy.url, **changes)
    client = connect(proxy.url)
    producer = Producer(stack.settings)
    users = [unique() for _ in range(3)]
    # Known to Redis, as after the first question: the struck call is the one that runs it
    # (on a Redis without it, NOSCRIPT answers first and nothing runs).
    client.script_load(text)
    try:
        for u in users:
            stack.open_window(u)
            message = parse_message(message_xml(u, ACCOUNT, content="once please"))
            proxy.lose_reply_to(mark)
            with pytest.raises(redis.ConnectionError):
                ingest(message, settings=settings, client=client, enqueue=producer.generation)
            proxy.restore()
            record = Ledger(stack.redis).get(message_key("wechat", message.dedup_key))
            assert record is not None and record.state == "queued"  # the script did run
            for _ in range(2):  # WeChat's retries
                retry = ingest(
                    message, settings=settings, client=client, enqueue=producer.generation
                )
                assert retry.duplicate
        stack.start_worker()
        assert count(stack, users) == all_once(3)
    finally:
        proxy.close()
        producer.app.close()
