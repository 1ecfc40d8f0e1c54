"""The supervisor behind `mimochat demo/up`: restarts, readiness, stop order, fatal children, and
children that die with it, SIGKILL included."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from bot.cli.supervisor import Supervisor
from bot.core.lifeline import EXIT_CANNOT_START

ROOT = Path(__file__).resolve().parents[3]


def python(code: str) -> list[str]:
    """The command line of a Python child running `code`."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def environ() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_dead_worker_is_restarted_and_web_exit_stops_all() -> None:
    sup = Supervisor(env=environ(), backoff_base=0.2)
    sup.add("worker", python("import time; time.sleep(0.2)"), restart=True)
    sup.add("web", python("import time, sys; time.sleep(2.5); sys.exit(4)"), restart=False)
    assert sup.run() == 4
    assert sup.children[0].restarts >= 2
    assert sup.reason == "web exited with 4"
    assert all(c.process and c.process.poll() is not None for c in sup.children)


def test_child_that_cannot_start_stops_everything_with_its_sentence() -> None:
    sup = Supervisor(env=environ(), backoff_base=0.1)
    sup.add("redis", python("import time; time.sleep(60)"), restart=True, stop_last=True)
    fatal = """
        from bot.core.lifeline import cannot_start
        cannot_start("the engine cannot load: no GPU in this test")
    """
    sup.add("worker", python(fatal), restart=True)
    sup.add("web", python("import time; time.sleep(60)"), restart=False)
    started = time.monotonic()
    assert sup.run() == EXIT_CANNOT_START
    assert time.monotonic() - started < 20
    assert sup.reason == "worker cannot start: the engine cannot load: no GPU in this test"
    assert sup.children[1].restarts == 0  # not started again
    assert all(c.process and c.process.poll() is not None for c in sup.children)


@pytest.mark.parametrize(
    ("code", "exit_code", "reason"),
    [
        ("import time; time.sleep(60)", 1, "redis did not answer 1s after start"),
        ("import sys; sys.exit(6)", 6, "redis exited with 6 as it started"),
    ],
    ids=["never-answers", "exits-at-start"],
)
def test_child_that_does_not_come_up_stops_the_start(
    code: str, exit_code: int, reason: str
) -> None:
    sup = Supervisor(env=environ(), ready_timeout=1)
    sup.add("redis", python(code), restart=True, ready=lambda: False, stop_last=True)
    sup.add("web", python("import time; time.sleep(60)"), restart=False)
    assert sup.run() == exit_code
    assert sup.reason == reason
    assert sup.children[1].process is None  # the web never started


def test_children_start_once_the_one_before_answers(tmp_path: Path) -> None:
    flag = tmp_path / "up"
    sup = Supervisor(env=environ())
    sup.add(
        "redis",
        python(
            f"import time, pathlib; time.sleep(1); pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"
        ),
        restart=True,
        ready=flag.exists,
        stop_last=True,
    )
    sup.add(
        "web",
        python(f"import os, sys; sys.exit(5 if os.path.exists({str(flag)!r}) else 7)"),
        restart=False,
    )
    assert sup.run() == 5


def test_the_last_child_stops_after_the_others(tmp_path: Path) -> None:
    on_term = """
        import pathlib, signal, sys, time
        def stop(*_):
            time.sleep({pause})
            pathlib.Path({path!r}).write_text(repr(time.time()))
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        time.sleep(60)
    """
    first, last = tmp_path / "worker", tmp_path / "redis"
    sup = Supervisor(env=environ())
    sup.add("redis", python(on_term.format(pause=0, path=str(last))), restart=True, stop_last=True)
    sup.add("worker", python(on_term.format(pause=0.5, path=str(first))), restart=True)
    sup.add("web", python("import time, sys; time.sleep(2); sys.exit(2)"), restart=False)
    assert sup.run() == 2
    assert float(last.read_text()) >= float(first.read_text())


SUPERVISED = """
import os, signal, sys
from bot.cli.supervisor import Supervisor
sup = Supervisor(env=dict(os.environ))
sup.add("redis", [sys.executable, "-c", "import time; time.sleep(60)"], restart=True, stop_last=True)
sup.add("worker", [sys.executable, "-c", "import time; time.sleep(60)"], restart=True,
        death_signal=signal.SIGKILL)
sup.add("web", [sys.executable, "-c", "import time; time.sleep(60)"], restart=False)
sys.exit(sup.run())
"""


@pytest.mark.parametrize(
    ("sig", "exit_code"),
    [(signal.SIGTERM, 0), (signal.SIGKILL, -signal.SIGKILL)],
    ids=["SIGTERM", "SIGKILL"],
)
def test_children_end_with_the_supervisor(sig: int, exit_code: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISED], env=environ())
    children: list[psutil.Process] = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 10
        while len(parent.children()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        children = parent.children()
        assert len(children) == 3
        proc.send_signal(sig)
        assert proc.wait(20) == exit_code
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
