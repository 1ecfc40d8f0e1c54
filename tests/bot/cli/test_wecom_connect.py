"""`mimochat wecom-connect`: the command exists, refuses to start unconfigured, and connects."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from bot.channels.wecom.ws_sandbox import SandboxThread
from bot.cli.main import build_parser
from bot.cli.wecom_connect import DEMO_BOT_ID, configured, connector_argv, demo_robot
from bot.core.settings import Settings
from tests.helpers import unique

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("bot_id", "secret", "expected"), [("", "", False), ("b", "", False), ("b", "s", True)]
)
def test_configured_needs_an_id_and_a_secret(
    settings: Settings, bot_id: str, secret: str, expected: bool
) -> None:
    assert configured(settings.replace(wecom_bot_id=bot_id, wecom_bot_secret=secret)) is expected


def test_the_command_is_there() -> None:
    args = build_parser().parse_args(["wecom-connect"])
    assert args.func.__name__ == "cmd_wecom_connect"


def _env(settings: Settings, **changes: object) -> dict[str, str]:
    changed = settings.replace(**changes)
    return {**os.environ, **changed.to_env(), "PYTHONPATH": str(ROOT)}


def test_unconfigured_it_says_what_is_missing(settings: Settings, tmp_path: Path) -> None:
    env = _env(settings, wecom_bot_id="", wecom_bot_secret="")
    done = subprocess.run(
        connector_argv(), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "WECOM_BOT_ID" in done.stderr


def test_it_subscribes_over_ws_and_stops_on_sigterm(settings: Settings, tmp_path: Path) -> None:
    bot = unique("bot")
    fake = SandboxThread({bot: "secret"})
    url = fake.start()
    env = _env(settings, wecom_bot_id=bot, wecom_bot_secret="secret", wecom_ws_url=url)
    proc = subprocess.Popen(
        connector_argv(), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while fake.fake.connected(bot) == 0:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        fake.stop()


@pytest.mark.parametrize(
    "given", [{}, {"WECOM_BOT_ID": "mine"}, {"WECOM_WS_URL": "wss://example.invalid"}]
)
def test_the_demo_runs_a_fake_wecom_unless_told_otherwise(given: dict[str, str]) -> None:
    env = dict(given)
    argv = demo_robot(env)
    if given:  # settings in the environment or .env win over the demo's own
        assert argv is None and env == given
        return
    assert argv is not None and argv[1:3] == ["-m", "bot.channels.wecom.ws_sandbox"]
    assert env["WECOM_BOT_ID"] == DEMO_BOT_ID and env["WECOM_WS_URL"].endswith(
        argv[argv.index("--port") + 1]
    )
