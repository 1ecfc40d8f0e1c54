"""How mimochat's child processes live and die: they die with their parent, and say why they quit.

Two conventions shared by whoever starts a child (the supervisor of `mimochat demo/up`, the
embedded Redis of a lone process) and the child itself (a worker that cannot load its engine).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NoReturn

# A child that exits with this code cannot succeed by being started again (its engine does not
# load, its settings are wrong): a supervisor stops instead of restarting it forever.
EXIT_CANNOT_START = 3
# Where a child writes the one sentence that says why it cannot start; its supervisor sets it.
NOTE_ENV = "MIMOCHAT_EXIT_NOTE"

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send `sig` to the child when its parent dies.

    Why the kernel's parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`) and not a pipe the
    child watches: it also covers children that are not ours to change (redis-server), it holds
    when the parent is SIGKILLed (nothing in the parent has to run), and it survives `exec`.
    Children keep their own session (a Ctrl-C meant for the parent must not reach them first), so
    the terminal's process group would not stop them either. SIGTERM by default: the child then
    stops the way it does on Ctrl-C, bounded by its own grace (Redis writes its append-only file,
    the web server finishes the requests in flight); SIGKILL where a polite stop could hang on
    what died with the parent (the supervisor's worker, whose Redis may be going too).

    The signal is tied to the *thread* that forks: start children from a thread that lives as
    long as the process (the main thread, or through `popen_for_life`). None where there is no
    prctl (macOS, Windows): there children outlive a parent that is killed outright.
    """
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    # Looked up before the fork: the child only calls a function already resolved.
    prctl = ctypes.CDLL(name, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal will ever come.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def popen_for_life(argv: list[str], sig: int = signal.SIGTERM, **kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen` of a child that gets `sig` when this process dies, from any thread.

    From the main thread it forks there; from any other (a request or task thread that ends
    soon) it forks in a daemon thread kept for the process's lifetime, since the parent-death
    signal fires when the forking thread ends, not the process.
    """

    def start() -> subprocess.Popen:
        return subprocess.Popen(argv, preexec_fn=die_with_parent(sig), **kwargs)

    if threading.current_thread() is threading.main_thread():
        return start()
    done: Future[subprocess.Popen] = Future()
    _keeper().put((start, done))
    return done.result()


_Start = tuple[Callable[[], subprocess.Popen], "Future[subprocess.Popen]"]
_keeper_lock = threading.Lock()
_keeper_queue: queue.Queue[_Start] | None = None


def _keeper() -> queue.Queue[_Start]:
    global _keeper_queue
    with _keeper_lock:
        if _keeper_queue is None:
            _keeper_queue = queue.Queue()
            threading.Thread(
                target=_keep, args=(_keeper_queue,), name="mimochat-child-keeper", daemon=True
            ).start()
        return _keeper_queue


def _keep(requests: queue.Queue[_Start]) -> None:
    while True:
        start, done = requests.get()
        try:
            done.set_result(start())
        except BaseException as exc:  # handed to the caller, which re-raises it
            done.set_exception(exc)


def cannot_start(sentence: str) -> NoReturn:
    """End this process with EXIT_CANNOT_START, saying why on stderr and to its supervisor.

    `os._exit`, not SystemExit: the caller may be deep in a framework (a Celery signal handler
    swallows exceptions), and nothing has been taken from a queue yet that would need handing back.
    """
    print(sentence, file=sys.stderr, flush=True)
    note = os.environ.get(NOTE_ENV)
    if note:
        with contextlib.suppress(OSError):
            Path(note).write_text(sentence + "\n", encoding="utf-8")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(EXIT_CANNOT_START)


def read_note(path: Path) -> str:
    """The sentence a child left at `path` (empty if none)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


ENGINE_LIBRARIES = frozenset({"torch", "transformers", "tokenizers"})


def engine_failure(exc: BaseException) -> str:
    """The one sentence a worker ends with when its engine cannot load, and what to do about it."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] in ENGINE_LIBRARIES:
        return (
            f"the engine cannot load: {detail} — install the model libraries: "
            "pip install 'mimochat[engine]'"
        )
    # torch.cuda.OutOfMemoryError is a RuntimeError; its text is the only portable sign.
    if isinstance(exc, MemoryError) or "out of memory" in detail.lower():
        return (
            f"the engine cannot load: out of memory ({detail}) — free the GPU, or choose a "
            "smaller MIMOCHAT_MODEL or MIMOCHAT_DTYPE"
        )
    return f"the engine cannot load: {detail}"
