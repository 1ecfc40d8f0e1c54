"""`mimochat download` and loading a hub id from the Hugging Face cache, all offline.

The hub cannot be reached from here, so a snapshot of the tiny model is laid out by hand in a
temporary HF cache (refs/main -> snapshots/<commit>/files), exactly where `snapshot_download`
puts one, and the real huggingface_hub and transformers code reads it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest

from bot.core.settings import Settings
from bot.engine.transformers.download import (
    ALLOW_PATTERNS,
    cached_snapshot,
    download,
    resolve_model,
)
from bot.engine.transformers.engine import TransformersEngine
from tests.helpers import free_port

REPO = "mimochat-test/tiny-qwen2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture
def hub_cache(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding a snapshot of the tiny model as REPO; the hub is offline."""
    cache = tmp_path / "hub"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return snapshot


def test_cached_snapshot_is_found_without_network(hub_cache: Path) -> None:
    assert cached_snapshot(REPO) == hub_cache
    assert cached_snapshot("mimochat-test/not-downloaded") is None
    assert cached_snapshot("not a hub id!") is None


def test_a_cached_hub_id_loads_from_its_snapshot(hub_cache: Path, tiny_settings: Settings) -> None:
    settings = tiny_settings.replace(model=REPO, continuous_batching=False)
    assert resolve_model(settings) == str(hub_cache)
    engine = TransformersEngine(settings)
    try:
        assert engine.info()["source"] == str(hub_cache)
        assert engine.info()["model"] == REPO
        assert engine.count_tokens([{"role": "user", "content": "hi"}]) > 0
    finally:
        engine.close()


def test_download_of_a_cached_model_returns_it_offline(hub_cache: Path) -> None:
    assert download(REPO) == hub_cache


def test_download_of_a_local_directory_checks_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert download(str(tiny_model_dir)) == tiny_model_dir
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="llama"):
        download(str(tmp_path))


@pytest.mark.parametrize("bad", ["", "   "])
def test_download_needs_a_name(bad: str) -> None:
    with pytest.raises(ValueError, match="name a model"):
        download(bad)


def test_only_what_the_engine_loads_is_fetched() -> None:
    from huggingface_hub.utils import filter_repo_objects

    repo_files = [
        "config.json",
        "generation_config.json",
        "model-00001-of-00004.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "modeling_mimo.py",
        "configuration_mimo.py",
        "pytorch_model.bin",
        "figures/architecture.png",
    ]
    fetched = set(filter_repo_objects(repo_files, allow_patterns=ALLOW_PATTERNS))
    assert {"modeling_mimo.py", "configuration_mimo.py", "pytorch_model.bin"}.isdisjoint(fetched)
    assert {"config.json", "model-00001-of-00004.safetensors", "tokenizer.json"} <= fetched


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from bot.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def test_download_command_says_clearly_when_the_hub_is_unreachable(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    result = run_cli(
        "download",
        "XiaomiMiMo/MiMo-7B-RL",
        env={"HF_ENDPOINT": nowhere, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "0"},
    )
    assert result.returncode == 1
    assert "cannot reach the Hugging Face hub" in result.stderr
    assert "Traceback" not in result.stderr


def test_download_command_rejects_a_bad_id(capsys: pytest.CaptureFixture) -> None:
    from bot.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["download", "not/a/hub/id!"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("mimochat download: ") and "not a hub id" in err
