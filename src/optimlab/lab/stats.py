"""Pure statistics for comparing optimizers over seeds: numbers in, numbers out, no sentences.

* :func:`t_interval` -- mean and 95% Student-t interval of one optimizer's seeds.
* :func:`mean_difference` -- two optimizers' difference in mean with its 95% interval, a
  two-sided p-value and Cohen's d: a paired t-test when the seeds pair up (same seed values,
  hence the same data split and initialization on both sides), Welch's t-test otherwise.
* :func:`time_to_target` -- steps (or seconds) to a target where a seed that never reached it
  is censored (``None``): a t-test on log steps when every seed reached the target (the
  difference is then a ratio with its interval), else a Mann-Whitney U test with the censored
  seeds ranked last, tied among themselves (:func:`rank_test`, exact even with those ties).
* :func:`failure_rates` -- Fisher's exact test on failed / successful seeds.

Seeds that give bit-for-bit (or to 1e-9 relative) identical results are not independent
samples: a pair of such sides is reported as ``kind="deterministic"`` with no p-value, and
fewer than two values on a side as ``kind="too_few"``; callers must not name a winner from
either.

    >>> d = mean_difference([0.97, 0.96, 0.98], [0.93, 0.92, 0.95], paired=True)
    >>> d.kind, round(d.diff, 3), d.p < 0.05
    ('paired', 0.037, True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import special as _sp
from scipy import stats as _st

__all__ = ["ALPHA", "Interval", "Difference", "TimeComparison", "FailureComparison", "t_interval", "is_constant",
           "mean_difference", "censored_median", "time_to_target", "failure_rates", "rank_test", "rank_test_floor"]

ALPHA = 0.05  # two-sided significance level; intervals are 1 - ALPHA = 95%
_REL_TOL = 1e-9  # spread below this fraction of the values' scale counts as no spread


@dataclasses.dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values, their standard deviation and the t-interval ``[lo, hi]`` (``sd``,
    ``lo``, ``hi`` are None for fewer than two values)."""

    n: int
    mean: float | None
    sd: float | None = None
    lo: float | None = None
    hi: float | None = None


