"""Runs every part on one machine: embedded Redis, worker(s) and the web server, as child processes.

A worker or Redis that dies is restarted (with a backoff while it keeps dying right after start);
if the web server dies, everything stops. A child that exits with EXIT_CANNOT_START (a worker
whose engine does not load) stops everything too, and its sentence becomes the reason: starting
it again could not help. SIGINT/SIGTERM stop every child (SIGTERM first, SIGKILL after a grace
period; Redis last, since the others need it to stop cleanly). Every child dies with the
supervisor even when it is SIGKILLed (lifeline.die_with_parent).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.core.lifeline import EXIT_CANNOT_START, NOTE_ENV, popen_for_life, read_note

log = logging.getLogger("mimochat.supervisor")

GRACE_SECONDS = 15.0
QUICK_SECONDS = 10.0  # a child that dies sooner than this after start is backed off
MAX_BACKOFF = 30.0
POLL_SECONDS = 0.2


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


def web_shape(processes: int = 0, threads: int = 16) -> tuple[int, int]:
    """gunicorn's (processes, threads per process); 0 processes means one per CPU core.

    Threads, not processes, are what passive mode spends: a held call sleeps in its thread for
    up to ~5 s on each of WeChat's 3 tries, so 16 threads per process (32 on 2 cores) keep
    room for new messages while a burst of questions waits for its answers.
    """
    return max(1, processes or usable_cores()), max(1, threads)


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def gunicorn_conf() -> str:
    """The path of webhooks/gunicorn.conf.py (the containers' settings), found without importing."""
    spec = importlib.util.find_spec("webhooks")
    assert spec is not None and spec.submodule_search_locations is not None
    return str(Path(next(iter(spec.submodule_search_locations))) / "gunicorn.conf.py")


def web_argv(
    host: str,
    port: int,
    server: str = "gunicorn",
    processes: int = 0,
    threads: int = 16,
) -> list[str]:
    """The command line of the web server: gunicorn (gthread) as in the containers, or werkzeug.

    werkzeug's threaded server is one GIL-bound process (about a third of gunicorn's rate on
    2 cores) but starts faster: `mimochat demo` uses it.
    """
    if server == "werkzeug":
        return [sys.executable, "-m", "webhooks", "--host", host, "--port", str(port)]
    workers, per_process = web_shape(processes, threads)
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        gunicorn_conf(),
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(per_process),
        "webhooks.wsgi:app",
    ]


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    restart: bool
    # Answers True once the child serves; the children after it start only then (Redis).
    ready: Callable[[], bool] | None = None
    stop_last: bool = False  # stopped after the others, which need it to stop cleanly
    death_signal: int = signal.SIGTERM  # what the kernel sends it if the supervisor dies
    process: subprocess.Popen | None = None
    restarts: int = 0
    quick_deaths: int = 0  # deaths in a row, each soon after its start
    started_at: float = 0.0
    restart_at: float | None = None  # when a dead child is due to start again


@dataclass
class Supervisor:
    """Starts children with one environment and keeps them running until told to stop."""

    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    stopping: bool = False
    backoff_base: float = 2.0  # seconds before restarting a child that died right after start
    grace: float = GRACE_SECONDS  # seconds children get to stop before SIGKILL
    ready_timeout: float = 30.0  # seconds a child with `ready` gets to answer at start
    reason: str = ""  # why the supervisor stopped on its own, in one sentence
    exit_code: int = 0
    _notes: Path | None = None

    def add(
        self,
        name: str,
        argv: list[str],
        restart: bool,
        ready: Callable[[], bool] | None = None,
        stop_last: bool = False,
        death_signal: int = signal.SIGTERM,
    ) -> None:
        """Register a child to start (in the order added)."""
        self.children.append(
            Child(name, argv, restart, ready=ready, stop_last=stop_last, death_signal=death_signal)
        )

    def _note(self, child: Child) -> Path:
        assert self._notes is not None
        return self._notes / child.name

    def _spawn(self, child: Child) -> subprocess.Popen:
        note = self._note(child)
        note.unlink(missing_ok=True)
        # Own session: a Ctrl-C in the terminal reaches only the supervisor, which then stops
        # the children in order. Own death signal: they go when the supervisor goes, however.
        process = popen_for_life(
            child.argv,
            child.death_signal,
            env={**self.env, NOTE_ENV: str(note)},
            start_new_session=True,
        )
        child.process, child.started_at, child.restart_at = process, time.monotonic(), None
        log.info("started %s (pid %d)", child.name, process.pid)
        return process

    def _wait_ready(self, child: Child, process: subprocess.Popen) -> bool:
        """Wait until a child with `ready` answers; stop everything if it exits or never does."""
        deadline = time.monotonic() + self.ready_timeout
        while not self.stopping and child.ready is not None and not child.ready():
            rc = process.poll()
            if rc is not None:
                self._fail(f"{child.name} exited with {rc} as it started", rc or 1)
            elif time.monotonic() > deadline:
                self._fail(f"{child.name} did not answer {self.ready_timeout:.0f}s after start")
            time.sleep(0.05)
        return not self.stopping

    def _fail(self, reason: str, code: int = 1) -> None:
        log.error("%s; stopping everything", reason)
        self.stopping, self.reason, self.exit_code = True, reason, code

    def _stop_all(self) -> None:
        # Redis goes last: workers hand their jobs back to it and the web drains into it.
        for last in (False, True):
            live = [
                c.process
                for c in self.children
                if c.stop_last is last and c.process is not None and c.process.poll() is None
            ]
            self._stop(live)

    def _stop(self, processes: list[subprocess.Popen]) -> None:
        for p in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for p in processes:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %.0fs, killing it", p.pid, self.grace)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def _died(self, child: Child, rc: int) -> None:
        """Handle a child's exit: schedule its restart, or stop everything."""
        if rc == EXIT_CANNOT_START:
            why = read_note(self._note(child)) or f"exit code {rc}"
            self._fail(f"{child.name} cannot start: {why}", rc)
            return
        if not child.restart:
            self._fail(f"{child.name} exited with {rc}", rc or 1)
            return
        lived = time.monotonic() - child.started_at
        child.quick_deaths = child.quick_deaths + 1 if lived < QUICK_SECONDS else 0
        child.restarts += 1
        # Back off while it keeps dying right after start (bad settings, no memory).
        delay = (
            min(MAX_BACKOFF, self.backoff_base * 2 ** (child.quick_deaths - 1))
            if child.quick_deaths
            else 1.0
        )
        log.warning("%s exited with %s; restarting in %.1fs", child.name, rc, delay)
        child.restart_at = time.monotonic() + delay

    def run(self) -> int:
        """Start everything and supervise until a signal, the web server's exit or a fatal child.

        The exit code: 0 when stopped by a signal, else the code of the child that ended it.
        """

        def on_signal(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        with tempfile.TemporaryDirectory(prefix="mimochat-notes-") as notes:
            self._notes = Path(notes)
            try:
                for child in self.children:
                    if self.stopping or not self._wait_ready(child, self._spawn(child)):
                        break
                while not self.stopping:
                    time.sleep(POLL_SECONDS)
                    self._check()
            finally:
                self._stop_all()
        return self.exit_code

    def _check(self) -> None:
        """One pass over the children: start those due, handle those that exited."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._spawn(child)
                continue
            rc = child.process.poll() if child.process else None
            if rc is not None:
                self._died(child, rc)
                if self.stopping:
                    return
