"""One settings object, read from the environment and `.env` (environment wins), validated.

`Settings` is a pydantic-settings model: every setting has a type, its allowed values (a choice,
a bound, a URL) and a description, and `.env.example` is generated from it
(`python -m bot.core.settings > .env.example`). Entry points call `load_or_exit()`, which
refuses to start and names every bad setting, its value (secrets masked) and what is allowed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bot.core.guard_settings import GuardSettings
from bot.core.setting_types import (
    ADMIN_TOKEN_MIN,
    HTTP_URL_WORDS,
    AdminTokenStr,
    Backend,
    DeviceStr,
    DtypeName,
    HttpUrlStr,
    LogFormat,
    LogLevelName,
    RedisUrlStr,
    ReplyMode,
    WecomScope,
    WsUrlStr,
    describe,
    setting,
)

REPLY_MODES: tuple[str, ...] = get_args(ReplyMode)
WECOM_SCOPES: tuple[str, ...] = get_args(WecomScope)
BACKENDS: tuple[str, ...] = get_args(Backend)
SECRET_FIELDS = frozenset(
    {"wechat_app_secret", "wechat_aes_key", "wecom_bot_aes_key", "admin_token", "openai_api_key"}
    | {"wecom_bot_secret"}
)


class Settings(GuardSettings):
    """Every knob of mimochat; `Settings.from_env()` builds it, tests build their own."""

    # `Settings(**kw)` takes field names; from_env takes the environment variable names.
    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        case_sensitive=True,
        validate_by_name=True,
        validate_by_alias=True,
        validate_default=True,
    )

    # WeChat Official Account
    wechat_token: str = setting(
        "WECHAT_TOKEN", "", "Token set in the Official Account console (3-32 letters/digits)."
    )
    wechat_app_id: str = setting("WECHAT_APP_ID", "", "AppID of the account (wx + 16 hex chars).")
    wechat_app_secret: str = setting("WECHAT_APP_SECRET", "", "AppSecret of the account.")
    wechat_aes_key: str = setting(
        "WECHAT_AES_KEY", "", "EncodingAESKey (43 chars); empty: plaintext mode."
    )
    wechat_reply_mode: ReplyMode = setting(
        "WECHAT_REPLY_MODE", "auto", "auto | customer_service | passive."
    )
    wechat_api_base: HttpUrlStr = setting(
        "WECHAT_API_BASE",
        "https://api.weixin.qq.com/",
        "WeChat API host (the sandbox in demo).",
        allowed=HTTP_URL_WORDS,
    )
    wechat_passive_wait: float = setting(
        "WECHAT_PASSIVE_WAIT",
        4.5,
        "Seconds a webhook call waits for the answer in passive mode (WeChat gives up at 5).",
        ge=0,
    )
    wechat_platform_timeout: float = setting(
        "WECHAT_PLATFORM_TIMEOUT",
        5.0,
        "Seconds WeChat waits for the webhook before retrying (the sandbox uses it too).",
        gt=0,
    )
    wechat_attempts: int = setting(
        "WECHAT_ATTEMPTS",
        3,
        "Tries WeChat makes per message; the last gets a progress notice.",
        ge=1,
    )
    wechat_cs_quota: int = setting(
        "WECHAT_CS_QUOTA", 5, "Customer-service sends allowed per user message (WeChat: 5).", ge=0
    )
    wechat_cs_window: int = setting(
        "WECHAT_CS_WINDOW",
        172800,
        "Seconds a user message keeps the send window open (48 h).",
        gt=0,
    )
    pending_ttl: int = setting(
        "MIMOCHAT_PENDING_TTL",
        259200,
        "Seconds an answer waits for the user's next message before it is dropped.",
        gt=0,
    )
    wechat_timestamp_window: int = setting(
        "WECHAT_TIMESTAMP_WINDOW", 300, "Seconds a signed request's timestamp may be off.", ge=0
    )
    # WeCom intelligent robot
    wecom_bot_token: str = setting("WECOM_BOT_TOKEN", "", "Token of the WeCom intelligent robot.")
    wecom_bot_aes_key: str = setting(
        "WECOM_BOT_AES_KEY", "", "EncodingAESKey of the WeCom intelligent robot."
    )
    wecom_bot_name: str = setting(
        "WECOM_BOT_NAME",
        "",
        "The robot's display name, stripped from questions wherever `@name` appears; "
        "empty: only leading @mentions are stripped.",
    )
    wecom_session_scope: WecomScope = setting(
        "WECOM_SESSION_SCOPE",
        "user_in_group",
        "Whose thread a group question joins: user_in_group (each person's own thread in "
        "each group) | group (one thread per group) | user (one thread per person everywhere).",
    )
    wecom_group_allowlist: str = setting(
        "WECOM_GROUP_ALLOWLIST",
        "",
        "Comma-separated group chat ids the robot answers in; empty: every group.",
    )
    wecom_show_reasoning: bool = setting(
        "WECOM_SHOW_REASONING", True, "Show the model's reasoning as a collapsible <think> block."
    )
    wecom_max_in_flight: int = setting(
        "WECOM_MAX_IN_FLIGHT",
        3,
        "Questions one person may have in progress at once (WeCom allows 3); more get a notice.",
        ge=1,
    )
    wecom_stream_window: float = setting(
        "WECOM_STREAM_WINDOW",
        330.0,
        "Seconds after a question when an unfinished stream is closed and the answer goes to "
        "response_url instead (WeCom stops refreshing at 360).",
        ge=0,
    )
    wecom_fallback_grace: float = setting(
        "WECOM_FALLBACK_GRACE",
        10.0,
        "Seconds a finished answer waits for a stream refresh before it goes to response_url.",
        ge=0,
    )
    wecom_sandbox_refresh_interval: float = setting(
        "WECOM_SANDBOX_REFRESH_INTERVAL",
        1.0,
        "Seconds between the stream refreshes of the sandbox WeCom and the console's simulator.",
        gt=0,
    )
    wecom_bot_id: str = setting(
        "WECOM_BOT_ID", "", "Bot id of the WeCom robot's long connection; with the secret, runs it."
    )
    wecom_bot_secret: str = setting(
        "WECOM_BOT_SECRET", "", "Secret of the WeCom robot's long connection (WeCom's admin page)."
    )
    wecom_ws_url: WsUrlStr = setting(
        "WECOM_WS_URL",
        "wss://openws.work.weixin.qq.com",
        "WebSocket URL of the WeCom robot's long connection.",
        allowed="a ws:// or wss:// URL",
    )
    # Infrastructure
    redis_url: RedisUrlStr = setting(
        "REDIS_URL",
        "",
        "redis:// or unix:// URL; empty: an embedded Redis under the data dir.",
        allowed="a redis://, rediss:// or unix:// URL, or empty",
    )
    data_dir: str = setting(
        "MIMOCHAT_DATA_DIR", "~/.cache/mimochat", "Embedded Redis, tiny model and other state."
    )
    visibility_timeout: int = setting(
        "MIMOCHAT_VISIBILITY_TIMEOUT",
        3600,
        "Seconds before an unacknowledged job is redelivered; longer than any generation.",
        gt=0,
    )
    sandbox: bool = setting(
        "MIMOCHAT_SANDBOX", False, "Mount the fake WeChat API at /sandbox (demo and tests only)."
    )
    max_body_bytes: int = setting(
        "MIMOCHAT_MAX_BODY_BYTES", 65536, "Larger webhook bodies are refused with 413.", gt=0
    )
    dedup_ttl: int = setting(
        "MIMOCHAT_DEDUP_TTL",
        86400,
        "Seconds a message's ledger record (its dedupe against retries) is kept; at least 2 days.",
        gt=0,
    )
    max_queue: int = setting(
        "MIMOCHAT_MAX_QUEUE",
        200,
        "Most questions waiting for a GPU; beyond it users get a polite 'busy' reply (0: no limit).",
        ge=0,
    )
    shutdown_grace: float = setting(
        "MIMOCHAT_SHUTDOWN_GRACE",
        90.0,
        "Seconds SIGTERM waits for running generations/requests before handing jobs back.",
        ge=0,
    )
    web_processes: int = setting(
        "MIMOCHAT_WEB_PROCESSES",
        0,
        "gunicorn processes serving the webhooks (mimochat up/web, containers); 0: one per core.",
        ge=0,
    )
    web_threads: int = setting(
        "MIMOCHAT_WEB_THREADS",
        16,
        "Threads per web process; a passive-mode call holds one for up to ~5 s per WeChat try.",
        ge=1,
    )
    metrics_port: int = setting(
        "MIMOCHAT_METRICS_PORT",
        9540,
        "Port of each worker's Prometheus metrics server (0: none; the web serves /metrics).",
        ge=0,
        le=65535,
    )
    metrics_host: str = setting(
        "MIMOCHAT_METRICS_HOST",
        "127.0.0.1",
        "Address the worker's metrics server listens on (0.0.0.0: every interface, for a "
        "Prometheus on another host or container).",
    )
    wechat_timeout: float = setting(
        "MIMOCHAT_WECHAT_TIMEOUT",
        30.0,
        "Seconds one WeChat API call may take before it fails (generous: a send that times out "
        "after reaching WeChat is marked uncertain, never resent).",
        gt=0,
    )
    # The message ledger and its sweeper
    sweep_interval: float = setting(
        "MIMOCHAT_SWEEP_INTERVAL",
        5.0,
        "Seconds between the sweeper's passes over stuck messages.",
        gt=0,
    )
    max_attempts: int = setting(
        "MIMOCHAT_MAX_ATTEMPTS",
        3,
        "Times the sweeper requeues or redelivers one message before the apology (or parking).",
        ge=0,
    )
    stuck_after: float = setting(
        "MIMOCHAT_STUCK_AFTER",
        900.0,
        "Seconds a message may wait queued, generate or be delivered before the sweeper moves "
        "it on (a dead worker's message is found by its heartbeat, much sooner).",
        gt=0,
    )
    task_retries: int = setting(
        "MIMOCHAT_TASK_RETRIES",
        8,
        "Retries of a task after a transient failure (Redis, network, platform 5xx).",
        ge=0,
    )
    retry_backoff_max: int = setting(
        "MIMOCHAT_RETRY_BACKOFF_MAX",
        60,
        "Longest wait in seconds between two retries (waits double from 1 s, with jitter).",
        gt=0,
    )
    # Conversations
    history_ttl: int = setting(
        "MIMOCHAT_HISTORY_TTL", 604800, "Seconds a conversation is kept after its last turn.", gt=0
    )
    history_max_turns: int = setting(
        "MIMOCHAT_HISTORY_MAX_TURNS", 20, "Most question/answer pairs kept per conversation.", ge=1
    )
    # Model and generation
    model: str = setting(
        "MIMOCHAT_MODEL",
        "XiaomiMiMo/MiMo-7B-RL",
        "Hub id or local directory; `tiny` builds a small random test checkpoint offline.",
    )
    backend: Backend = setting("MIMOCHAT_BACKEND", "transformers", "transformers | openai.")
    device: DeviceStr = setting(
        "MIMOCHAT_DEVICE",
        "auto",
        "auto (cuda if present) | cpu | cuda:N.",
        allowed="auto, cpu, mps, cuda or cuda:N",
    )
    dtype: DtypeName = setting(
        "MIMOCHAT_DTYPE",
        "auto",
        "auto (bf16 on CUDA, float32 on CPU) | bfloat16 | float16 | float32.",
    )
    temperature: float = setting("MIMOCHAT_TEMPERATURE", 0.6, "Sampling temperature.", ge=0)
    top_p: float = setting("MIMOCHAT_TOP_P", 0.95, "Nucleus sampling top_p.", gt=0, le=1)
    thinking_budget: int = setting(
        "MIMOCHAT_THINKING_BUDGET",
        2048,
        "Most tokens of reasoning before the answer is forced.",
        ge=0,
    )
    max_new_tokens: int = setting(
        "MIMOCHAT_MAX_NEW_TOKENS", 1024, "Most tokens of answer after the reasoning.", ge=1
    )
    openai_base_url: HttpUrlStr = setting(
        "MIMOCHAT_OPENAI_BASE_URL",
        "http://127.0.0.1:8001/v1",
        "OpenAI-compatible server (vLLM, SGLang) when MIMOCHAT_BACKEND=openai.",
        allowed=HTTP_URL_WORDS,
    )
    openai_model: str = setting(
        "MIMOCHAT_OPENAI_MODEL",
        "XiaomiMiMo/MiMo-7B-RL",
        "Model name the OpenAI-compatible server serves.",
    )
    openai_api_key: str = setting(
        "MIMOCHAT_OPENAI_API_KEY", "", "API key of the OpenAI-compatible server, if it needs one."
    )
    gpu_concurrency: int = setting(
        "MIMOCHAT_GPU_CONCURRENCY", 8, "Generation tasks one GPU worker runs at a time.", ge=1
    )
    continuous_batching: bool = setting(
        "MIMOCHAT_CONTINUOUS_BATCHING",
        True,
        "Batch concurrent conversations in one forward pass (transformers backend); 0: one at a time.",
    )
    context_tokens: int = setting(
        "MIMOCHAT_CONTEXT_TOKENS",
        0,
        "Most tokens of one conversation (history + reasoning + answer); 0: the model's own limit.",
        ge=0,
    )
    kv_cache_tokens: int = setting(
        "MIMOCHAT_KV_CACHE_TOKENS",
        0,
        "Tokens of paged KV cache shared by all conversations; 0: concurrency x context, if it fits.",
        ge=0,
    )
    kv_cache_memory: float = setting(
        "MIMOCHAT_KV_CACHE_MEMORY",
        0.85,
        "Most of the device memory left after loading the weights that the KV cache may take.",
        gt=0,
        le=1,
    )
    max_batch_tokens: int = setting(
        "MIMOCHAT_MAX_BATCH_TOKENS",
        512,
        "Most tokens in one forward pass; longer prompts are prefilled in chunks of this size.",
        ge=1,
    )
    generation_timeout: float = setting(
        "MIMOCHAT_GENERATION_TIMEOUT",
        300.0,
        "Seconds one answer may take before it is cancelled (its KV memory freed); 0: no limit.",
        ge=0,
    )
    generation_delay: float = setting(
        "MIMOCHAT_GENERATION_DELAY",
        0.0,
        "Seconds added before each generation (tests of slow answers only).",
        ge=0,
    )
    # Admin and logs
    admin_token: AdminTokenStr = setting(
        "ADMIN_TOKEN",
        "",
        "Token for /admin; empty: the console is off.",
        allowed=f"at least {ADMIN_TOKEN_MIN} characters, or empty (the console off)",
    )
    log_level: LogLevelName = setting("MIMOCHAT_LOG_LEVEL", "INFO", "Log level of every process.")
    log_format: LogFormat = setting(
        "MIMOCHAT_LOG_FORMAT", "logfmt", "logfmt (key=value lines) | json (one object a line)."
    )
    log_user_text: bool = setting(
        "MIMOCHAT_LOG_USER_TEXT", False, "Put users' questions and answers in the logs (privacy)."
    )
    wechat_encrypt_mode: str = setting(
        "WECHAT_ENCRYPT_MODE",
        "",
        "safe (only AES messages) | compatible (AES and plaintext) | plain; empty: safe when "
        "WECHAT_AES_KEY is set, else plain.",
        allowed="safe | compatible | plain, or empty (derived from WECHAT_AES_KEY)",
        pattern=r"^(safe|compatible|plain)?$",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only keyword arguments: `Settings()` is the defaults whatever the environment holds."""
        # from_env() reads the environment explicitly (and tests pass a mapping of their own).
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, dotenv: bool = True) -> Settings:
        """Build settings from `environ` (default os.environ) over `.env` in the cwd.

        Raises SettingsError naming every bad setting, its value and what is allowed.
        """
        values: dict[str, str] = {}
        if dotenv:
            values.update(read_dotenv(Path.cwd() / ".env"))
        values.update(os.environ if environ is None else environ)
        try:
            return cls(**_EnvironSource(cls, values)())
        except ValidationError as exc:
            raise SettingsError(problems(exc, values)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, unvalidated: tests plant bad values for the doctor."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise TypeError(f"Settings has no field {', '.join(sorted(unknown))}")
        return self.model_copy(update=changes)

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, for child processes."""
        return {env_name(name): _shown(getattr(self, name)) for name in type(self).model_fields}

    def redacted(self) -> dict[str, str]:
        """Environment-style view safe to print: secrets show only whether they are set."""
        env = self.to_env()
        for name in SECRET_FIELDS:
            env[env_name(name)] = "(set)" if getattr(self, name) else "(empty)"
        return env

    @property
    def data_path(self) -> Path:
        """The data directory, expanded."""
        return Path(self.data_dir).expanduser()

    @property
    def encrypted(self) -> bool:
        """True when an EncodingAESKey is configured (safe or compatible mode)."""
        return bool(self.wechat_aes_key)


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        # Surrounding blanks never mean anything in a setting (`MIMOCHAT_SANDBOX= true `).
        self._given = {k: v.strip() for k, v in environ.items()}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return dict(self._given)


class SettingsError(ValueError):
    """Settings that cannot be used: one line per bad setting."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def env_name(field: str) -> str:
    """The environment variable of a field (`backend` -> MIMOCHAT_BACKEND)."""
    return str(Settings.model_fields[field].validation_alias)


def _field_of(loc: str | int) -> str:
    names = {env_name(name): name for name in Settings.model_fields}
    return names.get(str(loc), str(loc))


def allowed(field: str) -> str:
    """What a field accepts, in words (`one of transformers, openai`, `a whole number >= 1`)."""
    return describe(Settings.model_fields[field])


def problems(exc: ValidationError, raw: Mapping[str, str] | None = None) -> list[str]:
    """One line per bad setting: `NAME='value' is not allowed: expected ...`, secrets masked.

    `raw` (environment variable -> text) shows the value as given, before any normalising.
    """
    lines: list[str] = []
    for error in exc.errors():
        field = _field_of(error["loc"][0]) if error["loc"] else ""
        if field not in Settings.model_fields:
            lines.append(error["msg"])
            continue
        value = (raw or {}).get(env_name(field), error["input"])
        shown = f"(secret, {len(str(value))} characters)" if field in SECRET_FIELDS else repr(value)
        line = f"{env_name(field)}={shown} is not allowed: expected {allowed(field)}"
        if line not in lines:  # an Annotated choice may fail twice (before and after validators)
            lines.append(line)
    return lines


def load_or_exit(
    environ: Mapping[str, str] | None = None, dotenv: bool = True, program: str = "mimochat"
) -> Settings:
    """Settings.from_env() for an entry point: bad settings end the process with no traceback."""
    try:
        return Settings.from_env(environ, dotenv)
    except SettingsError as exc:
        count = len(exc.lines)
        print(
            f"{program}: refusing to start, {count} setting{'s' if count > 1 else ''} "
            f"not allowed:\n  " + "\n  ".join(exc.lines),
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def _shown(value: Any) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def setting_docs() -> list[tuple[str, str, str]]:
    """(ENV_NAME, default, meaning) for every setting, in declaration order."""
    return [
        (env_name(name), _shown(info.default), info.description or "") for name, info in _fields()
    ]


def _fields() -> list[tuple[str, Any]]:
    # Declaration order, the guards' mixin (inherited, so listed first by pydantic) last.
    fields = Settings.model_fields.items()
    return sorted(fields, key=lambda item: item[0] in GuardSettings.model_fields)


_GROUPS = {
    "WECHAT_TOKEN": "WeChat Official Account",
    "WECOM_BOT_TOKEN": "WeCom intelligent robot",
    "REDIS_URL": "Infrastructure",
    "MIMOCHAT_HISTORY_TTL": "Conversations",
    "MIMOCHAT_MODEL": "Model and generation",
    "ADMIN_TOKEN": "Admin console and logs",
    "MIMOCHAT_RATE_LIMIT_USER": "Guards: rate limits, content safety, thinking",
}


def env_example() -> str:
    """The text of `.env.example`: every setting with its meaning, what it allows and default."""
    lines = [
        "# mimochat settings: copy to .env and edit. The environment wins over this file.",
        "# Every setting, its default and its meaning. Secrets never appear in logs or responses.",
        "# A setting that is not allowed stops every process at start, naming it.",
        "# Generated from bot/core/settings.py; regenerate with:",
        "#   python -m bot.core.settings > .env.example",
    ]
    for name, info in _fields():
        env = env_name(name)
        if env in _GROUPS:
            lines += ["", f"# --- {_GROUPS[env]} ---"]
        rule = allowed(name)
        lines.append(f"# {info.description}")
        if rule != "text":
            lines.append(f"# Allowed: {rule}.")
        lines.append(f"{env}={_shown(info.default)}")
    return "\n".join(lines) + "\n"


def read_dotenv(path: Path) -> dict[str, str]:
    """The variables of a `.env` file ({} if there is none)."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


if __name__ == "__main__":
    print(env_example(), end="")