@dataclasses.dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` and how sure we are of it.

    ``kind``: ``"paired"`` or ``"welch"`` (a test was run), ``"too_few"`` (fewer than two
    values on a side), ``"deterministic"`` (both sides constant: ``diff`` is exact, ``p`` is
    None). ``lo``/``hi`` bound the difference at 95%; ``d`` is Cohen's d (difference over the
    pooled standard deviation), None when that deviation is zero.
    """

    kind: str
    n_a: int
    n_b: int
    diff: float | None = None
    lo: float | None = None
    hi: float | None = None
    p: float | None = None
    d: float | None = None
    df: float | None = None

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA and self.diff != 0


@dataclasses.dataclass(frozen=True)
class TimeComparison:
    """Time to target of side a against side b; ``None`` values were never reached.

    ``kind``: ``"log_t"`` (every seed reached: ``diff`` is ``mean(log a) - mean(log b)``, so
    ``ratio = exp(-diff)`` is how many times fewer steps a needs, with ``ratio_lo``/``ratio_hi``),
    ``"rank"`` (Mann-Whitney U with censored seeds last), ``"too_few"``, ``"deterministic"``,
    ``"none_reached"``. ``sign`` is +1 when a is faster, -1 when b is, 0 for no difference
    (given only when ``p < ALPHA``, or exactly for ``deterministic``)."""

    kind: str
    n_a: int
    n_b: int
    reached_a: int
    reached_b: int
    median_a: float | None
    median_b: float | None
    p: float | None = None
    ratio: float | None = None
    ratio_lo: float | None = None
    ratio_hi: float | None = None
    sign: int = 0


@dataclasses.dataclass(frozen=True)
class FailureComparison:
    """Failed seeds out of all seeds on each side, and Fisher's exact two-sided p-value."""

    failed_a: int
    n_a: int
    failed_b: int
    n_b: int
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def _t_crit(df: float) -> float:
    return float(_sp.stdtrit(df, 1 - ALPHA / 2))  # Student t quantile; scipy.special is cheap to call


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _var(xs: Sequence[float]) -> float:
    m = _mean(xs)
    return math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def _finite(xs: Sequence[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


def is_constant(xs: Sequence[float]) -> bool:
    """All values equal up to 1e-9 of their scale (full-batch runs whose seed changes
    nothing differ only by rounding, e.g. a standard deviation of 2e-14)."""
    if len(xs) < 2:
        return False
    scale = max(1.0, max(abs(x) for x in xs))
    return max(xs) - min(xs) <= _REL_TOL * scale


def t_interval(xs: Sequence[float | None]) -> Interval:
    """Mean and 95% Student-t interval of the finite values in ``xs``."""
    xs = _finite(xs)
    if not xs:
        return Interval(0, None)
    m = _mean(xs)
    if len(xs) < 2:
        return Interval(1, m)
    sd = 0.0 if is_constant(xs) else math.sqrt(_var(xs))
    h = _t_crit(len(xs) - 1) * sd / math.sqrt(len(xs))
    return Interval(len(xs), m, sd, m - h, m + h)


def mean_difference(a: Sequence[float], b: Sequence[float], paired: bool = False) -> Difference:
    """Compare the means of ``a`` and ``b`` (two-sided, at :data:`ALPHA`).

    ``paired=True`` (``a[i]`` and ``b[i]`` share a seed) runs a paired t-test on ``a - b``;
    otherwise Welch's unequal-variance t-test."""
    a, b = _finite(a), _finite(b)
    if paired and len(a) != len(b):
        raise ValueError(f"a paired comparison needs as many values on each side, got {len(a)} and {len(b)}")
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return Difference("too_few", na, nb, diff=(_mean(a) - _mean(b)) if a and b else None)
    ma, mb = _mean(a), _mean(b)
    diff = ma - mb
    if is_constant(a) and is_constant(b):
        return Difference("deterministic", na, nb, diff=diff)
    va, vb = _var(a), _var(b)
    pooled = math.sqrt((va + vb) / 2)
    d = diff / pooled if pooled > 0 else None
    if paired:
        deltas = [x - y for x, y in zip(a, b)]
        df = na - 1
        if is_constant(deltas):  # the same gap on every seed
            same = abs(diff) <= _REL_TOL * max(1.0, abs(ma), abs(mb))
            return Difference("paired", na, nb, diff=diff, lo=diff, hi=diff, p=1.0 if same else 0.0, d=d, df=df)
        se = math.sqrt(_var(deltas) / na)
    else:
        se = math.sqrt(va / na + vb / nb)
        df = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    t = diff / se
    h = _t_crit(df) * se
    p = float(2 * _sp.stdtr(df, -abs(t)))  # two-sided: twice the upper tail of |t|
    return Difference("paired" if paired else "welch", na, nb, diff=diff, lo=diff - h, hi=diff + h, p=p, d=d, df=df)


def censored_median(xs: Sequence[float | None]) -> float | None:
    """Median where ``None`` means "never reached" (larger than any value): None when at
    least half the seeds never reached (for an even count, when the upper middle did not)."""
    if not xs:
        return None
    vals = sorted(math.inf if x is None else float(x) for x in xs)
    n = len(vals)
    m = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
    return None if math.isinf(m) else m


def time_to_target(a: Sequence[float | None], b: Sequence[float | None], paired: bool = False) -> TimeComparison:
    """Compare times to target (steps or seconds) of every seed, ``None`` = never reached.

    When every seed on both sides reached the target, times are compared on a log scale with
    :func:`mean_difference` (paired if ``paired``), which gives a ratio and its interval. When
    some did not, a two-sided Mann-Whitney U test ranks the never-reached seeds after every
    reached one, tied among themselves. Fewer than two seeds on a side: ``too_few``."""
    a, b = list(a), list(b)
    ra, rb = sum(x is not None for x in a), sum(x is not None for x in b)
    base = dict(n_a=len(a), n_b=len(b), reached_a=ra, reached_b=rb, median_a=censored_median(a),
                median_b=censored_median(b))
    if len(a) < 2 or len(b) < 2:
        return TimeComparison("too_few", **base)
    if ra == 0 and rb == 0:
        return TimeComparison("none_reached", **base)
    if ra == len(a) and rb == len(b):
        if min(a + b) <= 0:
            raise ValueError("times to target must be positive")
        d = mean_difference([math.log(x) for x in a], [math.log(x) for x in b], paired=paired)
        if d.kind == "deterministic":
            return TimeComparison("deterministic", **base, ratio=math.exp(-d.diff),
                                  sign=0 if abs(d.diff) < 1e-12 else (1 if d.diff < 0 else -1))
        sign = (1 if d.diff < 0 else -1) if d.significant else 0
        return TimeComparison("log_t", **base, p=d.p, ratio=math.exp(-d.diff), ratio_lo=math.exp(-d.hi),
                              ratio_hi=math.exp(-d.lo), sign=sign)
    xa = [math.inf if x is None else float(x) for x in a]
    xb = [math.inf if x is None else float(x) for x in b]
    p, a_slower = rank_test(xa, xb)
    sign = (-1 if a_slower else 1) if p < ALPHA else 0
    return TimeComparison("rank", **base, p=p, sign=sign)


def rank_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, bool]:
    """Two-sided Wilcoxon-Mann-Whitney rank-sum test, exact under ties (``inf`` allowed).

    Returns the p-value and whether ``a`` ranks higher than expected. The null distribution
    of the rank sum of ``a`` is counted exactly over every way of choosing ``len(a)`` of the
    pooled mid-ranks (a dynamic programme, not an enumeration) up to 60 values in all; beyond
    that, scipy's normal approximation with tie correction. scipy's own small-sample exact
    method assumes no ties, and its tie-corrected normal approximation is too liberal for 3
    seeds a side (it gives p=0.047 for 3 never-reached seeds against 3 reached, where the
    exact answer is 0.1)."""
    na, nb = len(a), len(b)
    if na + nb > 60:
        res = _st.mannwhitneyu(a, b, alternative="two-sided")
        return float(res.pvalue), float(res.statistic) > na * nb / 2
    ranks = _st.rankdata(list(a) + list(b))
    twice = [int(round(2 * r)) for r in ranks]  # mid-ranks are multiples of 1/2
    observed = sum(twice[:na])
    total = sum(twice)
    # ways[j][s]: subsets of j values whose doubled ranks sum to s
    ways = np.zeros((na + 1, total + 1), dtype=np.int64)
    ways[0, 0] = 1
    for r in twice:
        ways[1:, r:] += ways[:-1, : total + 1 - r].copy()
    dist = ways[na]
    mean2 = na * total  # na * (mean doubled rank) * (na + nb), kept integral by scaling by na + nb
    dev = np.abs(np.arange(total + 1) * (na + nb) - mean2)
    obs_dev = abs(observed * (na + nb) - mean2)
    p = float(dist[dev >= obs_dev].sum() / dist.sum())
    return min(1.0, p), observed * (na + nb) > mean2


def failure_rates(failed_a: int, n_a: int, failed_b: int, n_b: int) -> FailureComparison:
    """Fisher's exact test: do the two sides fail (diverge or crash) at different rates?"""
    if n_a == 0 or n_b == 0 or (failed_a == 0 and failed_b == 0):
        return FailureComparison(failed_a, n_a, failed_b, n_b, 1.0)
    table = [[failed_a, n_a - failed_a], [failed_b, n_b - failed_b]]
    return FailureComparison(failed_a, n_a, failed_b, n_b, float(_st.fisher_exact(table).pvalue))


def rank_test_floor(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value a Mann-Whitney U test can give with ``n_a`` and ``n_b``
    seeds (no ties): with 3 and 3 it is 0.1, so no difference can be shown at 5%."""
    return min(1.0, 2 / math.comb(n_a + n_b, n_a)) if n_a and n_b else 1.0
