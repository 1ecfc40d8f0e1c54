"""The supervisor behind `mimochat demo/up`: restarts a dead worker, stops every child on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from bot.cli.supervisor import Supervisor


def test_dead_worker_is_restarted_and_web_exit_stops_all() -> None:
    sup = Supervisor(env=dict(os.environ), backoff_base=0.2)
    sup.add("worker", [sys.executable, "-c", "import time; time.sleep(0.2)"], restart=True)
    sup.add(
        "web",
        [sys.executable, "-c", "import time, sys; time.sleep(2.5); sys.exit(3)"],
        restart=False,
    )
    assert sup.run() == 3
    assert sup.children[0].restarts >= 2
    assert all(c.process.poll() is not None for c in sup.children)


def test_sigterm_stops_every_child() -> None:
    script = textwrap.dedent(
        """
        import os, sys
        from bot.cli.supervisor import Supervisor
        sup = Supervisor(env=dict(os.environ))
        for name, restart in (("worker", True), ("web", False)):
            sup.add(name, [sys.executable, "-c", "import time; time.sleep(60)"], restart=restart)
        sys.exit(sup.run())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 10
        while len(parent.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        children = parent.children()
        assert len(children) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
