"""Before a server starts: is its port free, and if not, who holds it and how to stop them."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Any


def port_problem(host: str, port: int) -> str | None:
    """None if a server can listen on host:port; else one sentence saying why not and what to do.

    It binds the way the web server does (SO_REUSEADDR, so connections closing from an earlier
    run do not count), and names the process that listens there when psutil can see it.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return f"cannot listen on {host}:{port}: {exc.strerror}"
        else:
            return None
    return held_by(port)


def held_by(port: int) -> str:
    """The sentence for a port in use: the holder, and the command that stops it."""
    holder = _listener(port)
    if holder is None:
        return (
            f"port {port} is in use by another program: stop it, or choose another port with --port"
        )
    top = _mimochat_root(holder)
    if top is None:
        what = describe(holder) or holder.name()
        return (
            f"port {port} is held by pid {holder.pid} ({what}), not a mimochat process: stop it, "
            "or choose another port with --port"
        )
    if top.pid == holder.pid:
        return (
            f"port {port} is held by pid {holder.pid} ({describe(holder)}, left from an earlier "
            f"run): stop it with `kill {holder.pid}`"
        )
    return (
        f"port {port} is held by pid {holder.pid} ({describe(holder)}, started by "
        f"{describe(top)} pid {top.pid}, left from an earlier run): stop it with `kill {top.pid}`"
    )


def _listener(port: int) -> Any:
    """The psutil.Process listening on the TCP port, or None (unknown, or psutil missing)."""
    try:
        import psutil  # installed with mimochat[engine]
    except ImportError:
        return None
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return None  # another user's process: its pid is not ours to see
            with contextlib.suppress(psutil.Error):
                return psutil.Process(conn.pid)
    return None


def _mimochat_root(proc: Any) -> Any:
    """The outermost mimochat process above (or at) proc: the one to stop; None if not ours."""
    import psutil

    found = None
    with contextlib.suppress(psutil.Error):
        while proc is not None and proc.pid != os.getpid() and describe(proc):
            found, proc = proc, proc.parent()
    return found


def describe(proc: Any) -> str:
    """`mimochat demo`, `mimochat web`, `mimochat worker`... for a process of ours; "" if not."""
    import psutil

    try:
        argv = proc.cmdline()
    except psutil.Error:
        return ""
    for i, arg in enumerate(argv):
        after = argv[i + 1] if i + 1 < len(argv) else ""
        if Path(arg).name == "mimochat" and after:  # the console script: mimochat <command>
            return f"mimochat {after}"
        if (arg == "-m" and after == "webhooks") or arg.startswith("webhooks.wsgi"):
            return "mimochat web"  # a supervisor's web child, or gunicorn on the app
        if arg == "tasks.worker":
            return "mimochat worker"
    return ""
