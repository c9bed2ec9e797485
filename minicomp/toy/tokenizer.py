"""The toy LLM's tokenizer: a byte-level BPE trained with `tokenizers` on the synthetic text and
wrapped as transformers' own `Qwen2Tokenizer` (same normaliser and pre-tokeniser as Qwen2.5),
with ChatML special tokens and chat template, saved for `AutoTokenizer`."""
from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
# ChatML, as Qwen2.5 uses it (without Qwen's default system prompt)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chain(*iterables):
    for it in iterables:
        yield from it


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Qwen2Tokenizer:
    """Train a byte-level BPE on `texts` and return it as a `Qwen2Tokenizer` (save with save_pretrained)."""
    qwen = Qwen2Tokenizer().backend_tokenizer  # empty, but with Qwen2's normaliser and pre-tokeniser
    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.pre_tokenizer = qwen.normalizer, qwen.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    roles = ["<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n"] * 50  # learn the role words
    tok.train_from_iterator(_chain(roles, texts), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return Qwen2Tokenizer(vocab=model["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          unk_token=None, extra_special_tokens=["<|im_start|>", "<image>"], chat_template=CHAT_TEMPLATE)
