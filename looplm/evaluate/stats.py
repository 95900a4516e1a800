"""Confidence intervals for accuracies measured on a finite number of held-out items.

- `wilson_interval(k, n)`: the Wilson score interval of a proportion k / n (95% by default). Unlike
  the plain normal interval it stays inside [0, 1] and is not empty at k = 0 or k = n (0 of 10
  correct still allows up to 27.8%).
- `diff_interval(k1, n1, k2, n2)`: the normal-approximation (Wald) interval of p1 - c * p2 for two
  independent proportions (c = 1: a plain difference; c = 0.8: "p1 keeps at least 80% of p2").

Simplification: items are treated as independent draws; two models scored on the same items are
treated as independent samples (conservative for a paired comparison). The Wald interval collapses
to a point when both proportions are 0 or 1; callers that judge a difference handle that case.
"""

from __future__ import annotations

import math

def _check(k: int, n: int) -> None:
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """(low, high) of the Wilson score interval of k successes in n trials."""
    _check(k, n)
    p = k / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def diff_interval(k1: int, n1: int, k2: int, n2: int, z: float = 1.96,
                  scale: float = 1.0) -> tuple[float, float, float]:
    """(estimate, low, high) of p1 - scale * p2 with a normal-approximation (Wald) interval."""
    _check(k1, n1)
    _check(k2, n2)
    p1, p2 = k1 / n1, k2 / n2
    est = p1 - scale * p2
    se = math.sqrt(p1 * (1 - p1) / n1 + scale * scale * p2 * (1 - p2) / n2)
    return est, est - z * se, est + z * se
