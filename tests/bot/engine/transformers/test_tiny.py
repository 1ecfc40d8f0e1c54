"""The tiny offline checkpoint: built once, atomically, reproducibly, in MiMo's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, Qwen2ForCausalLM

from bot.engine.transformers import tiny
from bot.engine.transformers.tiny import CHAT_TEMPLATE, TINY, ensure_tiny_model


def test_constant() -> None:
    assert TINY == "tiny"


def test_built_under_data_dir_with_all_files(tiny_data_dir: Path, tiny_model_dir: Path) -> None:
    assert tiny_model_dir == tiny_data_dir / "models" / "tiny-qwen2"
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["max_position_embeddings"] == 4096
    # No temporary build directories are left behind.
    assert [p.name for p in (tiny_data_dir / "models").iterdir()] == ["tiny-qwen2"]


def test_second_call_uses_the_cache(
    tiny_data_dir: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns

    def no_rebuild(out: Path) -> None:
        raise AssertionError("the cached checkpoint was rebuilt")

    monkeypatch.setattr(tiny, "_build", no_rebuild)
    assert ensure_tiny_model(tiny_data_dir) == tiny_model_dir
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_loads_offline(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with tiny.quiet_progress():
        model = Qwen2ForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    assert model.config.vocab_size == len(tokenizer)
    assert model.num_parameters() < 1_000_000


def test_tokenizer_is_chatml(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    assert 1000 <= len(tokenizer) <= 2000
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token
    # The think tags are ordinary added tokens: decoding that skips special tokens keeps them.
    ids = tokenizer("<think>x</think><|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>x</think>"
    for text in (
        "Hello! How can I help you today?",
        "北京今天天气晴朗。",
        "mixed 中文 and English",
    ):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_chat_template_renders_chatml(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "谢谢"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\n<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n谢谢<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(
        messages[:2], add_generation_prompt=False, tokenize=False
    )
    assert without.endswith("<|im_start|>user\n2+2?<|im_end|>\n")
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_build_is_reproducible(tmp_path: Path, tiny_model_dir: Path) -> None:
    other = ensure_tiny_model(tmp_path)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (other / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_losing_a_build_race_keeps_the_winner(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "models" / "tiny-qwen2"
    real_build = tiny._build

    def build_while_another_process_wins(out: Path) -> None:
        real_build(out)
        # The other process renames its finished build into place first.
        final.mkdir()
        for child in tiny_model_dir.iterdir():
            (final / child.name).write_bytes(child.read_bytes())

    monkeypatch.setattr(tiny, "_build", build_while_another_process_wins)
    assert ensure_tiny_model(tmp_path) == final
    assert [p.name for p in final.parent.iterdir()] == ["tiny-qwen2"]
    assert (final / "model.safetensors").read_bytes() == (
        tiny_model_dir / "model.safetensors"
    ).read_bytes()


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "_build", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_tiny_model(tmp_path)
    assert list((tmp_path / "models").iterdir()) == []
