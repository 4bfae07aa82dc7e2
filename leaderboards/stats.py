"""Paired comparisons of two methods over seeds: differences by seed, mean ± std, the paired t-test, a verdict.

Two runs with the same seed share the data order, the label noise and the initial random stream, so the fair unit of
comparison is the per-seed difference `a[s] - b[s]`, and the test is the paired (dependent-samples) t-test on those
differences: t = mean(d) / (std(d) / sqrt(n)) with n - 1 degrees of freedom, two-sided (Student 1908; the statistic
`scipy.stats.ttest_rel` computes). Two degenerate cases get an explicit answer instead of scipy's warning and NaN:
fewer than two pairs (no variance to estimate: not tested) and differences that are all equal (zero variance:
p = 1 when they are all zero, p = 0 otherwise, the limit of the statistic).

A verdict says "beats" / "loses" only at p < alpha (0.05) and "no significant difference" otherwise; it carries the
number of comparisons the caller made in the same table, because at alpha = 0.05 about one in twenty comparisons
of equal methods comes out "significant" by chance, and the reader needs that count to weigh a table of findings.

Imports nothing of this repository (the renderer reads CSVs only and may import this module).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from scipy import stats as _scipy_stats

__all__ = [
    "ALPHA",
    "VERDICTS",
    "Paired",
    "PairedTest",
    "Verdict",
    "format_delta",
    "format_p",
    "mean_std",
    "paired",
    "paired_ttest",
    "verdict",
]

ALPHA = 0.05
VERDICTS = ("beats", "loses", "no significant difference", "not tested")


class Paired(NamedTuple):
    """Per-seed differences `a - b` over the seeds both sides have (sorted); `unpaired` lists the other seeds."""

    seeds: list
    a: list[float]
    b: list[float]
    diffs: list[float]
    unpaired: list


class PairedTest(NamedTuple):
    """The paired t-test on differences: n pairs, their mean and sample std (ddof 1), t and the two-sided p."""

    n: int
    mean: float
    std: float
    t: float
    p: float


class Verdict(NamedTuple):
    """`word` (one of VERDICTS) at `alpha`, with the p value and the number of comparisons it was one of."""

    word: str
    p: float
    alpha: float
    comparisons: int

    @property
    def expected_by_chance(self) -> float:
        """How many of `comparisons` equal-method comparisons would pass p < alpha by chance alone (alpha · m)."""
        return self.alpha * self.comparisons

    def __str__(self) -> str:
        return f"{self.word} ({format_p(self.p)}; one of {self.comparisons} comparisons at α = {self.alpha:g})"


def paired(a: Mapping, b: Mapping) -> Paired:
    """Pair two `{seed: metric}` maps by seed; a seed missing on either side (or a NaN/None metric) is unpaired."""

    def ok(v) -> bool:
        return v is not None and not (isinstance(v, float) and math.isnan(v))

    common = sorted(s for s in a if s in b and ok(a[s]) and ok(b[s]))
    unpaired = sorted(set(a) ^ set(b) | {s for s in set(a) & set(b) if s not in common})
    va, vb = [float(a[s]) for s in common], [float(b[s]) for s in common]
    return Paired(common, va, vb, [x - y for x, y in zip(va, vb)], unpaired)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1); std is NaN for one value, both NaN for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def paired_ttest(diffs: Sequence[float] | Paired) -> PairedTest:
    """The two-sided paired t-test on per-seed differences (or on a `Paired`).

    n < 2: t and p are NaN (not tested). All differences equal: p = 1 if they are zero, else p = 0 and t = ±inf.
    Otherwise `scipy.stats.ttest_rel`, which on the differences is the one-sample t-test against 0.
    """
    d = [float(v) for v in (diffs.diffs if isinstance(diffs, Paired) else diffs)]
    n = len(d)
    mean, std = mean_std(d)
    if n < 2:
        return PairedTest(n, mean, std, math.nan, math.nan)
    if all(v == d[0] for v in d):  # zero variance: scipy would warn and return NaN
        if d[0] == 0:
            return PairedTest(n, 0.0, 0.0, 0.0, 1.0)
        return PairedTest(n, mean, 0.0, math.copysign(math.inf, mean), 0.0)
    res = _scipy_stats.ttest_rel(d, [0.0] * n)
    return PairedTest(n, mean, std, float(res.statistic), float(res.pvalue))


def verdict(test: PairedTest, comparisons: int, alpha: float = ALPHA, higher_is_better: bool = True) -> Verdict:
    """ "beats" / "loses" (a against b) only where p < alpha, "no significant difference" otherwise, "not tested"
    with fewer than two pairs. `comparisons` is how many such tests the caller's table makes (at least 1)."""
    if isinstance(comparisons, bool) or not isinstance(comparisons, int) or comparisons < 1:
        raise ValueError(f"comparisons must be the positive number of tests in the table, got {comparisons!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if test.n < 2 or math.isnan(test.p):
        return Verdict("not tested", test.p, alpha, comparisons)
    if test.p >= alpha or test.mean == 0:
        return Verdict("no significant difference", test.p, alpha, comparisons)
    better = test.mean > 0 if higher_is_better else test.mean < 0
    return Verdict("beats" if better else "loses", test.p, alpha, comparisons)


def format_p(p: float) -> str:
    """`p = 0.012`, `p < 0.001`, or `p n/a` (not tested)."""
    if p is None or math.isnan(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def format_delta(test: PairedTest, digits: int = 2) -> str:
    """`+0.37 ± 0.16 (p = 0.074)`: the mean paired difference, its std over seeds and the p value."""
    if math.isnan(test.mean):
        return "n/a"
    std = "n/a" if math.isnan(test.std) else f"{test.std:.{digits}f}"
    return f"{test.mean:+.{digits}f} ± {std} ({format_p(test.p)})"
