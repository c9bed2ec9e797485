"""The toy world's data (v2): deterministic, native-resolution image–text samples in three
families in the spirit of the paper's text-rich benchmarks: documents (DocVQA), bar charts
(ChartQA) and scenes of shapes (AI2D-like layout).

Each sample has an image (PIL, its own size and aspect ratio, 1:4 to 4:1), a caption for Stages
I–II, LLaVA-style conversations (two questions, in random order) with one-to-three-token
answers for Stage III and evaluation, and its ground truth in `meta`.

**Legibility is designed, and measured.** Every image is drawn larger than the tiny preset's
native budget (64 merged tokens = 16,384 px² with 8-px patches), with its glyphs scaled to its
size, so that resized to that budget its text is about 14 px (lower-case letters about a patch
tall). A document's title is set 1.5× larger (narrowed to fit a thin page), as titles are, so
that it can be found by how it looks. Squashed to a fixed low-resolution square, the same glyphs
fall below half a patch on at least one axis: the aspect ratio and the downscale take the detail. `meta["glyphs"]` holds every
glyph's box, `glyph_patches` gives glyph height and width in patches at any size, and
`glyph_patch_labels` the per-patch character labels a recognition probe is trained on
(`word_patch_labels`: the word each patch lies in; all in `data.labels`). `segmentation` renders
per-pixel ground truth (text, bars, each shape kind).

**Answers are balanced.** Every count, word, letter and colour is drawn uniformly, so no
question can be answered from its text much above its chance level (`chance_levels`).

Splits never overlap by construction: a sample's split is a hash of its content, so the same
content can only ever fall in one split.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FAMILIES = ("document", "chart", "scene")
TASKS = ("qa", "caption", "mix")
CAPTION_PROMPT = "Describe the image."
SPLITS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}  # content-hash buckets of 10
WORDS = ("alpha", "beta", "delta", "gamma", "omega", "sigma", "kappa", "theta", "zeta", "north", "south",
         "east", "west", "iron", "stone", "river")  # at most 5 letters: one fits a 1:4 page's width
LABELS = ("A", "B", "C", "D", "E", "F", "G", "H")
COLORS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (230, 190, 20),
          "purple": (140, 50, 170), "orange": (240, 130, 20), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
GLYPHS = tuple(sorted(set("".join(WORDS) + "".join(LABELS))))  # every character the world draws
VOCAB = WORDS + LABELS  # every word the world draws (a chart's label is a one-letter word)
# each family's two question kinds: one that needs reading or fine detail, one about layout
QUESTIONS = {"document": ("title", "lines"), "chart": ("longest", "bars"), "scene": ("colour", "shapes")}
SEGMENTS = ("background", "text", "bar") + SHAPES  # per-pixel classes of `segmentation`
READING = ("document/title", "chart/longest")  # the text-rich kinds: answered only by reading glyphs
# (width, height) aspect ratios: landscape, portrait, square, up to 1:4
ASPECTS = ((1, 1), (4, 3), (3, 4), (16, 9), (9, 16), (2, 1), (1, 2), (3, 1), (1, 3), (4, 1), (1, 4))
BUDGET_AREA = 64 * 16 * 16  # px² of the tiny preset's native budget: 64 merged tokens of 16×16 px
FONT_AT_BUDGET = 14  # font size (px) of every glyph once the image is resized to BUDGET_AREA
TITLE_SCALE = 1.5  # a document's title is set larger, as titles are (narrowed to fit a thin page)
AREA = (1.0, 2.5)  # native area as a multiple of BUDGET_AREA


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@dataclass
class Sample:
    """One image–text sample."""
    image: Image.Image
    caption: str
    conversations: list[dict] = field(default_factory=list)  # [{"from": "human"|"gpt", "value": str}, ...]
    meta: dict = field(default_factory=dict)  # family, id, split, size, scale, ground truth, glyphs
    #                                            [[char, x0, y0, x1, y1], ...], questions (in turn order)


def _layout(aspect: tuple[int, int]) -> tuple[float, float]:
    """(width, height) in budget-scale pixels (area BUDGET_AREA) of an aspect ratio."""
    aw, ah = aspect
    w = (BUDGET_AREA * aw / ah) ** 0.5
    return w, BUDGET_AREA / w


def _pick_aspect(rng, fits) -> tuple[int, int]:
    """A uniformly drawn aspect ratio among those whose budget-scale (w, h) satisfy `fits`."""
    ok = [a for a in ASPECTS if fits(*_layout(a))]
    return ok[rng.integers(len(ok))]


def _document(rng) -> dict:
    n = int(rng.integers(2, 6))  # lines, uniform in 2..5
    pitch, margin = 1.45 * FONT_AT_BUDGET, 6
    w, h = _layout(_pick_aspect(rng, lambda w, h: h >= 2 * margin + (n - 1 + TITLE_SCALE) * pitch))
    per_line = max(1, int((w - 2 * margin) // 60))  # words of at most 5 letters (≤ 50 px) fit per line
    lines = [" ".join(WORDS[j] for j in rng.integers(len(WORDS), size=int(rng.integers(1, per_line + 1))))
             for _ in range(n)]
    lines[0] = WORDS[rng.integers(len(WORDS))]  # the title: one word
    return {"family": "document", "size": (w, h), "lines": lines}


def _chart(rng) -> dict:
    n = int(rng.integers(3, 7))  # bars, uniform in 3..6; vertical bars on landscape, horizontal on portrait
    w, h = _layout(_pick_aspect(rng, lambda w, h: max(w, h) >= 16 + 20 * n))
    labels = [str(x) for x in rng.choice(LABELS, size=n, replace=False)]
    lengths = [int(v) for v in rng.choice(np.arange(20, 101), size=n, replace=False)]  # % of the axis
    return {"family": "chart", "size": (w, h), "labels": labels, "lengths": lengths,
            "horizontal": bool(h > w)}


def _scene(rng) -> dict:
    n = int(rng.integers(2, 6))  # shapes, uniform in 2..5
    w, h = _layout(ASPECTS[rng.integers(len(ASPECTS))])
    colors = [str(c) for c in rng.choice(list(COLORS), size=n, replace=False)]
    kinds = [SHAPES[k] for k in rng.integers(len(SHAPES), size=n)]
    if not any(kinds.count(s) == 1 for s in SHAPES):  # make one shape kind occur once, so that "the circle" names one shape (n ≤ 5 leaves
        kinds[0] = next(s for s in SHAPES if s not in kinds[1:])  # a kind absent from the others)
    objs, vertical = [], h > w
    for i in range(n):  # one object per slot along the long side, never overlapping
        long_, short = (h, w) if vertical else (w, h)
        r = float(min(rng.uniform(6, 11), 0.4 * long_ / n, 0.4 * short))
        a = (i + 0.5) / n * long_ + rng.uniform(-1, 1) * (0.5 * long_ / n - r)
        b = rng.uniform(r, short - r)
        x, y = (b, a) if vertical else (a, b)
        objs.append({"shape": kinds[i], "color": colors[i], "x": round(float(x), 1), "y": round(float(y), 1),
                     "r": round(r, 1)})
    objs.sort(key=lambda o: o["x"])
    ask = [o["shape"] for o in objs if kinds.count(o["shape"]) == 1]
    return {"family": "scene", "size": (w, h), "objects": objs, "ask": ask[rng.integers(len(ask))]}


def _draw_text(d: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, glyphs: list, words: list,
               ink="black") -> None:
    """Draw `text`; record each non-space character's box [char, x0, y0, x1, y1] in `glyphs` and
    each word's box (the union of its characters') [word, x0, y0, x1, y1] in `words`."""
    d.text(xy, text, fill=ink, font=font)
    start = len(glyphs)
    for i, ch in enumerate(text):
        if ch != " ":
            x0, y0, x1, y1 = font.getbbox(ch)
            dx = font.getlength(text[:i])
            glyphs.append([ch, round(xy[0] + dx + x0, 1), round(xy[1] + y0, 1), round(xy[0] + dx + x1, 1),
                           round(xy[1] + y1, 1)])
    for w in text.split():
        boxes, start = glyphs[start:start + len(w)], start + len(w)
        words.append([w, min(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes),
                      max(b[4] for b in boxes)])


def _title_size(title: str, width: int, k: float) -> int:
    """Font size (native px) of a document's title: TITLE_SCALE × the body's, narrowed so that the
    word fits the page between its 6-px margins."""
    size = round(TITLE_SCALE * FONT_AT_BUDGET * k)
    room = width - 12 * k
    while size > round(FONT_AT_BUDGET * k) and _font(size).getlength(title) > room:
        size -= 1
    return size


def _render(m: dict, mask: bool = False) -> tuple[Image.Image, list, list]:
    """Draw the sample at its native size: budget-scale geometry times m["scale"]. mask=True: the
    same drawing as an "L" image of SEGMENTS indices (per-pixel ground truth) instead of colours."""
    k = m["scale"]
    w, h = m["size"]
    img = Image.new("L" if mask else "RGB", (w, h), 0 if mask else "white")
    d, glyphs, words = ImageDraw.Draw(img), [], []
    paint = (lambda part, rgb: SEGMENTS.index(part)) if mask else (lambda part, rgb: rgb)
    ink = paint("text", "black")
    font = _font(round(FONT_AT_BUDGET * k))
    if m["family"] == "document":
        title = _font(_title_size(m["lines"][0], w, k))
        _draw_text(d, (6 * k, 6 * k - title.getbbox("H")[1]), m["lines"][0], title, glyphs, words, ink)
        top = 6 + TITLE_SCALE * 1.45 * FONT_AT_BUDGET  # budget-scale y of the second line
        for i, line in enumerate(m["lines"][1:]):
            _draw_text(d, (6 * k, (top + i * 1.45 * FONT_AT_BUDGET) * k - font.getbbox("H")[1]), line, font, glyphs, words, ink)
    elif m["family"] == "chart":
        n, hor = len(m["labels"]), m["horizontal"]
        long_, short = (h, w) if hor else (w, h)
        slot, base, room = (long_ - 16 * k) / n, 20 * k, short - 28 * k  # label strip, then bars
        for i, (lab, v) in enumerate(zip(m["labels"], m["lengths"])):
            a0, a1, b1 = 8 * k + slot * (i + 0.2), 8 * k + slot * (i + 0.8), base + room * v / 100
            if hor:  # label on the left, bar to the right
                d.rectangle([base, a0, b1, a1], fill=paint("bar", (70, 110, 200)))
                _draw_text(d, (4 * k, (a0 + a1) / 2 - 0.6 * FONT_AT_BUDGET * k), lab, font, glyphs, words, ink)
            else:  # label under the bar, bar up
                d.rectangle([a0, h - b1, a1, h - base], fill=paint("bar", (70, 110, 200)))
                _draw_text(d, ((a0 + a1) / 2 - 0.35 * FONT_AT_BUDGET * k, h - base + 2 * k), lab, font, glyphs, words, ink)
        if hor:
            d.line([(base, 4 * k), (base, h - 4 * k)], fill=paint("background", "black"))
        else:
            d.line([(4 * k, h - base), (w - 4 * k, h - base)], fill=paint("background", "black"))
    else:
        for o in m["objects"]:
            cx, cy, r, c = o["x"] * k, o["y"] * k, o["r"] * k, paint(o["shape"], COLORS[o["color"]])
            box = [cx - r, cy - r, cx + r, cy + r]
            if o["shape"] == "circle":
                d.ellipse(box, fill=c)
            elif o["shape"] == "square":
                d.rectangle(box, fill=c)
            else:
                d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=c)
    return img, glyphs, words


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _text(m: dict) -> tuple[str, list[tuple[str, str]]]:
    """Caption and (question, answer) pairs, in the order of QUESTIONS[family]."""
    if m["family"] == "document":
        n = len(m["lines"])
        cap = f"A document with {n} lines. Its title is {m['lines'][0]}. " + " ".join(
            f"Line {i + 1} reads: {t}." for i, t in enumerate(m["lines"][1:], 1))
        qa = [("What is the title of the document?", m["lines"][0]), ("How many lines of text are there?", str(n))]
    elif m["family"] == "chart":
        top = m["labels"][int(np.argmax(m["lengths"]))]
        cap = (f"A bar chart with {len(m['labels'])} {'horizontal' if m['horizontal'] else 'vertical'} bars, "
               f"{_and(m['labels'])}. Bar {top} is the longest.")
        qa = [("Which bar is the longest?", top), ("How many bars are there?", str(len(m["labels"])))]
    else:
        objs = m["objects"]
        names = [f"{'an' if o['color'][0] in 'aeiou' else 'a'} {o['color']} {o['shape']}" for o in objs]
        colour = next(o["color"] for o in objs if o["shape"] == m["ask"])
        cap = f"A scene with {len(objs)} shapes, from left to right: " + ", ".join(names) + "."
        qa = [(f"What colour is the {m['ask']}?", colour), ("How many shapes are there?", str(len(objs)))]
    return cap, qa


def _content_bucket(m: dict) -> int:
    key = repr({k: v for k, v in m.items() if k not in ("size", "scale")}).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % 10


def make_sample(seed: int, split: str, index: int, family: str | None = None, render: bool = True) -> Sample:
    """Sample `index` of `split`: deterministic in (seed, split, index). `render=False` skips
    drawing the image (image None, no glyph boxes), for text-only uses such as the toy LLM."""
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
    k = float(rng.uniform(*AREA)) ** 0.5  # native size = budget-scale layout × k
    bw, bh = m["size"]
    m.update(size=(int(round(bw * k)), int(round(bh * k))), scale=round(k, 4))
    cap, qa = _text(m)
    order = [int(j) for j in rng.permutation(len(qa))]  # either question may come first, as in real SFT data
    conv = []
    for q, a in (qa[j] for j in order):
        conv += [{"from": "human", "value": ("" if conv else "<image>\n") + q}, {"from": "gpt", "value": a}]
    m.update(id=f"{split}-{seed}-{index}", split=split, questions=[QUESTIONS[fam][j] for j in order])
    image = None
    if render:
        image, m["glyphs"], m["words"] = _render(m)
    return Sample(image, cap, conv, m)


def segmentation(meta: dict) -> np.ndarray:
    """(H, W) uint8 per-pixel ground truth at native size: indices into SEGMENTS."""
    return np.asarray(_render(meta, mask=True)[0])


@lru_cache(maxsize=4)
def chance_levels(n: int = 3000, seed: int = 0) -> dict[str, float]:
    """Per question kind ("family/kind"), the accuracy of the best constant answer: the commonest
    answer among n training samples, scored on n others (scoring it on the samples it was picked
    from would bias it upward). What a model that ignores the image can reach from the question."""
    counts: list[dict[str, Counter]] = [{}, {}]
    for i in range(2 * n):
        s = make_sample(seed, "train", i, render=False)
        for q, turn in zip(s.meta["questions"], s.conversations[1::2]):
            counts[i >= n].setdefault(f"{s.meta['family']}/{q}", Counter())[turn["value"]] += 1
    pick, score = counts
    return {k: score[k][c.most_common(1)[0][0]] / sum(score[k].values()) for k, c in sorted(pick.items())}


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
        return self._sample(i, render=True)

    def _sample(self, i: int, render: bool) -> Sample:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of {self.size}")
        s = make_sample(self.seed, self.split, i % self.size, self.family, render=render)
        if self.task == "caption" or (self.task == "mix" and i % 2 == 0):
            s.conversations = [{"from": "human", "value": "<image>\n" + CAPTION_PROMPT}, {"from": "gpt", "value": s.caption}]
        return s

    def where(self, i: int) -> str:
        return f"synthetic {self.split} sample {i % self.size} (seed {self.seed}, task {self.task})"

    def conversations(self, i: int) -> list[dict]:
        """Sample i's turns, without drawing its image."""
        return self._sample(i, render=False).conversations
