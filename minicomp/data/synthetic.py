"""The toy world's data: deterministic, native-resolution image–text samples in three families
in the spirit of the paper's text-rich benchmarks: documents, charts and scenes.

Each sample has an image (PIL, its own size and aspect ratio), a caption for Stages I–II,
LLaVA-style conversations (two questions, in random order) with short exact-match answers for
Stage III and evaluation, and its ground truth in `meta`. The detail is small on purpose (glyphs
8–11 px tall): a fixed low resolution destroys it, native resolution keeps it.

Splits never overlap by construction: a sample's split is a hash of its content, so the same
content can only ever fall in one split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FAMILIES = ("document", "chart", "scene")
TASKS = ("qa", "caption", "mix")
CAPTION_PROMPT = "Describe the image."
SPLITS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}  # content-hash buckets of 10
WORDS = ("alpha", "beta", "delta", "gamma", "omega", "sigma", "kappa", "lambda", "theta", "zeta",
         "north", "south", "east", "west", "red", "green", "blue", "gold", "iron", "stone")
LABELS = ("A", "B", "C", "D", "E", "F", "G", "H")
COLORS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (230, 190, 20),
          "purple": (140, 50, 170), "orange": (240, 130, 20), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
# each family's two questions: one about fine detail, one about layout (see `_text`)
QUESTIONS = {"document": ("line", "lines"), "chart": ("value", "tallest"), "scene": ("colour", "shapes")}
# (width, height) aspect ratios: landscape, portrait, square, up to 1:4
ASPECTS = ((1, 1), (4, 3), (3, 4), (16, 9), (9, 16), (2, 1), (1, 2), (3, 1), (1, 3), (4, 1), (1, 4))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@dataclass
class Sample:
    """One image–text sample."""
    image: Image.Image
    caption: str
    conversations: list[dict] = field(default_factory=list)  # [{"from": "human"|"gpt", "value": str}, ...]
    meta: dict = field(default_factory=dict)  # family, id, split, size, glyph_px, ground truth,
    #                                            questions (their kinds, in turn order)


def _size(rng: np.random.Generator, area: tuple[int, int]) -> tuple[int, int]:
    """A (width, height) of random aspect ratio and area (in pixels²) within `area`."""
    aw, ah = ASPECTS[rng.integers(len(ASPECTS))]
    a = rng.uniform(*area)
    w = int(round((a * aw / ah) ** 0.5))
    return max(32, w), max(32, int(round(w * ah / aw)))


def _document(rng) -> dict:
    w, h = _size(rng, (120_000, 300_000))
    glyph = int(rng.integers(8, 12))
    n_lines = int(min(20, max(1, (h - 16) // (glyph + 10))))
    per_line = max(1, min(10, (w - 16) // (6 * glyph)))
    lines = [" ".join(str(rng.integers(10, 1000)) if rng.random() < 0.5 else WORDS[rng.integers(len(WORDS))]
                      for _ in range(rng.integers(1, per_line + 1))) for _ in range(n_lines)]
    return {"family": "document", "size": (w, h), "glyph_px": glyph, "lines": lines}


def _chart(rng) -> dict:
    w, h = _size(rng, (100_000, 250_000))
    n = int(rng.integers(3, min(8, max(3, w // 48)) + 1))
    labels = [str(x) for x in rng.choice(LABELS, size=n, replace=False)]
    values = [int(v) for v in rng.choice(np.arange(1, 100), size=n, replace=False)]
    return {"family": "chart", "size": (w, h), "glyph_px": 10, "labels": labels, "values": values}


def _scene(rng) -> dict:
    w, h = _size(rng, (60_000, 200_000))
    n = int(rng.integers(2, 5))
    colors = [str(c) for c in rng.choice(list(COLORS), size=n, replace=False)]
    objs = []
    for i in range(n):  # one object per vertical slot, left to right, small and never overlapping
        r = float(min(rng.uniform(5, 12), 0.4 * w / n, 0.4 * h))
        x = (i + 0.5) / n * w + rng.uniform(-1, 1) * (0.5 * w / n - r)
        y = rng.uniform(r, h - r)
        objs.append({"shape": SHAPES[rng.integers(len(SHAPES))], "color": colors[i],
                     "x": round(float(x), 1), "y": round(float(y), 1), "r": round(r, 1)})
    return {"family": "scene", "size": (w, h), "glyph_px": 0, "objects": objs}


def _render(m: dict) -> Image.Image:
    w, h = m["size"]
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    if m["family"] == "document":
        font, step = _font(m["glyph_px"]), m["glyph_px"] + 10
        for i, line in enumerate(m["lines"]):
            d.text((8, 8 + i * step), line, fill="black", font=font)
    elif m["family"] == "chart":
        font, n = _font(10), len(m["labels"])
        base, top, slot = h - 18, 18, (w - 16) / n
        d.line([(6, base), (w - 6, base)], fill="black")
        for i, (lab, v) in enumerate(zip(m["labels"], m["values"])):
            x0 = 8 + slot * i + slot * 0.2
            y = base - (base - top - 12) * v / 100
            d.rectangle([x0, y, x0 + slot * 0.6, base], fill=(70, 110, 200))
            d.text((x0, y - 12), str(v), fill="black", font=font)
            d.text((x0 + slot * 0.2, base + 3), lab, fill="black", font=font)
    else:
        for o in m["objects"]:
            cx, cy, r, c = o["x"], o["y"], o["r"], COLORS[o["color"]]
            box = [cx - r, cy - r, cx + r, cy + r]
            if o["shape"] == "circle":
                d.ellipse(box, fill=c)
            elif o["shape"] == "square":
                d.rectangle(box, fill=c)
            else:
                d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=c)
    return img


def _text(m: dict, rng) -> tuple[str, list[tuple[str, str]]]:
    """Caption and (question, answer) pairs with short exact-match answers, in the order of
    QUESTIONS[family]."""
    if m["family"] == "document":
        n = len(m["lines"])
        cap = f"A document with {n} line{'s' * (n > 1)} of text. " + " ".join(
            f"Line {i + 1} reads: {t}." for i, t in enumerate(m["lines"]))
        i = int(rng.integers(n))
        qa = [(f"What is written on line {i + 1}?", m["lines"][i]), ("How many lines of text are there?", str(n))]
    elif m["family"] == "chart":
        pairs = ", ".join(f"{lab} is {v}" for lab, v in zip(m["labels"], m["values"]))
        cap = f"A bar chart with {len(m['labels'])} bars: {pairs}."
        i = int(rng.integers(len(m["labels"])))
        top = m["labels"][int(np.argmax(m["values"]))]
        qa = [(f"What is the value of bar {m['labels'][i]}?", str(m["values"][i])), ("Which bar is the tallest?", top)]
    else:
        objs = m["objects"]
        names = [f"a {o['color']} {o['shape']}" for o in objs]
        cap = f"A scene with {len(objs)} shapes, from left to right: " + ", ".join(names) + "."
        i = int(rng.integers(len(objs)))
        qa = [(f"What colour is the {'first second third fourth'.split()[i]} shape from the left?", objs[i]["color"]),
              ("How many shapes are there?", str(len(objs)))]
    return cap, qa


def _content_bucket(m: dict) -> int:
    key = repr({k: v for k, v in m.items() if k != "size"}).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % 10


def make_sample(seed: int, split: str, index: int, family: str | None = None, render: bool = True) -> Sample:
    """Sample `index` of `split`: deterministic in (seed, split, index). `render=False` skips
    drawing the image (image None), for text-only uses such as pretraining the toy LLM."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}, expected one of {tuple(SPLITS)}")
    fam = family or FAMILIES[index % len(FAMILIES)]
    if fam not in FAMILIES:
        raise ValueError(f"family={fam!r}, expected one of {FAMILIES}")
    make = {"document": _document, "chart": _chart, "scene": _scene}[fam]
    split_id = list(SPLITS).index(split)
    for attempt in range(10_000):  # draw until the content hashes into this split
        rng = np.random.default_rng([seed, split_id, index, attempt])
        m = make(rng)
        if _content_bucket(m) in SPLITS[split]:
            break
    cap, qa = _text(m, rng)
    order = [int(k) for k in rng.permutation(len(qa))]  # either question may come first, as in real SFT data
    conv = []
    for q, a in (qa[k] for k in order):
        conv += [{"from": "human", "value": ("" if conv else "<image>\n") + q}, {"from": "gpt", "value": a}]
    m.update(id=f"{split}-{seed}-{index}", split=split, questions=[QUESTIONS[fam][k] for k in order])
    return Sample(_render(m) if render else None, cap, conv, m)


class SyntheticDataset:
    """An indexable dataset of `size` samples of one split; the same seed gives the same samples.

    Families cycle document, chart, scene (or fix one with `family`). Images are made on access.
    `task="qa"`: the conversation is the sample's questions and answers (Stage III, evaluation);
    `task="caption"`: one turn, "Describe the image." answered by the caption (Stage I, like
    LLaVA-Pretrain); `task="mix"`: captions at even indices, questions at odd ones (Stage II, like
    LLaVA-OneVision's mid-stage mix).
    """

    def __init__(self, split: str = "train", size: int = 1000, seed: int = 0, family: str | None = None,
                 task: str = "qa"):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}, expected one of {tuple(SPLITS)}")
        if task not in TASKS:
            raise ValueError(f"task={task!r}, expected one of {TASKS}")
        self.split, self.size, self.seed, self.family, self.task = split, size, seed, family, task

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Sample:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of {self.size}")
        s = make_sample(self.seed, self.split, i % self.size, self.family)
        if self.task == "caption" or (self.task == "mix" and i % 2 == 0):
            s.conversations = [{"from": "human", "value": "<image>\n" + CAPTION_PROMPT}, {"from": "gpt", "value": s.caption}]
        return s
