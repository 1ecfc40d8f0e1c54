"""Settings: environment parsing, refusing bad values by name, .env.example, secrets redacted."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.core.settings import (
    BACKENDS,
    REPLY_MODES,
    SECRET_FIELDS,
    WECOM_SCOPES,
    Settings,
    SettingsError,
    env_example,
    env_name,
    load_or_exit,
    setting_docs,
)

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_match_the_design() -> None:
    s = Settings()
    assert (s.model, s.backend, s.wechat_reply_mode) == (
        "XiaomiMiMo/MiMo-7B-RL",
        "transformers",
        "auto",
    )
    assert (s.temperature, s.top_p) == (0.6, 0.95)


def test_choices_keep_their_names() -> None:
    assert REPLY_MODES == ("auto", "customer_service", "passive")
    assert WECOM_SCOPES == ("user_in_group", "group", "user")
    assert BACKENDS == ("transformers", "openai")


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"WECHAT_TOKEN": "abc"}, "wechat_token", "abc"),
        ({"MIMOCHAT_SANDBOX": "true"}, "sandbox", True),
        ({"MIMOCHAT_SANDBOX": "0"}, "sandbox", False),
        ({"MIMOCHAT_SANDBOX": " Yes "}, "sandbox", True),
        ({"MIMOCHAT_CONTINUOUS_BATCHING": "off"}, "continuous_batching", False),
        ({"MIMOCHAT_VISIBILITY_TIMEOUT": " 7200 "}, "visibility_timeout", 7200),
        ({"MIMOCHAT_TEMPERATURE": "0.2"}, "temperature", 0.2),
        ({"MIMOCHAT_BACKEND": "openai"}, "backend", "openai"),
        ({"WECOM_SESSION_SCOPE": "group"}, "wecom_session_scope", "group"),
        ({"MIMOCHAT_DTYPE": "BF16"}, "dtype", "bf16"),  # the engine has always lowercased it
        ({"MIMOCHAT_LOG_LEVEL": "debug"}, "log_level", "DEBUG"),  # so has the logger
        ({"MIMOCHAT_DEVICE": "cuda:1"}, "device", "cuda:1"),
        ({"REDIS_URL": "unix:///tmp/r.sock?db=1"}, "redis_url", "unix:///tmp/r.sock?db=1"),
        ({"REDIS_URL": "rediss://:pw@redis:6380/0"}, "redis_url", "rediss://:pw@redis:6380/0"),
        # URLs stay the text given (callers join paths onto them).
        (
            {"WECHAT_API_BASE": "http://127.0.0.1:8000/sb/"},
            "wechat_api_base",
            "http://127.0.0.1:8000/sb/",
        ),
        ({"ADMIN_TOKEN": "x" * 16}, "admin_token", "x" * 16),
        ({"MIMOCHAT_METRICS_PORT": "0"}, "metrics_port", 0),
    ],
)
def test_from_env(env: dict, field: str, value: object) -> None:
    assert getattr(Settings.from_env(env, dotenv=False), field) == value


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"MIMOCHAT_BACKEND": "tranformers"},
            "MIMOCHAT_BACKEND='tranformers' is not allowed: expected one of transformers, openai",
        ),
        (
            {"WECHAT_REPLY_MODE": "push"},
            "WECHAT_REPLY_MODE='push' is not allowed: "
            "expected one of auto, customer_service, passive",
        ),
        (
            {"WECOM_SESSION_SCOPE": "everyone"},
            "WECOM_SESSION_SCOPE='everyone' is not allowed: expected one of user_in_group, group, user",
        ),
        (
            {"MIMOCHAT_CONTINUOUS_BATCHING": "ture"},  # not silently off any more
            "MIMOCHAT_CONTINUOUS_BATCHING='ture' is not allowed: "
            "expected a boolean: 1/0, true/false, yes/no or on/off",
        ),
        (
            {"MIMOCHAT_HISTORY_TTL": "a week"},
            "MIMOCHAT_HISTORY_TTL='a week' is not allowed: expected a whole number > 0",
        ),
        (
            {"MIMOCHAT_GPU_CONCURRENCY": "0"},
            "MIMOCHAT_GPU_CONCURRENCY='0' is not allowed: expected a whole number >= 1",
        ),
        (
            {"MIMOCHAT_METRICS_PORT": "70000"},
            "MIMOCHAT_METRICS_PORT='70000' is not allowed: expected a whole number from 0 to 65535",
        ),
        (
            {"MIMOCHAT_TOP_P": "1.5"},
            "MIMOCHAT_TOP_P='1.5' is not allowed: expected a number > 0 and <= 1",
        ),
        (
            {"MIMOCHAT_TEMPERATURE": "warm"},
            "MIMOCHAT_TEMPERATURE='warm' is not allowed: expected a number >= 0",
        ),
        (
            {"WECHAT_API_BASE": "api.weixin.qq.com"},
            "WECHAT_API_BASE='api.weixin.qq.com' is not allowed: expected an http(s) URL",
        ),
        (
            {"MIMOCHAT_OPENAI_BASE_URL": "ftp://models/v1"},
            "MIMOCHAT_OPENAI_BASE_URL='ftp://models/v1' is not allowed: expected an http(s) URL",
        ),
        (
            {"REDIS_URL": "localhost:6379"},
            "REDIS_URL='localhost:6379' is not allowed: "
            "expected a redis://, rediss:// or unix:// URL, or empty",
        ),
        (
            {"MIMOCHAT_DEVICE": "tpu"},
            "MIMOCHAT_DEVICE='tpu' is not allowed: expected auto, cpu, mps, cuda or cuda:N",
        ),
        (
            {"MIMOCHAT_DTYPE": "int4"},
            "MIMOCHAT_DTYPE='int4' is not allowed: expected one of auto, bfloat16",
        ),
        (
            {"MIMOCHAT_LOG_LEVEL": "verbose"},  # shown as given, not as normalised
            "MIMOCHAT_LOG_LEVEL='verbose' is not allowed: expected one of DEBUG, INFO",
        ),
        (
            {"MIMOCHAT_LOG_FORMAT": "xml"},
            "MIMOCHAT_LOG_FORMAT='xml' is not allowed: expected one of logfmt, json",
        ),
        (
            {"ADMIN_TOKEN": "hunter2"},  # a secret: its length, never its value
            "ADMIN_TOKEN=(secret, 7 characters) is not allowed: "
            "expected at least 16 characters, or empty (the console off)",
        ),
    ],
)
def test_a_bad_value_is_refused_naming_it_and_what_is_allowed(env: dict, line: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env, dotenv=False)
    assert len(refused.value.lines) == 1
    assert refused.value.lines[0].startswith(line)
    assert "hunter2" not in str(refused.value)


def test_every_bad_setting_is_named_at_once() -> None:
    env = {"MIMOCHAT_BACKEND": "vllm", "MIMOCHAT_SANDBOX": "maybe", "WECHAT_TOKEN": "fine"}
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env, dotenv=False)
    assert [line.split("=")[0] for line in refused.value.lines] == [
        "MIMOCHAT_SANDBOX",
        "MIMOCHAT_BACKEND",
    ]
    assert isinstance(refused.value, ValueError)  # callers that caught ValueError still do


def test_keyword_construction_is_validated_too() -> None:
    with pytest.raises(ValidationError):
        Settings(backend="vllm")
    with pytest.raises(ValidationError):
        Settings(admin_token="short")


def test_dotenv_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("WECHAT_TOKEN=fromfile\nWECHAT_APP_ID=wxfile\n")
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({"WECHAT_TOKEN": "fromenv"})
    assert (s.wechat_token, s.wechat_app_id) == ("fromenv", "wxfile")


def test_a_bad_value_in_dotenv_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("MIMOCHAT_SANDBOX=ture\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match="MIMOCHAT_SANDBOX='ture'"):
        Settings.from_env({})
    assert Settings.from_env({"MIMOCHAT_SANDBOX": "1"}).sandbox  # the environment wins


def test_keyword_settings_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIMOCHAT_BACKEND", "openai")
    assert Settings().backend == "transformers"
    assert Settings.from_env(dotenv=False).backend == "openai"


def test_replace_copies_and_refuses_unknown_fields() -> None:
    s = Settings(wechat_token="t")
    changed = s.replace(max_queue=7)
    assert (changed.max_queue, changed.wechat_token, s.max_queue) == (7, "t", 200)
    # Unvalidated on purpose: the doctor's tests plant values a real start would refuse.
    assert s.replace(backend="vllm").backend == "vllm"
    with pytest.raises(TypeError, match="max_queu"):
        s.replace(max_queu=7)


def test_settings_are_frozen_and_hashable() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.max_queue = 1  # type: ignore[misc]
    assert hash(s) == hash(Settings()) and s == Settings()


def test_committed_env_example_is_the_generated_one() -> None:
    # After changing a setting: python -m bot.core.settings > .env.example
    assert (ROOT / ".env.example").read_text() == env_example()


def test_env_example_lists_every_setting() -> None:
    text = env_example()
    for name, default, doc in setting_docs():
        assert f"# {doc}\n" in text and f"\n{name}={default}\n" in text, name
    assert "python -m bot.core.settings > .env.example" in text


def test_redacted_hides_secrets() -> None:
    s = Settings(wechat_app_secret="s3cret", wechat_aes_key="k" * 43, admin_token="adm" * 6)
    shown = "\n".join(f"{k}={v}" for k, v in s.redacted().items())
    for secret in ("s3cret", "k" * 43, "adm" * 6):
        assert secret not in shown
    assert set(Settings.model_fields) >= SECRET_FIELDS
    assert s.redacted()[env_name("admin_token")] == "(set)"


def test_to_env_round_trips() -> None:
    s = Settings(sandbox=True, history_max_turns=3, wechat_token="t", backend="openai")
    assert Settings.from_env(s.to_env(), dotenv=False) == s


def test_load_or_exit_names_the_setting_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {"MIMOCHAT_BACKEND": "openai"}
    assert load_or_exit(env, dotenv=False).backend == "openai"
    env = {"MIMOCHAT_BACKEND": "tranformers", "MIMOCHAT_GPU_CONCURRENCY": "-1"}
    with pytest.raises(SystemExit) as exited:
        load_or_exit(env, dotenv=False, program="mimochat up")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mimochat up: refusing to start, 2 settings not allowed:")
    assert "MIMOCHAT_BACKEND='tranformers' is not allowed" in err
    assert "MIMOCHAT_GPU_CONCURRENCY='-1'" in err
    assert "Traceback" not in err
