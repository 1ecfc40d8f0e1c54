"""A start whose port is taken: who holds it, and the command that frees it."""

from __future__ import annotations

import os
import socket

import psutil
import pytest

from bot.cli.ports import describe, port_problem
from tests.helpers import free_port


class Argv:
    """A process as `describe` sees it: only its command line."""

    def __init__(self, *argv: str) -> None:
        self.argv = list(argv)

    def cmdline(self) -> list[str]:
        return self.argv


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (("/v/bin/python", "/v/bin/mimochat", "demo", "--port", "8000"), "mimochat demo"),
        (("/v/bin/python", "/v/bin/mimochat", "up"), "mimochat up"),
        (("/v/bin/python", "-m", "webhooks", "--host", "127.0.0.1"), "mimochat web"),
        (("/v/bin/python", "-m", "celery", "-A", "tasks.worker", "worker"), "mimochat worker"),
        (
            ("/v/bin/gunicorn", "-c", "webhooks/gunicorn.conf.py", "webhooks.wsgi:app"),
            "mimochat web",
        ),
        (("/v/bin/python", "/v/bin/mimochat"), ""),  # no command: not a server
        (("nginx: master process /usr/sbin/nginx",), ""),
        (("/usr/bin/python3", "-m", "http.server", "8000"), ""),
    ],
)
def test_describe_names_mimochat_processes(argv: tuple[str, ...], name: str) -> None:
    assert describe(Argv(*argv)) == name


def test_free_port_has_no_problem() -> None:
    assert port_problem("127.0.0.1", free_port()) is None


def test_port_held_by_another_program() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        problem = port_problem("127.0.0.1", port)
    assert problem == (
        f"port {port} is held by pid {os.getpid()} ({psutil.Process().name()}), not a mimochat "
        "process: stop it, or choose another port with --port"
    )


def test_a_host_it_cannot_listen_on() -> None:
    problem = port_problem("host.invalid", 8000)
    assert problem is not None and problem.startswith("cannot listen on host.invalid:8000: ")
