"""Processes that clean up: `mimochat demo` under SIGKILL, a killed Redis, an engine that cannot
load, a port held by a leftover. Real processes, each test on its own port and data dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis
import requests

from bot.cli.main import DEMO_ENV
from bot.core.lifeline import EXIT_CANNOT_START
from bot.core.store import answers, embedded_argv, embedded_url
from tests.helpers import free_port, unique

ROOT = Path(__file__).resolve().parents[2]
MIMOCHAT = str(Path(sys.executable).parent / "mimochat")  # the console script, as users run it
BAD_MODEL = "model directory /nonexistent does not exist"
NO_TORCH = (
    "the engine cannot load: No module named 'torch' — install the model libraries: "
    "pip install 'mimochat[engine]'"
)
SETTLE = 15.0  # seconds everything gets to be gone after its parent was SIGKILLed


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint, built once; every data dir links to it."""
    from bot.engine.transformers.tiny import ensure_tiny_model

    data = tmp_path_factory.mktemp("models-data")
    ensure_tiny_model(data)
    return data / "models"


@pytest.fixture
def data_dir(tmp_path: Path, models: Path) -> Path:
    """A fresh data dir (its own embedded Redis) that shares the tiny model."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(models)
    return data


def environ(data_dir: Path, **changes: str) -> dict[str, str]:
    """This environment without any mimochat setting, on data_dir, metrics off."""
    prefixes = ("WECHAT_", "WECOM_", "MIMOCHAT_", "REDIS_URL", "ADMIN_TOKEN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        MIMOCHAT_DATA_DIR=str(data_dir),
        MIMOCHAT_METRICS_PORT="0",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(changes)
    return env


@dataclass
class Demo:
    """A running `mimochat demo` and its output."""

    process: subprocess.Popen
    port: int
    log: Path
    env: dict[str, str]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def family(self) -> list[psutil.Process]:
        """Every process below the demo."""
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def send(self, text: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """`mimochat send` to this demo, as a user would."""
        argv = [MIMOCHAT, "send", text, "--user", unique(), "--timeout", str(timeout)]
        argv += ["--url", f"http://127.0.0.1:{self.port}/wechat"]
        return subprocess.run(
            argv,
            env=self.env,
            cwd=self.log.parent,
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )


def wait(predicate: Callable[[], object], timeout: float, what: str, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.2)


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL whatever of these is still alive (a test's cleanup)."""
    for proc in processes:
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(processes, timeout=10)


