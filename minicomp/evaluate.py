"""Evaluation on the toy world: exact-match accuracy on held-out questions, at a stage's
resolution (fixed square or native budget).

Each test sample has two questions: one that needs its fine detail (a document's line, a bar's
value, a shape's colour) and one about its layout (how many lines or shapes, which bar is
tallest). Each is asked alone, with the image in front (in training either may come first).

`images="blank"` asks the same questions with each image replaced by a white one of the same
size: what the model answers from the question alone. The gap between the two is how much the
model uses what it sees; a blind model scores the same on both."""
from __future__ import annotations

from collections import Counter

import torch
from PIL import Image

from .data.synthetic import QUESTIONS, SyntheticDataset


@torch.no_grad()
def exact_match(model, n: int = 90, fixed_size: int | None = None, max_tokens: int = 3000, batch: int = 16,
                max_new_tokens: int = 12, seed: int = 0, images: str = "real") -> dict:
    """Ask both questions of n test-split samples (families in turn) and compare each greedy
    answer with the truth, exactly. `images`: "real", or "blank" (white, same size) for the
    control. -> {"accuracy", "n" (questions), "by_family", "by_question"}."""
    if images not in ("real", "blank"):
        raise ValueError(f"images={images!r}, expected 'real' or 'blank'")
    was_training = model.training
    model.eval()
    ds = SyntheticDataset("test", n, seed=seed)
    asks = []  # (image, question, answer, family, kind)
    for i in range(n):
        s = ds[i]
        if images == "blank":
            s.image = Image.new("RGB", s.image.size, "white")
        turns = s.conversations
        for j in range(0, len(turns), 2):
            fam = s.meta["family"]
            asks.append((s.image, turns[j]["value"].replace("<image>\n", ""), turns[j + 1]["value"], fam,
                         f"{fam}/{s.meta['questions'][j // 2]}"))
    hits, totals = Counter(), Counter()
    for start in range(0, len(asks), batch):
        chunk = asks[start:start + batch]
        answers = model.generate([a[0] for a in chunk], [a[1] for a in chunk], fixed_size=fixed_size,
                                 max_tokens=max_tokens, max_new_tokens=max_new_tokens)
        for (_, _, truth, fam, kind), got in zip(chunk, answers):
            for key in (fam, kind):
                totals[key] += 1
                hits[key] += got == truth
    model.train(was_training)
    fams = [f for f in QUESTIONS if totals[f]]
    return {"accuracy": sum(hits[f] for f in fams) / len(asks), "n": len(asks),
            "by_family": {f: hits[f] / totals[f] for f in fams},
            "by_question": {k: hits[k] / totals[k] for k in sorted(totals) if "/" in k}}


def with_control(model, n: int, **kw) -> dict:
    """`exact_match` with real images, and under "blank" the same with blank images."""
    return {**exact_match(model, n, images="real", **kw), "blank": exact_match(model, n, images="blank", **kw)}


def resolution_sweep(model, resolutions: dict[str, dict], n: int, **kw) -> dict:
    """`with_control` at each resolution, e.g. {"fixed 64px": {"fixed_size": 64},
    "native ≤64 tokens": {"max_tokens": 64}} -> {label: result}. The same model and questions
    at every size, so the differences are the resolution's alone."""
    return {label: with_control(model, n, **size, **kw) for label, size in resolutions.items()}
