"""Runs every part on one machine: embedded Redis, worker(s) and the web server, as child processes.

A worker that dies is restarted (with a short backoff); if the web server dies, everything stops.
SIGINT/SIGTERM stop every child (SIGTERM first, SIGKILL after a grace period).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger("mimochat.supervisor")

GRACE_SECONDS = 15.0


def worker_argv(queues: str, concurrency: int, name: str) -> list[str]:
    """The command line of a Celery worker (threads pool: one engine per process)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.worker",
        "worker",
        "-Q",
        queues,
        "-P",
        "threads",
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


def web_argv(host: str, port: int) -> list[str]:
    """The command line of the web server."""
    return [sys.executable, "-m", "webhooks", "--host", host, "--port", str(port)]


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    restart: bool
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0


@dataclass
class Supervisor:
    """Starts children with one environment and keeps them running until told to stop."""

    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    stopping: bool = False
    backoff_base: float = 2.0  # seconds before restarting a child that died right after start
    grace: float = GRACE_SECONDS  # seconds children get to stop before SIGKILL

    def add(self, name: str, argv: list[str], restart: bool) -> None:
        """Register a child to start."""
        self.children.append(Child(name, argv, restart))

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(child.argv, env=self.env, start_new_session=True)
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _stop_all(self) -> None:
        live = [c for c in self.children if c.process and c.process.poll() is None]
        for c in live:
            os.killpg(c.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for c in live:
            try:
                c.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs, killing it", c.name, self.grace)
                os.killpg(c.process.pid, signal.SIGKILL)
                c.process.wait()

    def run(self) -> int:
        """Start everything and supervise until a signal or the web server's exit."""

        def on_signal(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        for child in self.children:
            self._spawn(child)
        code = 0
        try:
            while not self.stopping:
                time.sleep(0.5)
                for child in self.children:
                    rc = child.process.poll() if child.process else None
                    if rc is None:
                        continue
                    if not child.restart:
                        log.error("%s exited with %s; stopping everything", child.name, rc)
                        self.stopping, code = True, rc or 1
                        break
                    # Back off if it keeps dying right after start (bad settings, no memory).
                    quick = time.monotonic() - child.started_at < 10
                    child.restarts += 1
                    delay = (
                        min(30.0, self.backoff_base * 2 ** (child.restarts - 1)) if quick else 1.0
                    )
                    log.warning("%s exited with %s; restarting in %.0fs", child.name, rc, delay)
                    time.sleep(delay)
                    self._spawn(child)
        finally:
            self._stop_all()
        return code
