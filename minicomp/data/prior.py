"""Token counts of a caption set, for the word prior u_W of Eq. 9 (`minicomp.align.word_prior`)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm


def count_tokens(texts: Iterable[str], tokenizer, batch_size: int = 256, total: int | None = None,
                 progress: bool = True) -> torch.Tensor:
    """How often each token id occurs in `texts` (no special tokens added): (len(tokenizer),) int64."""
    counts = torch.zeros(len(tokenizer), dtype=torch.int64)
    batch: list[str] = []

    def flush():
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            counts.index_add_(0, torch.tensor(ids, dtype=torch.long), torch.ones(len(ids), dtype=torch.int64))
        batch.clear()

    for t in tqdm(texts, total=total, desc="counting tokens", unit="text", disable=not progress):
        batch.append(t)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return counts


def save_counts(counts: torch.Tensor, path: str | Path) -> None:
    save_file({"counts": counts.contiguous()}, str(path))


def load_counts(path: str | Path) -> torch.Tensor:
    """(K,) int64 token counts written by `minicomp prior`."""
    if not Path(path).exists():
        raise FileNotFoundError(f"token counts {path} do not exist; write them with `minicomp prior`")
    return load_file(str(path))["counts"]
