"""A newcomer's first hour with the CLI: ports, finding the demo, doctor beside it, --fresh, the
banner's commands, readable times, the worker's metrics bound to loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bot.cli import running
from bot.cli.main import _demo_banner, _print_timeline, main, self_command
from bot.core.settings import Settings
from tests.helpers import free_port, unique

ROOT = Path(__file__).resolve().parents[3]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out = capsys.readouterr()
    return exited.value.code, out.out + out.err


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A home of our own (the demos' files live under it), a cwd with no .env, no settings."""
    monkeypatch.setenv("HOME", str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in list(os.environ):
        if name.startswith(("WECHAT_", "WECOM_", "MIMOCHAT_", "ADMIN_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return tmp_path


def pretend_demo(url: str, redis_url: str = "", pid: int | None = None) -> Path:
    """The file a running demo leaves (this test process plays the demo's process)."""
    port = int(url.rsplit(":", 1)[1])
    folder = running.run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{port}.json"
    entry = {
        "url": url,
        "port": port,
        "pid": pid or os.getpid(),
        "data_dir": str(Path.cwd() / "data"),
        "redis_url": redis_url,
        "cwd": str(Path.cwd()),
    }
    path.write_text(json.dumps(entry))
    return path


def test_record_find_and_forget(home: Path) -> None:
    path = running.record("0.0.0.0", 8123, home / "data", "unix:///x.sock")
    assert path.parent == home / ".cache/mimochat/demos"
    [found] = running.demos()
    assert (found["url"], found["pid"]) == ("http://127.0.0.1:8123", os.getpid())
    running.forget(path)
    assert running.demos() == [] and not path.exists()


def test_a_dead_demos_file_is_dropped(home: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    path = pretend_demo("http://127.0.0.1:8124", pid=child.pid)
    assert running.demos() == [] and not path.exists()


def test_send_finds_the_running_demo(
    home: Path,
    live_sandbox: tuple[str, Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, served = live_sandbox
    for name, value in served.to_env().items():
        monkeypatch.setenv(name, value)
    pretend_demo(base)
    code, out = run(["send", "hi", "--user", unique(), "--timeout", "1"], capsys)
    assert "try 1: HTTP 200" in out, out
    assert code == 1 and "no answer in the sandbox outbox after 1s" in out  # no worker here


@pytest.mark.parametrize(
    ("demos", "says"),
    [
        (["http://127.0.0.1:{a}"], "Is the demo running? Start it with `make demo`"),
        (["http://127.0.0.1:{a}", "http://127.0.0.1:{b}"], "several demos run"),
    ],
)
def test_send_says_to_pass_url(
    home: Path, capsys: pytest.CaptureFixture[str], demos: list[str], says: str
) -> None:
    ports = {"a": free_port(), "b": free_port()}  # nothing listens on them
    for url in demos:
        pretend_demo(url.format(**ports))
    code, out = run(["send", "hi", "--timeout", "1"], capsys)
    assert code == 2 and says in out and "--url" in out


def test_doctor_beside_a_demo_checks_the_demos_settings(
    home: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    pretend_demo(url, redis_url=redis_url)
    code, out = run(["doctor"], capsys)
    assert out.splitlines()[0].startswith(f"checking the settings of the demo running at {url}")
    assert f"mimochat doctor --admin {url}" in out
    for name in ("WECHAT_TOKEN", "WECHAT_APP_ID", "WECHAT_APP_SECRET"):
        assert f"[ok] {name}" in out, out
    assert "[ok] redis" in out


def test_doctor_without_a_demo_says_whose_settings_it_checks(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(["doctor"], capsys)
    assert code == 1
    assert out.splitlines()[0].startswith("checking this shell's settings")
    assert "mimochat doctor --admin URL" in out.splitlines()[0]


def test_doctor_json_stays_parseable(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["doctor", "--json"])
    out = capsys.readouterr()
    assert json.loads(out.out) and "checking this shell's settings" in out.err


def test_demo_fresh_makes_a_new_empty_data_dir(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as held:  # the demo stops at its port check, after choosing the dir
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, out = run(["demo", "--fresh", "--port", str(port)], capsys)
    assert code == 1
    [fresh] = (home / ".cache/mimochat/fresh").iterdir()
    assert f"fresh data directory {fresh}" in out
    assert list(fresh.iterdir()) == []


@pytest.mark.parametrize(
    ("port", "expected"),
    [(8000, 'send "What is 2+2?"\n'), (8010, 'send "What is 2+2?" --url http://127.0.0.1:8010')],
)
def test_demo_banner(capsys: pytest.CaptureFixture[str], port: int, expected: str) -> None:
    settings = Settings(data_dir="/tmp/somewhere", sandbox=True)
    _demo_banner("127.0.0.1", port, settings)
    out = capsys.readouterr().out
    assert "data: /tmp/somewhere" in out and "--fresh" in out
    assert expected in out
    assert "answers are noise" in out
    assert ("running as root" in out) == (os.geteuid() == 0)


@pytest.mark.parametrize(
    ("argv0", "on_path", "expected"),
    [
        (".venv/bin/mimochat", False, ".venv/bin/mimochat"),
        (".venv/bin/mimochat", True, "mimochat"),
        ("-c", False, "mimochat"),
    ],
)
def test_self_command(
    home: Path, monkeypatch: pytest.MonkeyPatch, argv0: str, on_path: bool, expected: str
) -> None:
    program = Path.cwd() / ".venv/bin/mimochat"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setenv("PATH", str(program.parent) if on_path else "/nonexistent")
    assert self_command() == expected


@pytest.mark.parametrize(
    ("after", "shown"), [(-0.01, "+0.00s"), (0.0, "+0.00s"), (1.234, "+1.23s")]
)
def test_timeline_times_never_negative(
    capsys: pytest.CaptureFixture[str], after: float, shown: str
) -> None:
    _print_timeline({"timeline": [{"stage": "received", "after": after, "detail": "queued"}]})
    out = capsys.readouterr().out
    assert f"received     {shown} queued" in out and "+-" not in out


def test_retries_help_counts_tries_like_wechat(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["send", "--help"])
    assert "3 tries in all: --retries 2" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("host", "bound"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_worker_metrics_bind_loopback_unless_told(home: Path, host: str | None, bound: str) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if host:
        env["MIMOCHAT_METRICS_HOST"] = host
    code = (
        "import sys, time; from tasks.worker import settings, start_metrics_server; "
        "print(start_metrics_server(int(sys.argv[1]), settings.metrics_host), flush=True); "
        "time.sleep(30)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == str(port)
        deadline = time.monotonic() + 10
        listening: list[str] = []
        while not listening and time.monotonic() < deadline:
            listening = [
                c.laddr.ip
                for c in psutil.Process(child.pid).net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port
            ]
        assert listening == [bound]
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


@pytest.mark.parametrize("module", ["tasks.worker", "bot.engine.transformers.engine"])
def test_worker_starts_without_a_numpy_or_user_warning(home: Path, module: str) -> None:
    """What a worker imports at start prints no warning (torch warns when NumPy is missing)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIMOCHAT_DATA_DIR": str(home / "data")}
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::UserWarning",
            "-W",
            "error::RuntimeWarning",
            "-c",
            f"import numpy, torch, {module}; torch.from_numpy(numpy.zeros(2))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warn" not in done.stderr.lower(), done.stderr[-2000:]
