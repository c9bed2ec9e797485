"""Evaluation on the toy world: exact match on held-out questions at a given resolution (a fixed
square or a native token budget), with what it takes to trust a number.

Each test sample has two questions (`data.synthetic.QUESTIONS`); each is asked alone, with the
image in front (in training either may come first). Every result carries, per question kind:
- n and a Wilson 95% interval;
- the kind's chance level: the best constant answer (`chance_levels`);
- under `images="blank"`, the same questions with each image replaced by a white one of the
  same size: what the model answers from the question alone. A blind model scores the same on
  both, so only the paired difference real − blank (with its standard error) is evidence that
  it uses what it sees.

The text-rich kinds (`READING`: a document's title, the letter of a chart's longest bar) are
also pooled as "reading": the paper's claim is about them."""
from __future__ import annotations

from collections import defaultdict

import torch
from PIL import Image
from tqdm.auto import tqdm

from .data.synthetic import QUESTIONS, READING, SyntheticDataset, chance_levels
from .stats import paired_difference, wilson

KINDS = tuple(f"{f}/{q}" for f, qs in QUESTIONS.items() for q in qs)


def summarise(hits: list[int], kinds: list[str], keys: dict[str, set[str]] | None = None) -> dict:
    """Accuracy, n, Wilson interval and chance of the questions whose kind is in each group
    (default: each kind alone, "reading" and "all")."""
    chance = chance_levels()
    keys = keys or {**{k: {k} for k in KINDS if k in kinds}, "reading": set(READING), "all": set(kinds)}
    out = {}
    for name, members in keys.items():
        h = [x for x, k in zip(hits, kinds) if k in members]
        if h:
            weights = [chance[k] for k in kinds if k in members]
            out[name] = {"accuracy": sum(h) / len(h), "n": len(h), "ci": list(wilson(sum(h), len(h))),
                         "chance": sum(weights) / len(weights)}
    return out


@torch.no_grad()
def exact_match(model, n: int = 90, fixed_size: int | None = None, max_tokens: int = 3000, batch: int = 64,
                max_new_tokens: int = 6, seed: int = 0, images: str = "real", progress: bool = False) -> dict:
    """Ask both questions of n test-split samples (families in turn) and compare each greedy
    answer with the truth, exactly. `images`: "real", or "blank" (white, same size) for the
    control. `progress`: a progress bar over the batches. -> {"accuracy", "n", "hits" (0/1 per
    question, in order), "kinds", "answers",
    "by_question": {kind | "reading" | "all": {"accuracy", "n", "ci", "chance"}}}."""
    if images not in ("real", "blank"):
        raise ValueError(f"images={images!r}, expected 'real' or 'blank'")
    was_training = model.training
    model.eval()
    ds = SyntheticDataset("test", n, seed=seed)
    asks = []  # (image, question, answer, kind)
    for i in range(n):
        s = ds[i]
        if images == "blank":
            s.image = Image.new("RGB", s.image.size, "white")
        turns = s.conversations
        for j in range(0, len(turns), 2):
            asks.append((s.image, turns[j]["value"].replace("<image>\n", ""), turns[j + 1]["value"],
                         f"{s.meta['family']}/{s.meta['questions'][j // 2]}"))
    answers = []
    for start in tqdm(range(0, len(asks), batch), desc=f"asking ({images} images)", unit="batch", leave=False,
                      disable=not progress):
        chunk = asks[start:start + batch]
        answers += model.generate([a[0] for a in chunk], [a[1] for a in chunk], fixed_size=fixed_size,
                                  max_tokens=max_tokens, max_new_tokens=max_new_tokens)
    model.train(was_training)
    hits = [int(got == a[2]) for got, a in zip(answers, asks)]
    kinds = [a[3] for a in asks]
    return {"accuracy": sum(hits) / len(hits), "n": len(hits), "hits": hits, "kinds": kinds, "answers": answers,
            "by_question": summarise(hits, kinds)}


def with_control(model, n: int, **kw) -> dict:
    """`exact_match` with real images, with the same under "blank" for blank images, and the
    paired differences real − blank under "vs_blank" ({"all", "reading"})."""
    real, blank = exact_match(model, n, images="real", **kw), exact_match(model, n, images="blank", **kw)
    return {**real, "blank": blank, "vs_blank": compare(real, blank)}


def compare(a: dict, b: dict) -> dict:
    """Paired differences a − b of two `exact_match` results on the same questions, for all of
    them and for the reading kinds: {"all": {"diff", "se", "z", "n"}, "reading": {...}}."""
    if a["kinds"] != b["kinds"]:
        raise ValueError("the two results asked different questions; compare needs the same ones")
    out = {"all": paired_difference(a["hits"], b["hits"])}
    idx = [i for i, k in enumerate(a["kinds"]) if k in READING]
    if len(idx) >= 2:
        out["reading"] = paired_difference([a["hits"][i] for i in idx], [b["hits"][i] for i in idx])
    return out


def resolution_sweep(model, resolutions: dict[str, dict], n: int, **kw) -> dict:
    """`with_control` at each resolution, e.g. {"fixed 64px": {"fixed_size": 64},
    "native ≤64 tokens": {"max_tokens": 64}} -> {label: result}. The same model and questions
    at every size, so the differences are the resolution's alone."""
    return {label: with_control(model, n, **size, **kw) for label, size in resolutions.items()}
