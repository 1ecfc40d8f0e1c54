"""A tiny random-weight Qwen2 checkpoint with a ChatML tokenizer, built offline for tests and demo.

Its text is noise; what it gives is the exact shape of MiMo-7B-RL (Qwen2 architecture, ChatML
template, `<think>` tags, safetensors on disk) in a few hundred kilobytes, so the whole pipeline
runs on any laptop without downloading 15 GB of weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import Qwen2Tokenizer

TINY = "tiny"
TINY_DIRNAME = "tiny-qwen2"
SEED = 20250512

# Files whose presence means a finished build; the directory only ever appears by an atomic
# rename, so this is a sanity check against someone emptying it by hand.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

# Same shape as Qwen2/MiMo's ChatML template: no default system prompt (MiMo recommends an empty
# one, which the engine passes), and earlier assistant turns lose their reasoning so the model
# never sees its own old `<think>` blocks.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS = ("<think>", "</think>")

_CORPUS_EN = """\
Hello! How can I help you today?
Thank you for your message. I will answer as soon as I can.
The weather in Beijing is sunny today, with a light wind from the north.
Please tell me more about the problem you are trying to solve.
Let me think about this step by step before I answer.
First, we add the two numbers. Then we divide the result by three.
The answer is 42, because six times seven is forty-two.
Water boils at 100 degrees Celsius at sea level.
A triangle has three sides and its angles add up to 180 degrees.
Python is a programming language that is easy to read and write.
To install the package, run pip install and then restart the service.
The train to Shanghai leaves at half past eight in the morning.
Xiaomi makes phones, laptops, electric cars and many smart home devices.
I am not sure about that. Could you check the official website?
Good morning! Did you sleep well last night?
The meeting has been moved to Thursday afternoon at three o'clock.
Remember to drink enough water and take a short walk every hour.
What is the capital of France? The capital of France is Paris.
Machine learning models learn patterns from large amounts of data.
The quick brown fox jumps over the lazy dog.
Can you recommend a good book to read on the weekend?
Sorry, I did not understand the question. Please ask it again.
The reply has been sent to the user through the official account.
Open the settings page, then choose the account and security section.
If the order has not arrived within seven days, please contact customer service.
The sum of the first ten positive integers is fifty-five.
Wait, that is not right. Let me check the calculation again.
So the final answer is that the store closes at nine in the evening.
Here is a short summary of the article in three sentences.
The recipe needs two eggs, a cup of flour and a little sugar.
The system sets the rules, the user asks and the assistant answers.
"""

_CORPUS_ZH = """\
你好！今天有什么可以帮你的吗？
谢谢你的留言，我会尽快回复你。
北京今天天气晴朗，北风一二级。
请告诉我你遇到的具体问题。
让我一步一步地想一想，然后再回答。
首先把两个数相加，然后再除以三。
答案是四十二，因为六乘以七等于四十二。
在标准大气压下，水的沸点是一百摄氏度。
三角形有三条边，内角和是一百八十度。
小米生产手机、笔记本电脑、电动汽车和智能家居设备。
我不太确定，请查看官方网站。
早上好！昨晚睡得好吗？
会议改到星期四下午三点了。
记得多喝水，每隔一小时起来走一走。
法国的首都是哪里？法国的首都是巴黎。
机器学习模型从大量数据中学习规律。
周末有什么好书推荐吗？
对不起，我没有理解这个问题，请再问一次。
回复已经通过公众号发送给用户。
打开设置页面，然后选择账号与安全。
如果订单七天内没有送达，请联系客服。
等一下，这样不对，我再检查一下计算。
所以最终答案是商店晚上九点关门。
下面用三句话总结这篇文章。
这个菜谱需要两个鸡蛋、一杯面粉和一点糖。
人工智能正在改变我们的生活和工作方式。
微信是中国最常用的聊天软件之一。
请稍等，我正在思考这个问题。
"""


def ensure_tiny_model(data_dir: Path) -> Path:
    """The tiny checkpoint's directory under `data_dir/models`, built on first use."""
    final = Path(data_dir).expanduser() / "models" / TINY_DIRNAME
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_DIRNAME}.", dir=final.parent))
    try:
        with quiet_progress():
            _build(tmp)
        # mkdtemp makes a private directory; the cache is shared data, not a secret.
        for child in tmp.iterdir():
            child.chmod(0o644)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first (the target is a non-empty directory now); its
            # build is identical because the seed and corpus are fixed.
            if not _is_complete(final):
                raise RuntimeError(
                    f"{final} exists but is not a complete tiny checkpoint; delete it and retry"
                ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' progress bars for work that takes milliseconds."""
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED_FILES)


def corpus() -> list[str]:
    """The built-in English and Chinese sentences the tiny tokenizer is trained on."""
    return [line for line in (_CORPUS_EN + _CORPUS_ZH).splitlines() if line.strip()]


def build_tokenizer() -> Qwen2Tokenizer:
    """A ChatML byte-level BPE tokenizer in Qwen2's format, trained on `corpus()`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Train with exactly Qwen2's normalizer and pre-tokenizer: when transformers loads a
    # `Qwen2Tokenizer` it rebuilds that pipeline around the saved vocab and merges.
    raw = Tokenizer(models.BPE())
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1536,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(corpus(), trainer)
    vocab = raw.get_vocab(with_added_tokens=False)
    merges = _merges(raw)

    # The annotations say merges are "a b" strings and unk_token a string, but the tokenizers
    # BPE built from them takes (a, b) pairs, and None means no unknown token (byte-level BPE).
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        unk_token=None,  # type: ignore[arg-type]
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    # Not special, as in Qwen's tokenizers: decoding with skip_special_tokens keeps them.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _merges(raw: Tokenizer) -> list[tuple[str, str]]:
    data = json.loads(raw.to_str())
    pairs: list[tuple[str, str]] = []
    for merge in data["model"]["merges"]:
        first, second = merge.split(" ", 1) if isinstance(merge, str) else merge
        pairs.append((first, second))
    return pairs


def _build(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    eos_ids: list[int] = []
    for token in ("<|im_end|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(token_id, int)  # one token in, one id out
        eos_ids.append(token_id)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 640000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_ids[0],
        pad_token_id=eos_ids[1],
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids, pad_token_id=eos_ids[1], do_sample=True, temperature=0.6, top_p=0.95
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        "Tiny random-weight Qwen2 checkpoint built by mimochat for tests and the demo.\n"
        "Its output is noise; do not use it to answer anyone.\n",
        encoding="utf-8",
    )
