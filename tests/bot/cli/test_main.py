"""`mimochat doctor` and `mimochat send`: offline, and through a server's admin API."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli.main import main
from bot.core.settings import Settings
from tests.conftest import Stack
from tests.helpers import ADMIN_TOKEN, unique


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out = capsys.readouterr()
    return exited.value.code, out.out + out.err


@pytest.fixture
def env_of(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201
    """Put settings in the environment (and leave no .env in the way)."""
    monkeypatch.chdir(tmp_path)

    def apply(settings: Settings) -> None:
        for name, value in settings.to_env().items():
            monkeypatch.setenv(name, value)

    return apply


def test_doctor_exits_non_zero_naming_each_wrong_setting(
    live_sandbox: tuple[str, Settings],
    env_of,
    capsys: pytest.CaptureFixture[str],  # noqa: ANN001
) -> None:
    _, served = live_sandbox
    env_of(served.replace(wechat_aes_key="tooShort", wechat_app_id="wx-not-an-id"))
    code, out = run(["doctor"], capsys)
    assert code == 1
    assert (
        "[FAIL] WECHAT_AES_KEY: WECHAT_AES_KEY (EncodingAESKey) must be 43 characters, got 8" in out
    )
    assert "[FAIL] WECHAT_APP_ID: WECHAT_APP_ID must look like wx" in out
    assert "[FAIL] access token: 40013: WECHAT_APP_ID is not a valid AppID" in out
    assert "[ok] WECHAT_TOKEN" in out


@pytest.mark.integration
def test_doctor_passes_on_a_healthy_stack(
    stack: Stack,
    env_of,
    capsys: pytest.CaptureFixture[str],  # noqa: ANN001
) -> None:
    env_of(stack.settings)
    code, out = run(["doctor", "--webhook", f"{stack.url}/wechat"], capsys)
    assert code == 0, out
    assert "[ok] webhook URL" in out and "[ok] model" in out


def test_doctor_through_the_admin_api(
    live_admin: tuple[str, Settings],
    env_of,
    capsys: pytest.CaptureFixture[str],  # noqa: ANN001
) -> None:
    base, served = live_admin
    # The local settings are broken; the server's are what the API checks.
    env_of(Settings(admin_token=ADMIN_TOKEN, wechat_aes_key="x"))
    code, out = run(["doctor", "--admin", base, "--webhook", f"{base}/wechat"], capsys)
    assert code == 1  # no worker consumes the console's Redis database
    assert "[FAIL] workers: gpu: no worker is consuming the gpu queue" in out
    assert "[ok] WECHAT_AES_KEY" in out and "[ok] webhook URL" in out
    assert ADMIN_TOKEN not in out


@pytest.mark.parametrize(
    ("token", "message"),
    [("wrong-token-0123456789", "refused ADMIN_TOKEN"), ("", "set ADMIN_TOKEN")],
)
def test_admin_api_errors_are_plain(
    live_admin: tuple[str, Settings],
    env_of,  # noqa: ANN001
    capsys: pytest.CaptureFixture[str],
    token: str,
    message: str,
) -> None:
    base, _ = live_admin
    env_of(Settings(admin_token=token))
    code, _ = run(["doctor", "--admin", base], capsys)
    assert message in str(code)


@pytest.mark.integration
def test_send_through_the_admin_api(
    admin_on_stack: tuple[str, Settings],
    env_of,
    capsys: pytest.CaptureFixture[str],  # noqa: ANN001
) -> None:
    base, served = admin_on_stack
    env_of(Settings(admin_token=ADMIN_TOKEN))
    code, out = run(["send", "hello there", "--admin", base, "--user", unique()], capsys)
    assert code == 0, out
    assert "try 1: HTTP 200" in out and "acknowledged" in out
    for stage in ("received", "started", "generated", "delivered"):
        assert stage in out
    assert "answer (1 message(s))" in out


@pytest.mark.integration
def test_send_to_a_wecom_group_through_the_admin_api(
    admin_on_stack: tuple[str, Settings],
    env_of,
    capsys: pytest.CaptureFixture[str],  # noqa: ANN001
) -> None:
    base, _ = admin_on_stack
    env_of(Settings(admin_token=ADMIN_TOKEN))
    argv = ["send", "2+2?", "--admin", base, "--channel", "wecom_group", "--group", unique("g")]
    code, out = run([*argv, "--user", unique("zhang")], capsys)
    assert code == 0, out
    assert "stream started" in out and "stream end" in out
    assert "answer (stream):" in out
