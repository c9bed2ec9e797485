"""Small statistics for evaluation: how sure is a measured accuracy, and is a difference real.

- `wilson`: the Wilson score 95% interval of a proportion (k hits of n). Unlike the normal
  approximation it stays inside [0, 1] and behaves at 0 and n hits.
- `paired_difference`: the mean difference of two 0/1 outcome vectors over the *same*
  questions (real against blank images, native against fixed resolution) with its standard
  error, from the per-question differences. Pairing removes the questions' own difficulty from
  the noise, so it resolves smaller effects than two independent intervals would.
- `median_interval`: the median of a sample with a distribution-free interval from its order
  statistics (the sign test's): timing ratios under a fluctuating load are far from normal.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n (95% for z = 1.96); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: Sequence[int], b: Sequence[int]) -> dict:
    """mean(a) − mean(b) for outcomes on the same questions, with the standard error of the
    per-question differences and z = diff / se (inf when the differences never vary but one
    side is ahead). -> {"diff", "se", "z", "n"}."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same questions: {len(a)} against {len(b)}")
    n = len(a)
    if n < 2:
        raise ValueError(f"a paired difference needs at least 2 questions, got {n}")
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    se = math.sqrt(var / n)
    z = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return {"diff": mean, "se": se, "z": z, "n": n}


def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (p in (0.5, 1)): bisection on
    the CDF, itself Simpson's rule on the density (accurate to about 1e-6 for df >= 1)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"need 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf_above_half(x: float, n: int = 400) -> float:  # ∫_0^x density: with t = √df·tan u it is
        b = math.atan(x / math.sqrt(df))  # ∫_0^b √df·c·cos(u)^(df−1) du, smooth and bounded, by Simpson's rule
        f = lambda u: math.cos(u) ** (df - 1)  # noqa: E731
        h = b / n
        s = f(0.0) + f(b) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
        return math.exp(log_c) * math.sqrt(df) * s * h / 3

    lo, hi = 0.0, 1.0
    while cdf_above_half(hi) < p - 0.5:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf_above_half(mid) < p - 0.5 else (lo, mid)
    return (lo + hi) / 2


def median_interval(xs: Sequence[float], level: float = 0.95) -> dict:
    """The median of xs with the order-statistic interval [x_(k), x_(n+1-k)] that covers the
    population median with probability at least `level` for independent draws from any
    continuous distribution: k is the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2.
    With too few values for that (n <= 5 at 95%), the interval is (-inf, inf).
    -> {"median", "low", "high", "coverage", "n"}: coverage is the interval's exact probability,
    1 - 2 P(Binomial(n, 1/2) < k). The interval is SciPy's `quantile_test(x, p=0.5)
    .confidence_interval()` (a test checks), kept here since SciPy is not a dependency of the package."""
    n = len(xs)
    if n == 0:
        raise ValueError("median_interval needs at least one value, got none")
    if not 0 < level < 1:
        raise ValueError(f"need 0 < level < 1, got {level}")
    x = sorted(xs)
    median = x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2
    below = 0.0  # P(Binomial(n, 1/2) < k), accumulated as k grows
    k = 0
    while k < n // 2 and below + math.comb(n, k) / 2 ** n <= (1 - level) / 2:
        below += math.comb(n, k) / 2 ** n
        k += 1
    if k == 0:
        return {"median": median, "low": -math.inf, "high": math.inf, "coverage": 1.0, "n": n}
    return {"median": median, "low": x[k - 1], "high": x[n - k], "coverage": 1 - 2 * below, "n": n}
