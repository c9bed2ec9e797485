from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from minicomp.data import FAMILIES, SyntheticDataset, budget_size, resize_fixed, resize_to_budget, to_tensor
from minicomp.data.labels import glyph_patch_labels, glyph_patches, segment_patch_labels, word_patch_labels
from minicomp.data.synthetic import (COLORS, GLYPHS, QUESTIONS, READING, SEGMENTS, VOCAB, WORDS, _content_bucket,
                                     chance_levels, make_sample, segmentation)


def test_same_seed_same_samples_and_another_seed_differs():
    a, b, c = SyntheticDataset("train", 6, seed=1), SyntheticDataset("train", 6, seed=1), SyntheticDataset("train", 6, seed=2)
    for i in range(6):
        assert a[i].caption == b[i].caption and a[i].conversations == b[i].conversations
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
    assert [a[i].caption for i in range(6)] != [c[i].caption for i in range(6)]


def test_splits_never_overlap():
    seen = {}
    for split, n in (("train", 240), ("val", 60), ("test", 60)):
        for i in range(n):
            s = SyntheticDataset(split, n, seed=0)[i]
            assert s.meta["split"] == split
            assert seen.setdefault(s.caption, split) == split, f"{s.caption!r} in {split} and {seen[s.caption]}"
    # the split is a function of the content: recomputing the bucket agrees
    s = SyntheticDataset("val", 1)[0]
    m = {k: v for k, v in s.meta.items() if k not in ("id", "split", "questions", "glyphs", "words")}  # added after the draw
    assert _content_bucket(m) == 8


