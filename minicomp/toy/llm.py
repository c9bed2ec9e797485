"""The toy LLM: a `transformers` Qwen2 causal LM (about 1M parameters) with the toy tokenizer,
pretrained on the synthetic world's text and saved with `save_pretrained`, so that it loads
through `from_pretrained(path)` exactly like Qwen2.5-0.5B."""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM, get_cosine_schedule_with_warmup

from ..data.synthetic import make_sample
from ..environment import libraries, machine
from ..data.tokenize import to_messages
from .tokenizer import build_tokenizer

TOY_LLM = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=10000.0)


def toy_texts(split: str, n: int, seed: int = 0) -> list[str]:
    """Captions and their conversations (ChatML-rendered later) from n synthetic samples, no images."""
    out = []
    for i in range(n):
        s = make_sample(seed, split, i, render=False)
        out.append((s.caption, s.conversations))
    return out


def tokenizer_corpus(items) -> list[str]:
    """The texts the tokenizer is trained on: every caption, then every turn of every conversation."""
    return [c for c, _ in items] + [t["value"] for _, conv in items for t in conv]


def corpus_digest(items) -> str:
    """sha256 of `toy_texts` output: a rebuild on a changed world shows in its log."""
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _stream(tokenizer, items) -> torch.Tensor:
    """All texts as one token stream: each caption, then its conversation through the chat template."""
    ids: list[int] = []
    for caption, conv in items:
        ids += tokenizer(caption, add_special_tokens=False)["input_ids"] + [tokenizer.pad_token_id]
        chat = tokenizer.apply_chat_template(to_messages(conv), tokenize=False).replace("<image>\n", "")
        ids += tokenizer(chat, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def evaluate(model, stream: torch.Tensor, seq_len: int) -> float:
    """Mean next-token loss over non-overlapping windows of the stream."""
    model.eval()
    n = (len(stream) - 1) // seq_len
    x = stream[:n * seq_len].view(n, seq_len)  # (n, seq_len)
    losses = [model(input_ids=x[i:i + 32], labels=x[i:i + 32]).loss.item() for i in range(0, n, 32)]
    model.train()
    return float(sum(losses) / len(losses))


def build_toy_llm(out: str | Path, n_train: int = 6000, n_val: int = 300, steps: int = 400, seq_len: int = 256,
                  batch: int = 16, lr: float = 3e-3, vocab_size: int = 2048, seed: int = 0, position: int = 0) -> dict:
    """Train the tokenizer and the model from scratch on the toy world's text; save both to `out`
    with a `build_log.json` holding the validation loss. Returns that log. `position`: the
    progress bar's row (builds side by side)."""
    t0 = time.time()
    torch.manual_seed(seed)
    train, val = toy_texts("train", n_train, seed), toy_texts("val", n_val, seed)
    tokenizer = build_tokenizer(tokenizer_corpus(train), vocab_size=vocab_size)
    train_ids, val_ids = _stream(tokenizer, train), _stream(tokenizer, val)
    config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **TOY_LLM)
    model = Qwen2ForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 30), steps)
    g = torch.Generator().manual_seed(seed)
    val_before = evaluate(model, val_ids, seq_len)
    for _ in tqdm(range(steps), desc="toy LLM", unit="step", position=position):
        starts = torch.randint(0, len(train_ids) - seq_len - 1, (batch,), generator=g)
        x = torch.stack([train_ids[s:s + seq_len] for s in starts.tolist()])  # (batch, seq_len)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    val_loss = evaluate(model, val_ids, seq_len)
    log = {"val_loss_before": val_before, "val_loss": val_loss, "val_perplexity": math.exp(val_loss),
           "train_tokens": len(train_ids), "steps": steps, "batch": batch, "lr": lr,
           "seq_len": seq_len, "parameters": sum(p.numel() for p in model.parameters()),
           "vocab_size": len(tokenizer), "minutes": (time.time() - t0) / 60, "seed": seed,
           "corpus_sha256": corpus_digest(train), "threads": torch.get_num_threads(), "machine": machine(),
           "libraries": libraries()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "build_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return log
