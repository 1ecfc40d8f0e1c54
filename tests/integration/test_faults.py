"""Faults lose nothing: real processes, a real Redis (private, persistent), the sandbox API.

Each test says what it injected and what it counted. The web process is shared by the module
(queue limit FAULT_MAX_QUEUE); each test starts the workers it needs with its own settings.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from bot.channels.wechat.protocol import message_xml, read_reply
from bot.pipeline.ingest import BUSY_TEXT
from tests.helpers import ACCOUNT, AES_KEY, APP_ID, TOKEN, free_port, unique
from tests.integration.conftest import FAULT_MAX_QUEUE, FaultStack

pytestmark = pytest.mark.integration


def test_worker_killed_mid_generation_is_redelivered_once(faults: FaultStack) -> None:
    """Injected: SIGKILL of a worker while it holds a job (MIMOCHAT_GENERATION_DELAY=30 keeps it
    generating). Counted: the job taken before the kill; after a new worker with a 5 s visibility
    timeout starts, exactly one answer for the user and nothing left unacknowledged."""
    doomed, _ = faults.start_worker(visibility_timeout=5, generation_delay=30.0)
    user = unique()
    assert faults.post(message_xml(user, ACCOUNT, content="slow question")).text == "success"
    faults.wait(lambda: faults.taken() == 1, 15, "the worker to take the job")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(5)
    assert faults.outbox(user) == []
    faults.start_worker(visibility_timeout=5)
    assert faults.settle([user], quiet=2.0) == {user: 1}
    faults.wait(lambda: faults.taken() == 0, 10, "the job to be acknowledged")
    assert faults.redis.llen("gpu") == 0


def test_redis_restart_keeps_queued_jobs_and_webhook_says_503(faults: FaultStack) -> None:
    """Injected: Redis killed (SIGKILL, append-only file fsynced on every write) with 3
    acknowledged messages queued and no worker; 2 messages posted while it is down; Redis
    restarted. Counted: 3 x 200 before, 2 x 503 while down (each well inside WeChat's 5 s), the
    2 taken on WeChat's retries, and after a worker starts, exactly one answer for each of 5."""
    before = [unique() for _ in range(3)]
    during = [unique() for _ in range(2)]
    for user in before:
        assert faults.post(message_xml(user, ACCOUNT, content="queued")).text == "success"
    assert faults.redis.llen("gpu") == 3
    faults.server.kill()
    retried = {}
    for user in during:
        retried[user] = message_xml(user, ACCOUNT, content="while down")
        started = time.perf_counter()
        res = faults.post(retried[user], window=False)
        assert res.status_code == 503
        assert time.perf_counter() - started < 4.5
        assert "Traceback" not in res.text
    faults.server.start()
    assert faults.redis.llen("gpu") == 3  # the queued jobs came back from the file
    for xml in retried.values():
        # WeChat retries the same message 3 times; the first after a restart may find a
        # connection the restart broke, so allow the retries WeChat would make.
        statuses = []
        for _ in range(3):
            statuses.append(faults.post(xml).status_code)
            if statuses[-1] == 200:
                break
        assert statuses[-1] == 200, statuses
    assert faults.redis.llen("gpu") == 5
    faults.start_worker()
    assert faults.settle(before + during) == dict.fromkeys(before + during, 1)


def test_wechat_api_failures_are_retried_with_backoff_and_one_token_refresh(
    faults: FaultStack,
) -> None:
    """Injected: (1) for one answer, a send refused with 504 after 1 s, then a 502; (2) the
    access token invalidated by a fetch elsewhere, then 4 answers sent together (each send held
    1 s, so they all carry the stale token: a burst of 40001).
    Counted: (1) retries spaced by a growing backoff and one answer; 2 delivery errors;
    (2) exactly one token refresh for the burst, and one answer for each of the 4 users.
    (A send that times out after reaching WeChat is never resent: test_ledger_faults.py.)"""
    port = free_port()
    faults.start_worker(wechat_timeout=2.0, metrics_port=port, retry_backoff_max=60)
    user = unique()
    faults.plan_faults([{"delay": 1, "status": 504, "on": "send"}, {"status": 502, "on": "send"}])
    faults.post(message_xml(user, ACCOUNT, content="through a bad network"))
    assert faults.settle([user]) == {user: 1}
    applied = requests.get(f"{faults.url}/sandbox/wechat/faults", timeout=5).json()["applied"]
    sent_at = faults.outbox(user)[0]["at"]
    attempts = [f["at"] for f in applied] + [sent_at]
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    # Celery's backoff with full jitter: a wait drawn from [0, 2**n] s, so only the order of the
    # attempts and the gaps' upper bounds are certain (a 1 s refusal, then at most 1 s, 2 s).
    assert len(attempts) == 3
    assert gaps[0] <= 1.0 + 1.0 + 1.5 and gaps[1] <= 2.0 + 1.5
    errors = 'mimochat_delivery_errors_total{code="http",final="false"}'
    assert faults.metric(port, errors) == 2

    refreshes = "mimochat_wechat_token_refreshes_total"
    refreshed_before = faults.metric(port, refreshes)
    s = faults.settings
    requests.get(
        f"{faults.url}/sandbox/wechat/cgi-bin/token",
        params={
            "grant_type": "client_credential",
            "appid": s.wechat_app_id,
            "secret": s.wechat_app_secret,
        },
        timeout=5,
    ).raise_for_status()
    users = [unique() for _ in range(4)]
    faults.plan_faults([{"delay": 1, "on": "send"}] * 4)
    for u in users:
        faults.post(message_xml(u, ACCOUNT, content="after the token changed"))
    assert faults.settle(users) == dict.fromkeys(users, 1)
    assert faults.metric(port, refreshes) - refreshed_before == 1


def test_flood_above_the_queue_limit_gets_busy_replies(faults: FaultStack) -> None:
    """Injected: 12 messages from 12 users while no worker runs; the web's MIMOCHAT_MAX_QUEUE is
    5. Counted: 5 acknowledged ("success") and 7 answered at once with the busy text (12 of 12
    accounted for); after a worker starts, one answer for each of the 5 and none for the 7; one
    of the 7, retried by WeChat with the same MsgId once the queue drained, is answered."""
    users = [unique() for _ in range(12)]
    xml = {u: message_xml(u, ACCOUNT, content="flood") for u in users}
    taken, busy = [], []
    for u in users:
        res = faults.post(xml[u])
        assert res.status_code == 200
        if res.text == "success":
            taken.append(u)
        else:
            reply = read_reply(res.text, token=TOKEN, aes_key=AES_KEY, app_id=APP_ID)
            assert reply["Content"] == BUSY_TEXT
            busy.append(u)
    assert (len(taken), len(busy)) == (FAULT_MAX_QUEUE, 12 - FAULT_MAX_QUEUE)
    faults.start_worker()
    assert faults.settle(taken) == dict.fromkeys(taken, 1)
    assert all(faults.outbox(u) == [] for u in busy)
    assert faults.post(xml[busy[0]]).text == "success"  # not marked seen: the retry goes in
    assert faults.settle([busy[0]], quiet=0.5) == {busy[0]: 1}


def test_sigterm_lets_the_running_generation_finish(faults: FaultStack) -> None:
    """Injected: SIGTERM while a 2 s generation runs (grace 20 s). Counted: the worker exits 0
    once the generation finished, the job acknowledged, and its one delivery job queued for the
    next io worker (this one no longer takes work)."""
    worker, _ = faults.start_worker(generation_delay=2.0, shutdown_grace=20.0)
    user = unique()
    faults.post(message_xml(user, ACCOUNT, content="finish me"))
    faults.wait(lambda: faults.taken() == 1, 15, "the worker to take the job")
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(20) == 0
    assert faults.redis.llen("gpu") + faults.taken() == 0
    deliveries = [job for task, job in faults.queued("io") if task == "mimochat.deliver"]
    assert [job["job"]["user"] for job in deliveries] == [user]


def test_sigterm_past_the_grace_hands_the_jobs_back(faults: FaultStack) -> None:
    """Injected: SIGTERM while 2 generations run that would take 30 s (grace 1 s). Counted: the
    worker exits within a few seconds, both jobs back in the gpu queue and none unacknowledged;
    a new worker then gives each user exactly one answer."""
    worker, log = faults.start_worker(generation_delay=30.0, shutdown_grace=1.0)
    users = [unique(), unique()]
    for u in users:
        faults.post(message_xml(u, ACCOUNT, content="too slow"))
    faults.wait(lambda: faults.taken() == 2, 15, "the worker to take both jobs")
    started = time.monotonic()
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(15) == 75, log.read_text()[-2000:]
    assert time.monotonic() - started < 10
    assert (faults.redis.llen("gpu"), faults.taken(), faults.redis.hlen("unacked")) == (2, 0, 0)
    faults.start_worker()
    assert faults.settle(users) == dict.fromkeys(users, 1)


def test_busy_burst_is_not_a_race_that_loses_messages(faults: FaultStack) -> None:
    """Injected: 10 messages posted at once from 10 threads with no worker (limit 5). Counted:
    every one is either acknowledged or told busy: 10 of 10, none with an error."""
    users = [unique() for _ in range(10)]
    outcomes: dict[str, str] = {}

    def send(u: str) -> None:
        res = faults.post(message_xml(u, ACCOUNT, content="at once"))
        outcomes[u] = "taken" if res.text == "success" else f"{res.status_code}:busy"

    threads = [threading.Thread(target=send, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert set(outcomes) == set(users)
    assert set(outcomes.values()) <= {"taken", "200:busy"}
    taken = [u for u, o in outcomes.items() if o == "taken"]
    assert len(taken) == faults.redis.llen("gpu")  # every acknowledged one is queued
    assert len(taken) >= FAULT_MAX_QUEUE  # concurrent checks may let a few more in, never fewer
