"""Loading a checkpoint: device and dtype choice, and the checkpoints the engine refuses or accepts.

The refusals are checked through the engine's constructor, where an operator meets them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from bot.core.settings import Settings
from bot.engine.transformers.engine import TransformersEngine
from bot.engine.transformers.loading import resolve_device, resolve_dtype
from tests.bot.engine.builders import request


def test_missing_directory(tiny_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        TransformersEngine(tiny_settings.replace(model=str(tmp_path / "nowhere")))


def test_hub_id_that_cannot_be_fetched(
    tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def offline(repo_id: str, filename: str, **kwargs: Any) -> str:
        raise OSError("no connection to huggingface.co")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="mimochat download"):
        TransformersEngine(tiny_settings.replace(model="XiaomiMiMo/MiMo-7B-RL"))


def test_neither_directory_nor_hub_id(tiny_settings: Settings) -> None:
    with pytest.raises(ValueError, match="neither an existing directory nor a valid hub id"):
        TransformersEngine(tiny_settings.replace(model="no such model!"))


def test_directory_without_config_or_weights(tiny_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no config.json"):
        TransformersEngine(tiny_settings.replace(model=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ValueError, match="no weights"):
        TransformersEngine(tiny_settings.replace(model=str(tmp_path)))


def test_other_architecture_is_refused(tiny_settings: Settings, tmp_path: Path) -> None:
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="'llama' model.*Qwen2"):
        TransformersEngine(tiny_settings.replace(model=str(tmp_path)))


def test_mimo_checkpoint_loads_as_qwen2(
    tiny_settings: Settings,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
    capfd: pytest.CaptureFixture,
) -> None:
    mimo = tmp_path / "MiMo-tiny"
    shutil.copytree(tiny_model_dir, mimo)
    config = json.loads((mimo / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config.update(
        model_type="mimo",
        architectures=["MiMoForCausalLM"],
        auto_map={"AutoModelForCausalLM": "modeling_mimo.MiMoForCausalLM"},
        num_nextn_predict_layers=1,
        rope_theta=rope["rope_theta"],
        rope_scaling=None,
    )
    (mimo / "config.json").write_text(json.dumps(config))
    weights = load_file(mimo / "model.safetensors")
    weights["model.mtp_layers.0.input_layernorm.weight"] = torch.ones(64)
    weights["model.mtp_layers.0.input_proj.weight"] = torch.zeros(64, 128)
    save_file(weights, mimo / "model.safetensors", metadata={"format": "pt"})
    capfd.readouterr()

    engine = TransformersEngine(tiny_settings.replace(model=str(mimo)))
    try:
        generation = engine.generate(request(thinking_budget=3, max_new_tokens=3))
        assert generation.answer
        assert engine.info()["parameters"] == tiny_engine.info()["parameters"]
    finally:
        engine.close()
    # The MTP weights are skipped without a load report full of UNEXPECTED keys.
    assert "mtp_layers" not in "".join(capfd.readouterr())


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [("tpu", ValueError, "MIMOCHAT_DEVICE"), ("nonsense!", ValueError, "MIMOCHAT_DEVICE")],
)
def test_bad_device(name: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu() -> None:
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu")


def test_dtypes() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match="MIMOCHAT_DTYPE"):
        resolve_dtype("int4", cpu)
