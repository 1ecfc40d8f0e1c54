"""Settings: environment parsing, .env.example completeness, secrets redacted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.core.settings import SECRET_FIELDS, Settings, setting_docs

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_match_the_design() -> None:
    s = Settings()
    assert (s.model, s.backend, s.wechat_reply_mode) == (
        "XiaomiMiMo/MiMo-7B-RL",
        "transformers",
        "auto",
    )
    assert (s.temperature, s.top_p) == (0.6, 0.95)


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"WECHAT_TOKEN": "abc"}, "wechat_token", "abc"),
        ({"MIMOCHAT_SANDBOX": "true"}, "sandbox", True),
        ({"MIMOCHAT_SANDBOX": "0"}, "sandbox", False),
        ({"MIMOCHAT_VISIBILITY_TIMEOUT": " 7200 "}, "visibility_timeout", 7200),
        ({"MIMOCHAT_TEMPERATURE": "0.2"}, "temperature", 0.2),
    ],
)
def test_from_env(env: dict, field: str, value: object) -> None:
    assert getattr(Settings.from_env(env, dotenv=False), field) == value


def test_bad_number_names_the_setting() -> None:
    with pytest.raises(ValueError, match="MIMOCHAT_HISTORY_TTL"):
        Settings.from_env({"MIMOCHAT_HISTORY_TTL": "a week"}, dotenv=False)


def test_dotenv_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("WECHAT_TOKEN=fromfile\nWECHAT_APP_ID=wxfile\n")
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({"WECHAT_TOKEN": "fromenv"})
    assert (s.wechat_token, s.wechat_app_id) == ("fromenv", "wxfile")


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    for name, default, _doc in setting_docs():
        assert f"{name}={default}" in text, name


def test_redacted_hides_secrets() -> None:
    s = Settings(wechat_app_secret="s3cret", wechat_aes_key="k" * 43, admin_token="adm")
    shown = "\n".join(f"{k}={v}" for k, v in s.redacted().items())
    for secret in ("s3cret", "k" * 43, "adm"):
        assert secret not in shown
    assert {f.name for f in dataclasses.fields(Settings)} >= SECRET_FIELDS


def test_to_env_round_trips() -> None:
    s = Settings(sandbox=True, history_max_turns=3, wechat_token="t")
    assert Settings.from_env(s.to_env(), dotenv=False) == s
