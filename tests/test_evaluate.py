"""Exact match on held-out toy questions, with the blank-image control."""
import numpy as np
import pytest

from minicomp.data.synthetic import SyntheticDataset
from minicomp.evaluate import QUESTIONS, exact_match, resolution_sweep


class Recorder:
    """Stands in for a model: records what it is asked and answers the truth for the first
    `right` questions of each call, "?" for the rest."""

    def __init__(self, truths, right):
        self.truths, self.right, self.asked, self.training, self.sizes = truths, right, [], False, []

    def eval(self):
        return self

    def train(self, mode=True):
        self.training = mode

    def generate(self, images, prompts, **kw):
        self.asked += list(zip(images, prompts))
        self.sizes.append({k: kw[k] for k in ("fixed_size", "max_tokens")})
        start = len(self.asked) - len(prompts)
        return [self.truths[start + i] if i < self.right else "?" for i in range(len(prompts))]


def _truths(n):
    ds = SyntheticDataset("test", n)
    return [t["value"] for i in range(n) for t in ds[i].conversations[1::2]]


@pytest.mark.parametrize("images", ["real", "blank"])
def test_exact_match_counts_exact_answers_and_blank_hides_the_image(images):
    n = 6
    truths, ds = _truths(n), SyntheticDataset("test", n)
    rec = Recorder(truths, right=3)
    r = exact_match(rec, n, batch=4, images=images)
    assert r["n"] == 2 * n == len(rec.asked)
    assert r["accuracy"] == pytest.approx((3 + 3 + 3) / 12)  # batches of 4, 4, 4: three right in each
    assert set(r["by_question"]) == {f"{f}/{q}" for f, qs in QUESTIONS.items() for q in qs}
    for k, (img, prompt) in enumerate(rec.asked):
        real = ds[k // 2].image
        assert img.size == real.size and "<image>" not in prompt
        pixels = np.asarray(img)
        assert (pixels == 255).all() == (images == "blank")


def test_exact_match_rejects_unknown_image_mode():
    with pytest.raises(ValueError, match="images='noise'"):
        exact_match(Recorder([], 0), 2, images="noise")



def test_resolution_sweep_asks_the_same_questions_at_each_size_with_the_control():
    rec = Recorder(_truths(3), right=0)
    r = resolution_sweep(rec, {"fixed 64px": {"fixed_size": 64}, "native ≤16 tokens": {"max_tokens": 16}}, 3, batch=6)
    assert list(r) == ["fixed 64px", "native ≤16 tokens"] and all(v["n"] == v["blank"]["n"] == 6 for v in r.values())
    assert [s["fixed_size"] for s in rec.sizes] == [64, 64, None, None]  # real then blank, at each size
    assert [s["max_tokens"] for s in rec.sizes][2:] == [16, 16]
    prompts = [p for _, p in rec.asked]
    assert prompts[:6] == prompts[6:12] == prompts[12:18] == prompts[18:]
