"""The guard stage end to end: real web and worker processes with content-safety lists.

A refused question queues nothing (its passive reply is the notice); an answer with a listed
term reaches the sandbox outbox masked — and the list is edited while the processes run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bot.channels.wechat.protocol import message_xml, read_reply, sign_request
from bot.core.contracts import Answer, message_key
from bot.pipeline import guards, safety
from bot.pipeline.ledger import Ledger
from tasks.celery_app import Producer
from tests.conftest import Stack, run_stack
from tests.helpers import ACCOUNT, AES_KEY, APP_ID, TOKEN, free_port, make_job, unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guarded(base_settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # noqa: ANN001
    """Web + worker with a refuse list and an (empty) mask list; greedy sampling (repeatable)."""
    folder = tmp_path_factory.mktemp("guard-lists")
    (folder / "refuse.txt").write_text("forbiddenword\n", encoding="utf-8")
    (folder / "mask.txt").write_text("", encoding="utf-8")
    port = free_port()
    settings = base_settings.replace(
        wechat_api_base=f"http://127.0.0.1:{port}/sandbox/wechat/",
        temperature=0.0,
        # One sequence at a time through model.generate: the same prompt gives the same text.
        # (The batch loop reuses cached prefixes, and a random-weight model's near-ties can
        # then tip another way.)
        continuous_batching=False,
        safety_lists=f"refuse:{folder / 'refuse.txt'},mask:{folder / 'mask.txt'}",
    )
    logs = tmp_path_factory.mktemp("guard-stack-logs")
    yield from run_stack(settings, port, logs, "guards", concurrency=1)


def post(stack: Stack, user: str, text: str, msg_id: str) -> dict:
    xml = message_xml(user, ACCOUNT, content=text, msg_id=msg_id)
    signed = sign_request(TOKEN, xml, aes_key=AES_KEY, app_id=APP_ID)
    res = requests.post(
        f"{stack.url}/wechat", params=signed.params, data=signed.body.encode(), timeout=10
    )
    assert res.status_code == 200
    return read_reply(res.text, token=TOKEN, aes_key=AES_KEY, app_id=APP_ID)


def test_refused_question_queues_nothing(guarded: Stack) -> None:
    user = unique()
    guarded.open_window(user)
    msg_id = str(int(time.time() * 1000))
    reply = post(guarded, user, "please say the F.O.R.B.I.D.D.E.N.W.O.R.D", msg_id)
    assert reply.get("Content") == guards.REFUSED_TEXT
    record = Ledger(guarded.redis).get(message_key("wechat", msg_id))
    assert record is not None and record.fields.get("via") == "safety"
    assert "job" not in record.fields
    time.sleep(1.0)
    assert guarded.outbox(user) == []  # nothing generated, nothing sent


def test_masked_answer_reaches_the_outbox_masked(guarded: Stack) -> None:
    question = "What is the capital of France?"
    first = unique()
    guarded.open_window(first)
    guarded.say(first, question)
    plain = guarded.wait_outbox(first, 1)[0]["content"]
    words = re.findall(r"[A-Za-z0-9]{2,}|[\u4e00-\u9fff]", plain)
    if not words:
        pytest.skip(f"the tiny model's answer has no word to list: {plain!r}")
    term = max(words, key=len)
    # The operator lists a term of that answer while everything runs: no restart.
    mask_path = safety.parse_spec(guarded.settings.safety_lists)[1][1]
    Path(mask_path).write_text(f"{term}\n", encoding="utf-8")
    time.sleep(safety.RELOAD_EVERY + 0.2)
    # The same answer delivered again, to another user, by the running worker: the list now
    # applies to it. (Asking the model again would not do: a random-weight model's text is not
    # repeatable across processes and load, so its next answer may hold no listed term.)
    # Lists are looked at once a second at most, per process: allow a few looks.
    tries = []
    for _ in range(5):
        second = unique()
        guarded.say(second, "/help")  # opens the user's window, as any message of theirs does
        Producer(guarded.settings).delivery(Answer(job=make_job(second, question), answer=plain))
        masked = guarded.wait_outbox(second, 2)[-1]["content"]
        tries.append(masked)
        if safety.MASK in masked:
            break
        time.sleep(safety.RELOAD_EVERY)
    assert safety.MASK in masked, (plain, tries, term)
    automaton = safety.build([("mask", mask_path)]).answers
    assert not safety.find(masked, automaton)
