"""Loading a checkpoint: device and dtype choice, config.json checks, tokenizer and weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub.errors import HFValidationError
from transformers import AutoTokenizer, Qwen2Config

from bot.engine.transformers.model import MiMoQwen2ForCausalLM

MODEL_TYPES = frozenset({"qwen2", "mimo"})
ARCHITECTURES = frozenset({"Qwen2ForCausalLM", "MiMoForCausalLM"})
DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")


def resolve_device(name: str) -> torch.device:
    """The torch device for MIMOCHAT_DEVICE: auto picks CUDA when PyTorch sees a GPU."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(
            f"MIMOCHAT_DEVICE={name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"MIMOCHAT_DEVICE={name!r} but PyTorch sees no CUDA GPU "
                "(is this the CPU build of torch, or is the driver missing?)"
            )
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"MIMOCHAT_DEVICE={name!r} but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return torch.device("cuda", index)
    if device.type not in ("cpu", "mps"):
        raise ValueError(f"MIMOCHAT_DEVICE={name!r} is not supported; use auto, cpu or cuda:N")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The weight dtype for MIMOCHAT_DTYPE: auto is bfloat16 on CUDA, float32 elsewhere."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ValueError(f"MIMOCHAT_DTYPE={name!r} is not one of: auto, bfloat16, float16, float32")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """`bfloat16` for torch.bfloat16: the name operators see in info and generations."""
    return str(dtype).removeprefix("torch.")


def read_model_config(source: str) -> tuple[dict[str, Any], bool]:
    """(config.json as a dict, is_local) for a model directory or hub id; checks it is usable."""
    if not source:
        raise ValueError("MIMOCHAT_MODEL is empty; set it to a hub id, a local directory or `tiny`")
    path = Path(source).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"model directory {path} has no config.json")
        if not any(any(path.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
            raise ValueError(
                f"model directory {path} has no weights (*.safetensors or pytorch_model*.bin); "
                "fetch them with `mimochat download`"
            )
        config, local = _load_json(config_file), True
    elif path.exists():
        raise ValueError(f"MIMOCHAT_MODEL={source!r} is a file, not a model directory")
    elif looks_like_path(source):
        raise ValueError(
            f"model directory {path} does not exist; set MIMOCHAT_MODEL to a directory with "
            "config.json and *.safetensors, a hub id such as XiaomiMiMo/MiMo-7B-RL, or `tiny`"
        )
    else:
        config, local = _hub_config(source), False
    check_architecture(config, source)
    return config, local


def check_architecture(config: dict[str, Any], source: str) -> None:
    """Raise ValueError unless the config describes a Qwen2 or MiMo causal LM."""
    model_type = config.get("model_type") or "unknown"
    architectures = config.get("architectures") or []
    if model_type in MODEL_TYPES and (
        not architectures or any(a in ARCHITECTURES for a in architectures)
    ):
        return
    raise ValueError(
        f"{source} is a {model_type!r} model ({', '.join(architectures) or 'no architectures'}); "
        "this engine runs Qwen2-architecture chat models such as XiaomiMiMo/MiMo-7B-RL "
        "(config.json model_type 'qwen2' or 'mimo')"
    )


def looks_like_path(source: str) -> bool:
    """Whether a model name that names no existing path was meant as a local directory."""
    # Hub ids are `name` or `org/name`; anything else was meant as a directory.
    return (
        source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or source.endswith("/")
    )


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _hub_config(repo_id: str) -> dict[str, Any]:
    try:
        # Looked up on the module at call time, so a stand-in for the hub (tests) is honoured.
        config_file = huggingface_hub.hf_hub_download(repo_id, "config.json")
    except HFValidationError as exc:
        raise ValueError(
            f"MIMOCHAT_MODEL={repo_id!r} is neither an existing directory nor a valid hub id"
        ) from exc
    except Exception as exc:
        raise RuntimeError(
            f"cannot get config.json of {repo_id!r} from the Hugging Face hub or its local cache "
            f"({type(exc).__name__}: {exc}); run `mimochat download` where there is internet, "
            "or set MIMOCHAT_MODEL to a local directory"
        ) from exc
    return _load_json(Path(config_file))


def qwen2_config(config: dict[str, Any]) -> Qwen2Config:
    """The Qwen2Config for a Qwen2 or MiMo config.json, built without remote code."""
    # MiMo's config is a Qwen2 config plus MTP fields; building Qwen2Config directly avoids
    # both remote code and transformers' "instantiating a model of another type" warning.
    # from_dict (unlike the constructor) also upgrades legacy `rope_scaling` without a warning.
    fields = {
        k: v
        for k, v in config.items()
        if k not in ("model_type", "architectures", "auto_map", "transformers_version")
        and not k.startswith("_")
    }
    return Qwen2Config.from_dict(fields)


def load_tokenizer(source: str, config: Qwen2Config, local: bool) -> Any:
    """The checkpoint's tokenizer; it must have a chat template."""
    # Handing over the Qwen2 config keeps AutoTokenizer from reading config.json, whose
    # model_type `mimo` transformers does not know (it would warn, or want remote code).
    tokenizer = AutoTokenizer.from_pretrained(source, config=config, local_files_only=local)
    if not tokenizer.chat_template:
        raise RuntimeError(f"the tokenizer of {source} has no chat template")
    return tokenizer


def load_model(
    source: str, config: Qwen2Config, local: bool, device: torch.device, dtype: torch.dtype
) -> MiMoQwen2ForCausalLM:
    """The checkpoint's weights on `device` in `dtype`, ready for inference."""
    kwargs: dict[str, Any] = {}
    # device_map streams weights straight to the GPU but needs accelerate; without it the
    # weights pass through CPU memory once.
    direct = device.type == "cuda" and importlib.util.find_spec("accelerate") is not None
    if direct:
        kwargs["device_map"] = str(device)
    try:
        model = MiMoQwen2ForCausalLM.from_pretrained(
            source,
            config=config,
            dtype=dtype,
            attn_implementation="sdpa",
            local_files_only=local,
            **kwargs,
        )
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot load the weights of {source}: {exc}") from exc
    if not direct:
        # functools.wraps on PreTrainedModel.to hides the bound signature from mypy.
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model


def eos_ids(tokenizer: Any, model: Any, source: str) -> list[int]:
    """Every token that ends a turn: the tokenizer's, the checkpoint's and ChatML's."""
    ids: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id]
    checkpoint_eos = model.generation_config.eos_token_id
    candidates += checkpoint_eos if isinstance(checkpoint_eos, list) else [checkpoint_eos]
    # A chat model may end a turn with either token; stop at both.
    for token in ("<|im_end|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id != tokenizer.unk_token_id:
            candidates.append(token_id)
    for token_id in candidates:
        if isinstance(token_id, int) and token_id not in ids:
            ids.append(token_id)
    if not ids:
        raise RuntimeError(f"the tokenizer of {source} defines no end-of-turn token")
    return ids
