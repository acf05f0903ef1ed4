"""The statistics of a results table: mean and sample standard deviation over seeds, and a paired
difference with its Student-t confidence interval. Pure Python (no scipy): the t quantile comes from the
closed form of the t distribution's CDF for whole degrees of freedom (Abramowitz & Stegun 26.7.3-4),
inverted by bisection."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


def mean_sd(values: Sequence[float]) -> tuple:
    """(mean, sample standard deviation with n - 1; None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_central_probability(t: float, df: int) -> float:
    """P(-t < T < t) for Student's T with ``df`` (a positive whole number) degrees of freedom, t >= 0."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi) (theta + sin(theta) (cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ... + cos^(df-2)))
        term = math.cos(theta)
        total = term if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term = total = 1.0  # even: sin(theta) (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... + cos^(df-2))
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_quantile(level: float, df: int) -> float:
    """The two-sided critical value q with P(-q < T < q) = ``level`` (0.95: 12.706 for 1 degree of freedom)."""
    lo, hi = 0.0, 1.0
    while t_central_probability(hi, df) < level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_central_probability(mid, df) < level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class Paired:
    n: int
    mean: float
    low: Optional[float]   # the confidence interval (None with one pair)
    high: Optional[float]


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Paired:
    """a - b over pairs (the same seeds): the mean difference and its paired-t interval."""
    d = [x - y for x, y in zip(a, b)]
    mean, sd = mean_sd(d)
    if sd is None:
        return Paired(len(d), mean, None, None)
    half = t_quantile(level, len(d) - 1) * sd / math.sqrt(len(d))
    return Paired(len(d), mean, mean - half, mean + half)
