"""Summary statistics of a few runs (seeds): mean, sample standard deviation and Student-t intervals.

With 2 to 10 seeds the normal approximation understates the uncertainty badly (t₀.₉₇₅ is 12.7
for 2 runs, 4.30 for 3, against 1.96), so intervals use Student's t with n − 1 degrees of
freedom. The quantile is computed here (regularised incomplete beta function, then bisection),
so that the package needs no scipy.

An interval is clipped to the values the figure can take (`figure_range`): with 2 runs the
t-interval spans ±12.7 standard errors, and [0.239, 1.650] is no accuracy. Clipping keeps the
interval's coverage (the true mean lies in the range anyway) and changes nothing where the
interval fits. A Wilson interval is for a proportion of images, not the mean of a few seeds, and a
percentile (bootstrap) interval needs more runs than a table row has; so the t-interval stays, and
a row of n < 3 is flagged where it is shown (`SHAKY_BELOW`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import lru_cache

CONFIDENCE = 0.95
SHAKY_BELOW = 3  # runs: an interval of fewer is flagged (t₀.₉₇₅ of 1 degree of freedom is 12.7)
UNBOUNDED = (-math.inf, math.inf)


def figure_range(name: str) -> tuple[float, float]:
    """What a figure can be, by its name (metrics.jsonl's `val_acc`, a table column's `c/ece`): an accuracy,
    an ECE and an OOD rate or area in [0, 1], a Brier score in [0, 2], anything else (an NLL, a loss, a
    norm, a learning rate) at least 0."""
    if "brier" in name:
        return 0.0, 2.0
    if any(part in name for part in ("acc", "top5", "ece")) or name.startswith("ood/"):
        return 0.0, 1.0
    return 0.0, math.inf


@dataclass(frozen=True)
class Spread:
    """Mean, sample std and the 95% Student-t interval of the mean of `n` values (no interval for n < 2)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None


def spread(values: list[float], confidence: float = CONFIDENCE,
           bounds: tuple[float, float] = UNBOUNDED) -> Spread:
    """mean ± t(1 − α/2, n − 1)·s/√n for n ≥ 2 values, clipped to `bounds` (`figure_range`)."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Spread(len(values), mean, None, None, None)
    std = statistics.stdev(values)
    half = t_quantile(0.5 + confidence / 2, len(values) - 1) * std / math.sqrt(len(values))
    return Spread(len(values), mean, std, max(mean - half, bounds[0]), min(mean + half, bounds[1]))


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (p in (0.5, 1)), by bisection on the CDF
    (cached: a verdict's power asks for the same few quantiles many times)."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for t ≥ 0: 1 − I_x(df/2, 1/2)/2 with x = df/(df + t²)."""
    return 1 - 0.5 * regularized_beta(df / (df + t * t), df / 2, 0.5)


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by the continued fraction of Numerical Recipes (modified Lentz), on its convergent side."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * beta_fraction(x, a, b) / a
    return 1 - front * beta_fraction(1 - x, b, a) / b


def beta_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result
