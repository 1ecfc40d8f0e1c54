"""The worker's last word when its engine cannot load, and how a child hands it to its supervisor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.core.lifeline import EXIT_CANNOT_START, NOTE_ENV, engine_failure, read_note

ROOT = Path(__file__).resolve().parents[3]
INSTALL = " — install the model libraries: pip install 'mimochat[engine]'"
OOM = " — free the GPU, or choose a smaller MIMOCHAT_MODEL or MIMOCHAT_DTYPE"


@pytest.mark.parametrize(
    ("exc", "sentence"),
    [
        (
            ModuleNotFoundError("No module named 'torch'", name="torch"),
            "the engine cannot load: No module named 'torch'" + INSTALL,
        ),
        (
            ModuleNotFoundError(
                "No module named 'transformers.models'", name="transformers.models"
            ),
            "the engine cannot load: No module named 'transformers.models'" + INSTALL,
        ),
        (
            ImportError("libcudart.so.12: cannot open shared object file", name="torch"),
            "the engine cannot load: libcudart.so.12: cannot open shared object file" + INSTALL,
        ),
        (
            ModuleNotFoundError("No module named 'yaml'", name="yaml"),
            "the engine cannot load: No module named 'yaml'",
        ),
        (
            ValueError("model directory /x does not exist; set MIMOCHAT_MODEL to a directory"),
            "the engine cannot load: model directory /x does not exist; set MIMOCHAT_MODEL to a "
            "directory",
        ),
        (
            RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail"),
            "the engine cannot load: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)"
            + OOM,
        ),
        (MemoryError(), "the engine cannot load: out of memory (MemoryError)" + OOM),
        (OSError(), "the engine cannot load: OSError"),
    ],
    ids=[
        "torch",
        "transformers",
        "torch-broken",
        "other-module",
        "bad-path",
        "cuda-oom",
        "oom",
        "bare",
    ],
)
def test_engine_failure_is_one_sentence(exc: BaseException, sentence: str) -> None:
    assert engine_failure(exc) == sentence


def test_cannot_start_exits_with_its_code_and_leaves_its_sentence(tmp_path: Path) -> None:
    note = tmp_path / "worker"
    code = "from bot.core.lifeline import cannot_start; cannot_start('the engine cannot load: x')"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT), NOTE_ENV: str(note)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == EXIT_CANNOT_START
    assert done.stderr == "the engine cannot load: x\n"
    assert read_note(note) == "the engine cannot load: x"
    assert read_note(tmp_path / "nothing") == ""
