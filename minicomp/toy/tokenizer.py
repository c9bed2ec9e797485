"""The toy LLM's tokenizer: byte-level BPE trained with `tokenizers` on the synthetic text, with
Qwen2-style ChatML special tokens and chat template, saved for `AutoTokenizer`."""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
# ChatML, as Qwen2.5 uses it (without Qwen's default system prompt)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chain(*iterables):
    for it in iterables:
        yield from it


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it for transformers (save with save_pretrained)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    roles = ["<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n"] * 50  # learn the role words
    tok.train_from_iterator(_chain(roles, texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, additional_special_tokens=["<|im_start|>", "<image>"],
                                   chat_template=CHAT_TEMPLATE)
