"""Exact match on held-out toy questions, with the blank-image control."""
import numpy as np
import pytest

from minicomp.data.synthetic import SyntheticDataset
from minicomp.evaluate import KINDS, QUESTIONS, compare, exact_match, resolution_sweep, with_control
from minicomp.stats import median_interval, paired_difference, wilson
from minicomp.viz import plot_sweep, sweep_points


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
        return [self.truths[(start + i) % len(self.truths)] if i < self.right else "?" for i in range(len(prompts))]


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
    assert set(r["by_question"]) == {f"{f}/{q}" for f, qs in QUESTIONS.items() for q in qs} | {"all", "reading"}
    assert r["hits"] == [1, 1, 1, 0] * 3 and len(r["kinds"]) == 12 and set(r["kinds"]) <= set(KINDS)
    for kind, s in r["by_question"].items():  # each kind: its own hits, n, a Wilson interval, a chance level
        h = [x for x, k in zip(r["hits"], r["kinds"]) if kind == "all" or k == kind or
             (kind == "reading" and k in ("document/title", "chart/longest"))]
        assert s["n"] == len(h) and s["accuracy"] == pytest.approx(sum(h) / len(h))
        assert s["ci"][0] <= s["accuracy"] <= s["ci"][1] and 0 < s["chance"] < 0.5
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


def test_wilson_matches_published_values():
    lo, hi = wilson(5, 10)  # Newcombe (1998), table I: 0.2366 to 0.7634
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson(0, 10)
    assert lo == 0 and round(hi, 4) == 0.2775
    assert wilson(10, 10)[1] == 1 and wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="k=11"):
        wilson(11, 10)


def test_paired_difference_by_hand():
    a, b = [1, 1, 1, 0, 1, 0], [0, 1, 0, 0, 1, 0]  # differences 1, 0, 1, 0, 0, 0
    r = paired_difference(a, b)
    mean, var = 2 / 6, ((1 - 2 / 6) ** 2 * 2 + (2 / 6) ** 2 * 4) / 5
    assert r["diff"] == pytest.approx(mean) and r["se"] == pytest.approx((var / 6) ** 0.5)
    assert r["z"] == pytest.approx(mean / (var / 6) ** 0.5) and r["n"] == 6
    assert paired_difference([1, 1], [0, 0])["z"] == float("inf")  # always ahead: no noise
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([1], [1, 0])


def test_median_interval_takes_the_sign_tests_order_statistics():
    # n = 15 at 95%: P(Binomial(15, 1/2) <= 3) = 576 / 2^15 = 0.018 <= 0.025 < P(<= 4) = 0.059, so the
    # 4th and 12th smallest, covering 1 - 2 * 0.018 = 0.9648
    r = median_interval([15 - i for i in range(15)])  # order must not matter
    assert (r["median"], r["low"], r["high"], r["n"]) == (8, 4, 12, 15)
    assert r["coverage"] == pytest.approx(1 - 2 * (1 + 15 + 105 + 455) / 2 ** 15)
    r = median_interval([3.0, 1.0, 2.0, 10.0, 4.0, 5.0, 6.0])  # n = 7: min and max, 1 - 2/128
    assert (r["median"], r["low"], r["high"], r["coverage"]) == (4.0, 1.0, 10.0, 1 - 2 / 128)
    assert median_interval([1.0, 2.0, 3.0, 4.0])["median"] == 2.5
    r = median_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # too few for 95%: says so, by an unbounded interval
    assert (r["low"], r["high"], r["coverage"]) == (float("-inf"), float("inf"), 1.0)
    with pytest.raises(ValueError, match="at least one value"):
        median_interval([])


@pytest.mark.parametrize("n", [6, 7, 10, 15, 16, 31, 100])
def test_median_interval_equals_scipys_quantile_test(n):
    """Against SciPy's exact binomial quantile test (SciPy comes with the dev tools, through POT)."""
    stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(n).normal(size=n)
    ci = stats.quantile_test(x, q=float(np.median(x)), p=0.5).confidence_interval(0.95)
    r = median_interval(list(x))
    assert (r["low"], r["high"]) == (ci.low, ci.high) and r["median"] == pytest.approx(np.median(x))


def test_with_control_pairs_real_and_blank_on_the_same_questions():
    truths = _truths(6)

    class Sighted(Recorder):  # answers right only when the image is not blank
        def generate(self, images, prompts, **kw):
            start = len(self.asked)
            self.asked += list(zip(images, prompts))
            return [truths[start % 12 + i] if np.asarray(im).min() < 255 else "?" for i, im in enumerate(images)]

    r = with_control(Sighted(truths, 0), 6, batch=12)
    assert r["accuracy"] == 1 and r["blank"]["accuracy"] == 0
    assert r["vs_blank"]["all"]["diff"] == 1 and r["vs_blank"]["reading"]["n"] == 4
    with pytest.raises(ValueError, match="different questions"):
        compare(r, {**r["blank"], "kinds": r["kinds"][::-1]})


def test_plot_sweep_draws_every_budget_with_its_interval_and_the_blank_control():
    rec = Recorder(_truths(6), right=5)
    sweep = resolution_sweep(rec, {"fixed 64px": {"fixed_size": 64}, "native ≤16 tokens": {"max_tokens": 16},
                                   "native ≤64 tokens": {"max_tokens": 64}}, 6, batch=12)
    assert [p["tokens"] for p in sweep_points(sweep)] == [16, 16, 64]  # a 64 px square: (64 / 16)² tokens
    fig = plot_sweep(sweep, train_budget=64)
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["reading questions", "all questions"]
    line = axes[1].lines[0]  # native, real images: the budgets in order, at their accuracies
    assert list(line.get_xdata()) == [16, 64] and list(line.get_ydata()) == [sweep["native ≤16 tokens"]["by_question"]["all"]["accuracy"],
                                                                              sweep["native ≤64 tokens"]["by_question"]["all"]["accuracy"]]
    labels = axes[0].get_legend_handles_labels()[1]
    assert {"native, real images", "native, blank images", "fixed, real images", "chance"} <= set(labels)
    with pytest.raises(ValueError, match="sweep label"):
        sweep_points({"huge": {}})
