"""Evaluation on the toy world: exact-match accuracy on held-out questions, at a stage's
resolution (fixed square or native budget)."""
from __future__ import annotations

from collections import Counter

import torch

from .data.synthetic import SyntheticDataset


@torch.no_grad()
def exact_match(model, n: int = 90, fixed_size: int | None = None, max_tokens: int = 3000, batch: int = 16,
                max_new_tokens: int = 12, seed: int = 0) -> dict:
    """Ask the first question of n test-split samples (families in turn) and compare the greedy
    answer with the truth, exactly. -> {"accuracy", "n", "by_family": {family: accuracy}}."""
    was_training = model.training
    model.eval()
    ds = SyntheticDataset("test", n, seed=seed)
    hits, totals = Counter(), Counter()
    for start in range(0, n, batch):
        samples = [ds[i] for i in range(start, min(n, start + batch))]
        prompts = [s.conversations[0]["value"].replace("<image>\n", "") for s in samples]
        answers = model.generate([s.image for s in samples], prompts, fixed_size=fixed_size, max_tokens=max_tokens,
                                 max_new_tokens=max_new_tokens)
        for s, a in zip(samples, answers):
            fam = s.meta["family"]
            totals[fam] += 1
            hits[fam] += a == s.conversations[1]["value"]
    model.train(was_training)
    return {"accuracy": sum(hits.values()) / n, "n": n,
            "by_family": {f: hits[f] / totals[f] for f in sorted(totals)}}
