"""Small statistics for evaluation: how sure is a measured accuracy, and is a difference real.

- `wilson`: the Wilson score 95% interval of a proportion (k hits of n). Unlike the normal
  approximation it stays inside [0, 1] and behaves at 0 and n hits.
- `paired_difference`: the mean difference of two 0/1 outcome vectors over the *same*
  questions (real against blank images, native against fixed resolution) with its standard
  error, from the per-question differences. Pairing removes the questions' own difficulty from
  the noise, so it resolves smaller effects than two independent intervals would.
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
