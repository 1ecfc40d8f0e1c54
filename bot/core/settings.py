"""One settings object, read from the environment and `.env` (environment wins)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPLY_MODES = ("auto", "customer_service", "passive")
WECOM_SCOPES = ("user_in_group", "group", "user")
BACKENDS = ("transformers", "openai")
SECRET_FIELDS = frozenset(
    {"wechat_app_secret", "wechat_aes_key", "wecom_bot_aes_key", "admin_token", "openai_api_key"}
)


def _setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every knob of mimochat; `Settings.from_env()` builds it, tests build their own."""

    # WeChat Official Account
    wechat_token: str = _setting(
        "WECHAT_TOKEN", "", "Token set in the Official Account console (3-32 letters/digits)."
    )
    wechat_app_id: str = _setting("WECHAT_APP_ID", "", "AppID of the account (wx + 16 hex chars).")
    wechat_app_secret: str = _setting("WECHAT_APP_SECRET", "", "AppSecret of the account.")
    wechat_aes_key: str = _setting(
        "WECHAT_AES_KEY", "", "EncodingAESKey (43 chars); empty: plaintext mode."
    )
    wechat_reply_mode: str = _setting(
        "WECHAT_REPLY_MODE", "auto", "auto | customer_service | passive."
    )
    wechat_api_base: str = _setting(
        "WECHAT_API_BASE", "https://api.weixin.qq.com/", "WeChat API host (the sandbox in demo)."
    )
    wechat_passive_wait: float = _setting(
        "WECHAT_PASSIVE_WAIT",
        4.5,
        "Seconds a webhook call waits for the answer in passive mode (WeChat gives up at 5).",
    )
    wechat_platform_timeout: float = _setting(
        "WECHAT_PLATFORM_TIMEOUT",
        5.0,
        "Seconds WeChat waits for the webhook before retrying (the sandbox uses it too).",
    )
    wechat_attempts: int = _setting(
        "WECHAT_ATTEMPTS", 3, "Tries WeChat makes per message; the last gets a progress notice."
    )
    wechat_cs_quota: int = _setting(
        "WECHAT_CS_QUOTA", 5, "Customer-service sends allowed per user message (WeChat: 5)."
    )
    wechat_cs_window: int = _setting(
        "WECHAT_CS_WINDOW", 172800, "Seconds a user message keeps the send window open (48 h)."
    )
    pending_ttl: int = _setting(
        "MIMOCHAT_PENDING_TTL",
        259200,
        "Seconds an answer waits for the user's next message before it is dropped.",
    )
    wechat_timestamp_window: int = _setting(
        "WECHAT_TIMESTAMP_WINDOW", 300, "Seconds a signed request's timestamp may be off."
    )
    # WeCom intelligent robot
    wecom_bot_token: str = _setting("WECOM_BOT_TOKEN", "", "Token of the WeCom intelligent robot.")
    wecom_bot_aes_key: str = _setting(
        "WECOM_BOT_AES_KEY", "", "EncodingAESKey of the WeCom intelligent robot."
    )
    wecom_bot_name: str = _setting(
        "WECOM_BOT_NAME",
        "",
        "The robot's display name, stripped from questions wherever `@name` appears; "
        "empty: only leading @mentions are stripped.",
    )
    wecom_session_scope: str = _setting(
        "WECOM_SESSION_SCOPE",
        "user_in_group",
        "Whose thread a group question joins: user_in_group (each person's own thread in "
        "each group) | group (one thread per group) | user (one thread per person everywhere).",
    )
    wecom_group_allowlist: str = _setting(
        "WECOM_GROUP_ALLOWLIST",
        "",
        "Comma-separated group chat ids the robot answers in; empty: every group.",
    )
    wecom_show_reasoning: bool = _setting(
        "WECOM_SHOW_REASONING", True, "Show the model's reasoning as a collapsible <think> block."
    )
    wecom_max_in_flight: int = _setting(
        "WECOM_MAX_IN_FLIGHT",
        3,
        "Questions one person may have in progress at once (WeCom allows 3); more get a notice.",
    )
    wecom_stream_window: float = _setting(
        "WECOM_STREAM_WINDOW",
        330.0,
        "Seconds after a question when an unfinished stream is closed and the answer goes to "
        "response_url instead (WeCom stops refreshing at 360).",
    )
    wecom_fallback_grace: float = _setting(
        "WECOM_FALLBACK_GRACE",
        10.0,
        "Seconds a finished answer waits for a stream refresh before it goes to response_url.",
    )
    wecom_sandbox_refresh_interval: float = _setting(
        "WECOM_SANDBOX_REFRESH_INTERVAL",
        1.0,
        "Seconds between the stream refreshes of the sandbox WeCom and the console's simulator.",
    )
    # Infrastructure
    redis_url: str = _setting(
        "REDIS_URL", "", "redis:// or unix:// URL; empty: an embedded Redis under the data dir."
    )
    data_dir: str = _setting(
        "MIMOCHAT_DATA_DIR", "~/.cache/mimochat", "Embedded Redis, tiny model and other state."
    )
    visibility_timeout: int = _setting(
        "MIMOCHAT_VISIBILITY_TIMEOUT",
        3600,
        "Seconds before an unacknowledged job is redelivered; longer than any generation.",
    )
    sandbox: bool = _setting(
        "MIMOCHAT_SANDBOX", False, "Mount the fake WeChat API at /sandbox (demo and tests only)."
    )
    max_body_bytes: int = _setting(
        "MIMOCHAT_MAX_BODY_BYTES", 65536, "Larger webhook bodies are refused with 413."
    )
    dedup_ttl: int = _setting(
        "MIMOCHAT_DEDUP_TTL", 86400, "Seconds a message id is remembered against WeChat retries."
    )
    max_queue: int = _setting(
        "MIMOCHAT_MAX_QUEUE",
        200,
        "Most questions waiting for a GPU; beyond it users get a polite 'busy' reply (0: no limit).",
    )
    shutdown_grace: float = _setting(
        "MIMOCHAT_SHUTDOWN_GRACE",
        90.0,
        "Seconds SIGTERM waits for running generations/requests before handing jobs back.",
    )
    metrics_port: int = _setting(
        "MIMOCHAT_METRICS_PORT",
        9540,
        "Port of each worker's Prometheus metrics server (0: none; the web serves /metrics).",
    )
    wechat_timeout: float = _setting(
        "MIMOCHAT_WECHAT_TIMEOUT", 10.0, "Seconds one WeChat API call may take before it fails."
    )
    # Conversations
    history_ttl: int = _setting(
        "MIMOCHAT_HISTORY_TTL", 604800, "Seconds a conversation is kept after its last turn."
    )
    history_max_turns: int = _setting(
        "MIMOCHAT_HISTORY_MAX_TURNS", 20, "Most question/answer pairs kept per conversation."
    )
    # Model and generation
    model: str = _setting(
        "MIMOCHAT_MODEL",
        "XiaomiMiMo/MiMo-7B-RL",
        "Hub id or local directory; `tiny` builds a small random test checkpoint offline.",
    )
    backend: str = _setting("MIMOCHAT_BACKEND", "transformers", "transformers | openai.")
    device: str = _setting("MIMOCHAT_DEVICE", "auto", "auto (cuda if present) | cpu | cuda:N.")
    dtype: str = _setting(
        "MIMOCHAT_DTYPE",
        "auto",
        "auto (bf16 on CUDA, float32 on CPU) | bfloat16 | float16 | float32.",
    )
    temperature: float = _setting("MIMOCHAT_TEMPERATURE", 0.6, "Sampling temperature.")
    top_p: float = _setting("MIMOCHAT_TOP_P", 0.95, "Nucleus sampling top_p.")
    thinking_budget: int = _setting(
        "MIMOCHAT_THINKING_BUDGET", 2048, "Most tokens of reasoning before the answer is forced."
    )
    max_new_tokens: int = _setting(
        "MIMOCHAT_MAX_NEW_TOKENS", 1024, "Most tokens of answer after the reasoning."
    )
    openai_base_url: str = _setting(
        "MIMOCHAT_OPENAI_BASE_URL",
        "http://127.0.0.1:8001/v1",
        "OpenAI-compatible server (vLLM, SGLang) when MIMOCHAT_BACKEND=openai.",
    )
    openai_model: str = _setting(
        "MIMOCHAT_OPENAI_MODEL",
        "XiaomiMiMo/MiMo-7B-RL",
        "Model name the OpenAI-compatible server serves.",
    )
    openai_api_key: str = _setting(
        "MIMOCHAT_OPENAI_API_KEY", "", "API key of the OpenAI-compatible server, if it needs one."
    )
    gpu_concurrency: int = _setting(
        "MIMOCHAT_GPU_CONCURRENCY", 8, "Generation tasks one GPU worker runs at a time."
    )
    continuous_batching: bool = _setting(
        "MIMOCHAT_CONTINUOUS_BATCHING",
        True,
        "Batch concurrent conversations in one forward pass (transformers backend); 0: one at a time.",
    )
    context_tokens: int = _setting(
        "MIMOCHAT_CONTEXT_TOKENS",
        0,
        "Most tokens of one conversation (history + reasoning + answer); 0: the model's own limit.",
    )
    kv_cache_tokens: int = _setting(
        "MIMOCHAT_KV_CACHE_TOKENS",
        0,
        "Tokens of paged KV cache shared by all conversations; 0: concurrency x context, if it fits.",
    )
    kv_cache_memory: float = _setting(
        "MIMOCHAT_KV_CACHE_MEMORY",
        0.85,
        "Most of the device memory left after loading the weights that the KV cache may take.",
    )
    max_batch_tokens: int = _setting(
        "MIMOCHAT_MAX_BATCH_TOKENS",
        512,
        "Most tokens in one forward pass; longer prompts are prefilled in chunks of this size.",
    )
    generation_timeout: float = _setting(
        "MIMOCHAT_GENERATION_TIMEOUT",
        300.0,
        "Seconds one answer may take before it is cancelled (its KV memory freed); 0: no limit.",
    )
    generation_delay: float = _setting(
        "MIMOCHAT_GENERATION_DELAY",
        0.0,
        "Seconds added before each generation (tests of slow answers only).",
    )
    # Admin and logs
    admin_token: str = _setting("ADMIN_TOKEN", "", "Token for /admin; empty: the console is off.")
    log_level: str = _setting("MIMOCHAT_LOG_LEVEL", "INFO", "Log level of every process.")
    log_format: str = _setting(
        "MIMOCHAT_LOG_FORMAT", "logfmt", "logfmt (key=value lines) | json (one object a line)."
    )
    log_user_text: bool = _setting(
        "MIMOCHAT_LOG_USER_TEXT", False, "Put users' questions and answers in the logs (privacy)."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, dotenv: bool = True) -> Settings:
        """Build settings from `environ` (default os.environ) over `.env` in the cwd."""
        values: dict[str, str] = {}
        if dotenv:
            values.update(read_dotenv(Path.cwd() / ".env"))
        values.update(os.environ if environ is None else environ)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = values.get(f.metadata["env"])
            if raw is None:
                continue
            kwargs[f.name] = _coerce(f, raw)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, for child processes."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.metadata["env"]] = (
                ("1" if value else "0") if isinstance(value, bool) else str(value)
            )
        return out

    def redacted(self) -> dict[str, str]:
        """Environment-style view safe to print: secrets show only whether they are set."""
        env = self.to_env()
        for f in dataclasses.fields(self):
            if f.name in SECRET_FIELDS:
                env[f.metadata["env"]] = "(set)" if getattr(self, f.name) else "(empty)"
        return env

    @property
    def data_path(self) -> Path:
        """The data directory, expanded."""
        return Path(self.data_dir).expanduser()

    @property
    def encrypted(self) -> bool:
        """True when an EncodingAESKey is configured (safe or compatible mode)."""
        return bool(self.wechat_aes_key)