def test_families_sizes_and_aspect_ratios():
    ds = SyntheticDataset("train", 150, seed=0)
    samples = [ds[i] for i in range(150)]
    assert {s.meta["family"] for s in samples} == set(FAMILIES)
    aspects = [s.image.width / s.image.height for s in samples]
    assert min(aspects) < 0.3 and max(aspects) > 3.5  # portrait and landscape down to 1:4
    assert any(abs(a - 1) < 0.05 for a in aspects)
    assert len({s.image.size for s in samples}) > 100  # native, varied sizes
    for s in samples:
        assert s.image.mode == "RGB" and s.caption.strip()
        assert s.conversations[0]["from"] == "human" and s.conversations[0]["value"].startswith("<image>\n")
        assert [t["from"] for t in s.conversations] == ["human", "gpt"] * (len(s.conversations) // 2)


def test_either_question_comes_first_and_the_image_leads_the_first_turn():
    firsts = Counter()
    for s in (SyntheticDataset("train", 60)[i] for i in range(60)):
        assert sorted(s.meta["questions"]) == sorted(QUESTIONS[s.meta["family"]])
        firsts[s.meta["questions"][0] == QUESTIONS[s.meta["family"]][0]] += 1
        humans = [t["value"] for t in s.conversations[::2]]
        assert humans[0].startswith("<image>\n") and not any("<image>" in h for h in humans[1:])
    assert firsts[True] >= 15 and firsts[False] >= 15  # both orders, about half each


def test_answers_follow_the_ground_truth():
    for s in (SyntheticDataset("test", 30, seed=3)[i] for i in range(30)):
        m = s.meta
        a = dict(zip(m["questions"], (t["value"] for t in s.conversations[1::2])))  # kind -> answer
        drawn = "".join(g[0] for g in m.get("glyphs", []))
        if m["family"] == "document":
            assert a["title"] == m["lines"][0] and a["title"] in WORDS and a["lines"] == str(len(m["lines"]))
            assert drawn == "".join(m["lines"]).replace(" ", "")  # every letter drawn, in reading order
        elif m["family"] == "chart":
            assert a["longest"] == m["labels"][int(np.argmax(m["lengths"]))]
            assert a["bars"] == str(len(m["labels"])) and drawn == "".join(m["labels"])
        else:
            asked = [o for o in m["objects"] if o["shape"] == m["ask"]]
            assert len(asked) == 1 and a["colour"] == asked[0]["color"]  # "the circle" names one shape
            assert a["shapes"] == str(len(m["objects"]))
            xs = [o["x"] for o in m["objects"]]
            assert xs == sorted(xs)  # "from left to right" is true
        for ans in a.values():
            assert len(ans.split()) == 1 and len(ans) <= 6  # short: a number, a word, a letter or a colour


def _glyph_patches(family, n=60):
    """Glyph (height, width) in patches per document/chart at the native budget and at the
    fixed 64 px square -> (n, 4): native h, w, fixed h, w."""
    rows = []
    for i in range(n):
        m = make_sample(0, "train", i, family=family).meta
        W, H = m["size"]
        rows.append(glyph_patches(m, budget_size(H, W, 8, 2, 4, 64), 8) + glyph_patches(m, (64, 64), 8))
    return np.array(rows)


@pytest.mark.parametrize("family", ["document", "chart"])
def test_glyphs_legible_at_the_native_budget_and_not_after_the_fixed_square(family):
    g = _glyph_patches(family)
    assert np.median(g[:, 0]) >= 0.9 and g[:, 0].min() >= 0.7  # about a patch tall at 64 tokens
    squeezed = np.minimum(g[:, 2], g[:, 3]) < 0.5  # below half a patch on at least one axis at 64 px
    assert squeezed.mean() >= (0.9 if family == "document" else 0.7)


def test_a_documents_title_is_set_larger_than_its_body_and_fits_the_page():
    for i in range(40):
        m = make_sample(0, "train", i, family="document").meta
        n = len(m["lines"][0])  # the title's glyphs come first
        cap = lambda boxes: max(b[4] - b[2] for b in boxes)  # tallest glyph: letters with ascenders
        assert cap(m["glyphs"][:n]) > 1.05 * cap(m["glyphs"][n:])  # larger, narrowed only to fit a thin page
        assert max(b[3] for b in m["glyphs"][:n]) <= m["size"][0] - 5 * m["scale"]  # inside the right margin


def test_glyph_patch_labels_put_each_glyph_in_its_patch():
    m = {"size": (32, 16), "glyphs": [["a", 1, 1, 7, 7], ["B", 17, 9, 23, 15], ["e", 16, 8, 18, 10]]}
    lab = glyph_patch_labels(m, (16, 32), 8)
    assert lab.shape == (2, 4) and lab[0, 0] == GLYPHS.index("a")
    assert lab[1, 2] == GLYPHS.index("B")  # the larger of the two boxes centred in that patch
    assert (lab >= 0).sum() == 2
    assert glyph_patch_labels(m, (32, 64), 8)[1, 1] == GLYPHS.index("a")  # centre (4, 4) -> (8, 8) at 2×
    assert glyph_patches(m, (32, 64), 8) == (1.5, 1.5)  # median box 6 px at native, 12 px at 2×


def test_segmentation_is_the_drawing_in_classes():
    for i, fam in enumerate(("document", "chart", "scene")):
        s = make_sample(0, "train", i, family=fam)
        mask = segmentation(s.meta)
        assert mask.shape == (s.image.height, s.image.width)
        ink = np.asarray(s.image).min(-1) < 200  # drawn pixels (white is 255)
        assert (mask[~ink] == 0).mean() > 0.99  # background where nothing is drawn
        want = {"text"} if fam == "document" else {"text", "bar"} if fam == "chart" else \
            {o["shape"] for o in s.meta["objects"]}
        assert {SEGMENTS[c] for c in np.unique(mask)} - {"background"} == want
        W, H = s.meta["size"]
        hw = budget_size(H, W, 8, 2, 4, 64)
        lab = segment_patch_labels(s.meta, hw, 8)
        assert lab.shape == (hw[0] // 8, hw[1] // 8) and {SEGMENTS[c] for c in np.unique(lab)} - {"background"} == want
        words = word_patch_labels(s.meta, hw, 8)  # a patch inside a word is a text patch
        assert fam == "scene" or (lab[words >= 0] == SEGMENTS.index("text")).mean() > 0.8
        assert all(VOCAB[w] in " ".join(x[0] for x in s.meta["words"]) for w in np.unique(words[words >= 0]))


def test_answers_are_balanced_and_chance_is_the_best_constant_answer():
    levels = chance_levels()
    k = {"document/title": len(WORDS), "document/lines": 4, "chart/longest": 8, "chart/bars": 4,
         "scene/colour": len(COLORS), "scene/shapes": 4}
    assert set(levels) == set(k)
    for kind, n_answers in k.items():  # uniform answers: the best constant guess is right 1/K of the time
        assert levels[kind] == pytest.approx(1 / n_answers, abs=0.03), kind
    assert set(READING) <= set(levels)


@pytest.mark.parametrize("hw", [(1000, 250), (250, 1000), (37, 53), (4000, 3000), (28, 28), (10, 2000)])
def test_budget_size_properties(hw):
    H, W = budget_size(*hw, patch=14, merge=2, min_tokens=4, max_tokens=300)
    assert H % 28 == 0 and W % 28 == 0
    tokens = (H // 28) * (W // 28)
    assert 4 <= tokens <= 300
    if 4 * 28 * 28 <= hw[0] * hw[1] and min(hw) >= 28:
        assert abs(np.log((H / W) / (hw[0] / hw[1]))) < 0.35  # aspect ratio kept (up to rounding)


def test_budget_keeps_native_size_when_within_budget():
    assert budget_size(280, 560, patch=14) == (280, 560)
    img = Image.new("RGB", (560, 280))
    assert resize_to_budget(img, 14).size == (560, 280)
    assert resize_to_budget(Image.new("L", (100, 90)), 14, max_tokens=4).size == (56, 56)


def test_resize_fixed_and_to_tensor():
    img = Image.new("RGB", (300, 100), (255, 0, 128))
    sq = resize_fixed(img, 64)
    assert sq.size == (64, 64)
    x = to_tensor(sq, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="aspect ratio above"):
        budget_size(1, 1000, patch=14)
    with pytest.raises(ValueError, match="min_tokens"):
        budget_size(100, 100, patch=14, min_tokens=10, max_tokens=5)
    with pytest.raises(ValueError, match="split"):
        SyntheticDataset("dev")
    with pytest.raises(IndexError):
        SyntheticDataset("train", 3)[3]


def test_budget_size_always_lands_in_budget():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        H = int(rng.integers(1, 5000))
        W = int(rng.integers(max(1, H // 150), min(5000, H * 150) + 1))
        lo = int(rng.integers(1, 60))
        hi = int(rng.integers(lo, 4000))
        h, w = budget_size(H, W, patch=14, merge=2, min_tokens=lo, max_tokens=hi)
        assert h % 28 == 0 and w % 28 == 0 and lo <= (h // 28) * (w // 28) <= hi, (H, W, lo, hi, h, w)
