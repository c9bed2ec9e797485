"""The architectures of the paper's LLMs (their hub config.json values), so that full-scale
models can be built with random weights without a download: tests, memory planning, FLOP counts.
With network access or a local folder, `transformers.AutoConfig.from_pretrained` is used instead."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

_QWEN25 = dict(model_type="qwen2", hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1_000_000.0,
               bos_token_id=151643, eos_token_id=151643, attention_dropout=0.0, use_sliding_window=False)
KNOWN_LLMS = {
    "Qwen/Qwen2.5-0.5B": dict(_QWEN25, vocab_size=151936, hidden_size=896, intermediate_size=4864,
                              num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                              max_position_embeddings=32768, tie_word_embeddings=True),
    "Qwen/Qwen2.5-7B": dict(_QWEN25, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                            num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                            max_position_embeddings=131072, tie_word_embeddings=False),
}
# The image placeholder id to use when no tokenizer is at hand (random-weight builds): Qwen2.5's
# tokenizer has <|image_pad|> = 151655. With a tokenizer, minicomp adds "<image>" and uses that.
IMAGE_TOKEN_IDS = {"Qwen/Qwen2.5-0.5B": 151655, "Qwen/Qwen2.5-7B": 151655}
KNOWN_LLMS["Qwen/Qwen2.5-0.5B-Instruct"] = KNOWN_LLMS["Qwen/Qwen2.5-0.5B"]
KNOWN_LLMS["Qwen/Qwen2.5-7B-Instruct"] = dict(KNOWN_LLMS["Qwen/Qwen2.5-7B"], max_position_embeddings=32768)
IMAGE_TOKEN_IDS.update({k + "-Instruct": v for k, v in IMAGE_TOKEN_IDS.items()})


def llm_config(llm: str) -> PretrainedConfig:
    """The config of an LLM: a local folder's config.json, a known id (no download), or the hub."""
    if Path(llm).is_dir():
        return AutoConfig.from_pretrained(llm)
    if llm in KNOWN_LLMS:
        kw = dict(KNOWN_LLMS[llm])
        return AutoConfig.for_model(kw.pop("model_type"), **kw)
    try:
        return AutoConfig.from_pretrained(llm)
    except OSError as e:
        raise ValueError(f"LLM {llm!r}: not a local folder, not one of the known architectures "
                         f"{sorted(KNOWN_LLMS)}, and its config could not be fetched ({e})") from None