def setting_docs() -> list[tuple[str, str, str]]:
    """(ENV_NAME, default, meaning) for every setting, in declaration order."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = ("1" if default else "0") if isinstance(default, bool) else str(default)
        rows.append((f.metadata["env"], shown, f.metadata["doc"]))
    return rows


_GROUPS = {
    "WECHAT_TOKEN": "WeChat Official Account",
    "WECOM_BOT_TOKEN": "WeCom intelligent robot",
    "REDIS_URL": "Infrastructure",
    "MIMOCHAT_HISTORY_TTL": "Conversations",
    "MIMOCHAT_MODEL": "Model and generation",
    "ADMIN_TOKEN": "Admin console and logs",
}


def env_example() -> str:
    """The text of `.env.example`: every setting with its meaning and default."""
    lines = [
        "# mimochat settings: copy to .env and edit. The environment wins over this file.",
        "# Every setting, its default and its meaning. Secrets never appear in logs or responses.",
        "# Regenerate with: python -m bot.core.settings > .env.example",
    ]
    for name, default, doc in setting_docs():
        if name in _GROUPS:
            lines += ["", f"# --- {_GROUPS[name]} ---"]
        lines += [f"# {doc}", f"{name}={default}"]
    return "\n".join(lines) + "\n"


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = type(f.default)
    raw = raw.strip()
    try:
        if kind is bool:
            return raw.lower() in ("1", "true", "yes", "on")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"{f.metadata['env']} must be a {kind.__name__}, got {raw!r}") from exc
    return raw


def read_dotenv(path: Path) -> dict[str, str]:
    """The variables of a `.env` file ({} if there is none)."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


if __name__ == "__main__":
    print(env_example(), end="")
