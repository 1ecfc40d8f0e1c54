"""Every entry point refuses a misspelt setting at once, naming it, before it starts anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli.main import main
from bot.core.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
# Well under a model load or a Redis start: a refusal comes from reading the settings alone.
LIMIT = 30

# One misspelling of each kind of setting.
BAD = {
    "choice": ("MIMOCHAT_BACKEND", "tranformers"),
    "bool": ("MIMOCHAT_CONTINUOUS_BATCHING", "ture"),
    "int": ("MIMOCHAT_GPU_CONCURRENCY", "eight"),
    "url": ("WECHAT_API_BASE", "api.weixin.qq.com"),
}


def run_refused(argv: list[str], tmp_path: Path, name: str, value: str) -> tuple[int, str]:
    """Run `argv` in an empty directory with one bad setting; its exit status and output."""
    data = tmp_path / "data"
    data.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
    env.update({"MIMOCHAT_DATA_DIR": str(data), "PYTHONPATH": str(ROOT), name: value})
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,  # no .env here
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # it started instead of refusing: stop all of it
        proc.communicate()
        pytest.fail(f"{argv} did not refuse {name}={value!r} within {LIMIT}s")
    assert list(data.iterdir()) == [], "something started (the data dir was written)"
    return proc.returncode, out


_SETTING_NAMES = {env_name(field) for field in Settings.model_fields}


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("command", ["demo", "up", "web", "worker"])
def test_mimochat_refuses_a_misspelt_setting(tmp_path: Path, command: str, kind: str) -> None:
    name, value = BAD[kind]
    code, out = run_refused([str(BIN / "mimochat"), command], tmp_path, name, value)
    assert code != 0
    assert f"{name}={value!r} is not allowed: expected" in out
    assert f"mimochat {command}: refusing to start" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    "argv",
    [
        [str(BIN / "celery"), "-A", "tasks.worker", "worker", "--pool", "solo"],
        [sys.executable, "-m", "webhooks", "--port", "0"],
        [str(BIN / "gunicorn"), "-c", str(ROOT / "webhooks/gunicorn.conf.py"), "webhooks.wsgi:app"],
    ],
    ids=["celery-worker", "python-m-webhooks", "gunicorn"],
)
def test_the_other_entry_points_refuse_too(tmp_path: Path, argv: list[str]) -> None:
    code, out = run_refused(argv, tmp_path, "WECHAT_REPLY_MODE", "pasive")
    assert code != 0
    assert "WECHAT_REPLY_MODE='pasive' is not allowed: expected one of auto" in out
    assert "Traceback" not in out


def test_a_secret_is_named_but_never_shown(tmp_path: Path) -> None:
    code, out = run_refused([str(BIN / "mimochat"), "up"], tmp_path, "ADMIN_TOKEN", "hunter22")
    assert code != 0
    assert "ADMIN_TOKEN=(secret, 8 characters) is not allowed" in out
    assert "hunter22" not in out


@pytest.mark.parametrize("argv", [["doctor"], ["doctor", "--json"]])
def test_doctor_reports_a_bad_setting_as_its_finding(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("MIMOCHAT_BACKEND", "vllm")
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert "MIMOCHAT_BACKEND='vllm' is not allowed: expected one of transformers, openai" in out
    if argv == ["doctor"]:
        assert "[FAIL] MIMOCHAT_BACKEND: MIMOCHAT_BACKEND='vllm'" in out
    else:
        assert json.loads(out)[0]["name"] == "MIMOCHAT_BACKEND"
