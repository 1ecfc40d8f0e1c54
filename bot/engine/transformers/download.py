"""Where a model's files are: fetched into the Hugging Face cache (`mimochat download`), found there.

Only what the engine loads is fetched (config, safetensors, tokenizer files): MiMo's repository
also holds remote code, which mimochat never runs, and duplicate `.bin` weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import enable_progress_bars
from tqdm.auto import tqdm

from bot.core.settings import Settings
from bot.engine.transformers.loading import looks_like_path, read_model_config
from bot.engine.transformers.tiny import TINY, ensure_tiny_model

log = logging.getLogger(__name__)

DEFAULT_MODEL = "XiaomiMiMo/MiMo-7B-RL"
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def download(model: str = DEFAULT_MODEL) -> Path:
    """Fetch `model` (a hub id) into the Hugging Face cache with a progress bar; its directory.

    A local directory, or `tiny`, needs no download: it is checked and returned as it is.
    """
    name = (model or "").strip()
    if not name:
        raise ValueError("name a model: a hub id such as XiaomiMiMo/MiMo-7B-RL")
    if name == TINY:
        return ensure_tiny_model(Settings.from_env().data_path)
    if Path(name).expanduser().is_dir():
        read_model_config(str(Path(name).expanduser()))
        return Path(name).expanduser()
    path = _snapshot(name)
    read_model_config(str(path))  # the weights are there and the architecture is one we run
    return path


def resolve_model(settings: Settings) -> str:
    """The local directory or hub id to load: `tiny` builds the test checkpoint on first use.

    A hub id already in the Hugging Face cache (`mimochat download`) resolves to its snapshot
    directory, so loading it never touches the network.
    """
    name = settings.model.strip()
    if name == TINY:
        return str(ensure_tiny_model(settings.data_path))
    if name and not Path(name).expanduser().exists() and not looks_like_path(name):
        cached = cached_snapshot(name)
        if cached is not None:
            return str(cached)
    return name


def cached_snapshot(repo_id: str) -> Path | None:
    """The complete local snapshot of `repo_id` in the Hugging Face cache, or None (no network)."""
    try:
        path = snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None
    return Path(path)


def _snapshot(repo_id: str) -> Path:
    enable_progress_bars()
    try:
        path = snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS, tqdm_class=tqdm)
    except HFValidationError as exc:
        raise ValueError(f"{repo_id!r} is not a hub id (expected org/name): {exc}") from exc
    except GatedRepoError as exc:
        raise RuntimeError(
            f"{repo_id} is gated: accept its terms on huggingface.co and log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise RuntimeError(f"{repo_id} does not exist on the Hugging Face hub") from exc
    except LocalEntryNotFoundError as exc:
        raise RuntimeError(
            f"cannot reach the Hugging Face hub to fetch {repo_id}, and it is not in the local "
            "cache; check the network, or set HF_ENDPOINT to a mirror (e.g. https://hf-mirror.com)"
        ) from exc
    except OSError as exc:
        raise RuntimeError(f"downloading {repo_id} failed: {exc}") from exc
    return Path(path)