def health(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A mimochat command in the background; it and every process under it killed after."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    seen: list[psutil.Process] = [psutil.Process(proc.pid)]
    try:
        yield proc
    finally:
        with suppress(psutil.NoSuchProcess):
            seen += psutil.Process(proc.pid).children(recursive=True)
        kill_all(seen)
        proc.wait(10)


@contextmanager
def demo(data_dir: Path, **changes: str) -> Iterator[Demo]:
    """`mimochat demo` on a free port, up and answering (worker ready)."""
    port = free_port()
    env = environ(data_dir, **changes)
    log = data_dir.parent / "demo.log"
    with running([MIMOCHAT, "demo", "--port", str(port)], env, log) as proc:
        running_demo = Demo(proc, port, log, env)
        wait(lambda: health(port) and " ready." in running_demo.output(), 120, "the demo", log)
        yield running_demo


def mimochat_processes(data_dir: Path) -> list[psutil.Process]:
    """Live processes that name data_dir in their command line or environment."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            env = proc.info["environ"] or {}
        except psutil.Error:
            continue
        named = str(data_dir) in cmdline or env.get("MIMOCHAT_DATA_DIR") == str(data_dir)
        if named and proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_sigkill_of_demo_leaves_no_process_behind(data_dir: Path) -> None:
    with demo(data_dir) as running_demo:
        family = running_demo.family()
        names = sorted(p.name() for p in family)
        assert any("redis-server" in n for n in names), names
        assert len(family) >= 3, names  # redis, worker, web
        running_demo.process.send_signal(signal.SIGKILL)
        running_demo.process.wait(5)
        started = time.monotonic()
        _, alive = psutil.wait_procs(family, timeout=SETTLE)
        assert not alive, [p.cmdline() for p in alive]
        left = SETTLE - (time.monotonic() - started)
        wait(lambda: not mimochat_processes(data_dir), max(left, 0.5), "no process left", None)
        assert not answers(embedded_url(data_dir))


LONE = """
import sys, threading, time
from pathlib import Path
from bot.core.store import start_embedded

urls = []
if sys.argv[2] == "thread":  # a thread that ends at once, as a request thread would
    thread = threading.Thread(target=lambda: urls.append(start_embedded(Path(sys.argv[1]))))
    thread.start()
    thread.join()
else:
    urls.append(start_embedded(Path(sys.argv[1])))
print(urls[0], flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_embedded_redis_dies_with_the_lone_process_that_started_it(
    data_dir: Path, started_from: str
) -> None:
    argv = [sys.executable, "-c", LONE, str(data_dir), started_from]
    log = data_dir.parent / "lone.log"
    with running(argv, environ(data_dir), log) as proc:
        wait(lambda: "unix://" in log.read_text(), 30, "the embedded Redis", log)
        url = embedded_url(data_dir)
        time.sleep(1)  # the starting thread is gone; the server must outlive it
        assert answers(url)
        (server,) = psutil.Process(proc.pid).children()
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        server.wait(SETTLE)
        assert not answers(url)


def test_killed_redis_is_restarted_and_the_demo_answers_again(data_dir: Path) -> None:
    with demo(data_dir) as running_demo:
        first = running_demo.send("What is 2+2?", timeout=60)
        assert first.returncode == 0 and "answer after" in first.stdout, first
        (server,) = [p for p in running_demo.family() if "redis-server" in p.name()]
        server.kill()
        server.wait(5)

        def restarted() -> bool:
            servers = [p for p in running_demo.family() if "redis-server" in p.name()]
            return bool(servers) and servers[0].pid != server.pid

        wait(restarted, 30, "a new Redis", running_demo.log)
        wait(lambda: answers(embedded_url(data_dir)), 30, "Redis to answer", running_demo.log)
        # The worker may have to reconnect, or be restarted itself and load its engine again.
        again = running_demo.send("And 3+3?", timeout=150)
        assert again.returncode == 0 and "answer after" in again.stdout, (
            again.stdout + again.stderr + running_demo.output()[-4000:]
        )
        assert "redis exited with -9; restarting" in running_demo.output()


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"MIMOCHAT_MODEL": "/nonexistent"}, f"the engine cannot load: {BAD_MODEL}"),
        ({"NO_TORCH": "1"}, NO_TORCH),
    ],
    ids=["bad-model-path", "no-torch"],
)
def test_worker_whose_engine_cannot_load_exits_once_taking_nothing(
    data_dir: Path, tmp_path: Path, changes: dict[str, str], sentence: str
) -> None:
    env = environ(data_dir, REDIS_URL=embedded_url(data_dir), **changes)
    if env.pop("NO_TORCH", None):  # a torch that is not there, ahead of the real one
        shadow = tmp_path / "shadow" / "torch"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text(
            "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
        )
        env["PYTHONPATH"] = f"{shadow.parent}{os.pathsep}{ROOT}"
    server = subprocess.Popen(embedded_argv(data_dir), stdout=subprocess.DEVNULL)
    try:
        wait(lambda: answers(embedded_url(data_dir)), 15, "Redis", None)
        client = redis.Redis.from_url(embedded_url(data_dir), decode_responses=True)
        client.lpush("gpu", "a job the worker must leave alone")
        done = subprocess.run(
            [MIMOCHAT, "worker"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = done.stdout + done.stderr
        assert done.returncode == EXIT_CANNOT_START, out[-4000:]
        assert out.count(sentence) == 1, out[-4000:]
        assert "Traceback" not in out, out[-4000:]
        assert client.lrange("gpu", 0, -1) == ["a job the worker must leave alone"]
        assert not client.hlen("unacked")
    finally:
        server.terminate()
        server.wait(10)


def test_demo_whose_worker_cannot_load_stops_with_the_sentence(data_dir: Path) -> None:
    env = environ(data_dir, MIMOCHAT_MODEL="/nonexistent")
    log = data_dir.parent / "demo.log"
    argv = [MIMOCHAT, "demo", "--port", str(free_port())]
    with running(argv, env, log) as proc:
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            pytest.fail("the demo did not stop\n" + log.read_text(errors="replace")[-4000:])
        out = log.read_text(errors="replace")
        assert code == EXIT_CANNOT_START, out[-4000:]
        last = out.strip().splitlines()[-1]  # the reason is the last word
        reason = f"mimochat demo stopped: worker cannot start: the engine cannot load: {BAD_MODEL}"
        assert last.startswith(reason), out[-4000:]
        assert out.count("started worker") == 1, out[-4000:]  # not restarted
    assert not mimochat_processes(data_dir)


@pytest.fixture(scope="module")
def leftover_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(port, pid) of a lone `mimochat web` left running, as from an earlier run."""
    folder = tmp_path_factory.mktemp("leftover")
    port = free_port()
    env = environ(folder / "data", **DEMO_ENV)
    with running([MIMOCHAT, "web", "--port", str(port)], env, folder / "web.log") as proc:
        wait(lambda: health(port), 60, "the leftover web", folder / "web.log")
        yield port, proc.pid


@pytest.mark.parametrize("command", ["demo", "web"])
def test_port_held_by_a_leftover_is_named_with_how_to_stop_it(
    leftover_web: tuple[int, int], tmp_path: Path, command: str
) -> None:
    port, pid = leftover_web
    done = subprocess.run(
        [MIMOCHAT, command, "--port", str(port)],
        env=environ(tmp_path / "data"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    # The holder may be gunicorn's worker process: the line names it, and the pid to stop is
    # the leftover `mimochat web` itself.
    assert last.startswith(f"mimochat {command}: port {port} is held by pid "), done.stderr
    assert "mimochat web" in last and "left from an earlier run" in last, done.stderr
    assert last.endswith(f"stop it with `kill {pid}`"), done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_port_held_by_another_program_says_so(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [MIMOCHAT, "demo", "--port", str(port)],
            env=environ(tmp_path / "data"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"mimochat demo: port {port} is held by pid {os.getpid()} "
        f"({psutil.Process().name()}), not a mimochat process: stop it, or choose another "
        "port with --port"
    ), done.stderr
