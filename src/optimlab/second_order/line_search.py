"""Line searches along a direction ``d`` from ``x``: ``phi(t) = f(x + t d)``.

Both searches take ``phi(t) -> (f, g)`` -- the loss and the flat gradient at ``x + t d`` -- so
any optimizer that can evaluate its closure can use them (see :class:`optimlab.LineSearch`,
which puts one behind any ``torch.optim`` optimizer).

* :func:`backtracking` -- Armijo's sufficient decrease ``f(x + t d) <= f(x) + c1 t g'd``,
  shrinking ``t`` by ``shrink`` until it holds (Nocedal & Wright, *Numerical Optimization*,
  Algorithm 3.1).
* :func:`strong_wolfe` -- sufficient decrease plus the strong curvature condition
  ``|g(x + t d)'d| <= c2 |g'd|``: a bracketing phase that extrapolates, then a zoom phase that
  shrinks the bracket, each trial point the minimiser of the cubic through the bracket's ends
  (Nocedal & Wright, Algorithms 3.5 and 3.6, eq. 3.59). Configured as torch.optim.LBFGS's
  ``line_search_fn="strong_wolfe"`` (``c1=1e-4, c2=0.9``, 25 evaluations, extrapolation up to
  10x, safeguarded interpolation), so an optimizer using it follows torch's trajectory.

A search that fails says so: ``result.success`` is False and ``result.message`` tells why (not a
descent direction, no sufficient decrease after the allowed evaluations, bracket collapsed);
``result.t`` is then the best point seen, which the caller may take or reject.

Example::

    >>> res = backtracking(lambda t: (float(f(x + t * d)), None), f0=float(f(x)), gtd=float(g @ d))
    >>> res.t, res.success, res.evals
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from torch import Tensor

__all__ = ["LineSearchResult", "backtracking", "strong_wolfe", "cubic_minimizer", "LINE_SEARCHES"]

Phi = Callable[[float], tuple[float, "Tensor | None"]]


@dataclasses.dataclass
class LineSearchResult:
    """Where a search ended: step ``t``, the loss ``f`` and flat gradient ``g`` there (``g`` is
    None when the search never needed it), the number of evaluations of ``phi``, whether the
    conditions it looks for hold (``message`` explains a failure), and whether it stopped
    because its evaluations ran out (``max_evals``)."""

    t: float
    f: float
    g: Tensor | None
    evals: int
    success: bool
    message: str = ""
    out_of_evals: bool = False


def backtracking(phi: Phi, f0: float, gtd: float, t0: float = 1.0, c1: float = 1e-4, shrink: float = 0.5,
                 max_evals: int = 30) -> LineSearchResult:
    """Armijo backtracking from ``t0``: the first ``t = t0 shrink^k`` with sufficient decrease."""
    if not 0 < c1 < 1:
        raise ValueError(f"Invalid c1: {c1} (must be in (0, 1))")
    if not 0 < shrink < 1:
        raise ValueError(f"Invalid shrink: {shrink} (must be in (0, 1))")
    if not gtd < 0:
        return LineSearchResult(0.0, f0, None, 0, False,
                                f"not a descent direction (g'd = {gtd:.3g} >= 0): no step along it can decrease the loss")
    t, best = t0, (math.inf, 0.0, None)
    for k in range(1, max_evals + 1):
        f, g = phi(t)
        if f < best[0]:
            best = (f, t, g)
        if math.isfinite(f) and f <= f0 + c1 * t * gtd:
            return LineSearchResult(t, f, g, k, True)
        t *= shrink
    f, t, g = best
    return LineSearchResult(t, f, g, max_evals, False,
                            f"no sufficient decrease (Armijo, c1={c1}) after {max_evals} evaluations down to "
                            f"t={t0 * shrink ** (max_evals - 1):.3g}; best loss {f:.6g} vs {f0:.6g} at t=0",
                            out_of_evals=True)


def cubic_minimizer(t1: float, f1: float, d1: float, t2: float, f2: float, d2: float,
                    lo: float | None = None, hi: float | None = None) -> float:
    """The minimiser of the cubic interpolating ``(t1, f1, f'(t1) = d1)`` and ``(t2, f2, d2)``,
    clipped to ``[lo, hi]`` (default: the interval between ``t1`` and ``t2``); the midpoint when
    the cubic has no minimiser (Nocedal & Wright eq. 3.59)."""
    if lo is None or hi is None:
        lo, hi = min(t1, t2), max(t1, t2)
    a = d1 + d2 - 3 * _div(f1 - f2, t1 - t2)
    disc = a * a - d1 * d2
    if not disc >= 0:  # also NaN
        return (lo + hi) / 2
    b = math.sqrt(disc)
    if t1 <= t2:
        t = t2 - (t2 - t1) * _div(d2 + b - a, d2 - d1 + 2 * b)
    else:
        t = t1 - (t1 - t2) * _div(d1 + b - a, d1 - d2 + 2 * b)
    return min(max(t, lo), hi)


def _div(a: float, b: float) -> float:
    """``a / b`` with IEEE semantics (inf or NaN for b == 0), as torch's tensor arithmetic in its
    own line search gives: a degenerate interpolation then falls to the same clipped point."""
    if b != 0:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)


@dataclasses.dataclass
class _Point:
    t: float
    f: float
    g: Tensor
    dd: float  # the directional derivative g'd


def strong_wolfe(phi: Phi, f0: float, g0: Tensor, d: Tensor, t0: float = 1.0, c1: float = 1e-4,
                 c2: float = 0.9, tolerance_change: float = 1e-9, max_evals: int = 25) -> LineSearchResult:
    """A step satisfying the strong Wolfe conditions along ``d`` (``phi`` must return the flat
    gradient). ``tolerance_change``: the zoom stops once the bracket is narrower than this in
    the largest coordinate of the step. ``max_evals`` bounds the evaluations after the first
    (torch's ``max_ls``): at most ``max_evals + 1`` in all; torch.optim.LBFGS passes what is
    left of its ``max_eval`` budget for the step."""
    if not 0 < c1 < c2 < 1:
        raise ValueError(f"Invalid c1, c2: {c1}, {c2} (need 0 < c1 < c2 < 1)")
    gtd0 = float(g0.dot(d))
    if not gtd0 < 0:
        return LineSearchResult(0.0, f0, g0, 0, False,
                                f"not a descent direction (g'd = {gtd0:.3g} >= 0): no step along it can decrease the loss")
    d_max = float(d.abs().max())
    start = _Point(0.0, f0, g0, gtd0)

    def at(t: float) -> _Point:
        f, g = phi(t)
        return _Point(t, f, g, float(g.dot(d)))

    def armijo_fails(p: _Point) -> bool:
        return not p.f <= f0 + c1 * p.t * gtd0  # (a NaN loss fails too)

    def curvature_ok(p: _Point) -> bool:
        return abs(p.dd) <= -c2 * gtd0

    # -- bracketing: step out until [prev, cur] contains acceptable points ------------------------
    # ``trials`` counts evaluations after the first; like torch's LBFGS the search makes at
    # most ``max_evals`` of them, and "not lower than the previous point" counts from the
    # second extrapolation on.
    prev, cur = start, at(t0)
    trials, bracket, found = 0, None, None
    while trials < max_evals:
        if armijo_fails(cur) or (trials > 1 and cur.f >= prev.f):
            bracket = [prev, cur]
            break
        if curvature_ok(cur):
            found = cur
            break
        if cur.dd >= 0:
            bracket = [prev, cur]
            break
        t_next = cubic_minimizer(prev.t, prev.f, prev.dd, cur.t, cur.f, cur.dd,
                                 lo=cur.t + 0.01 * (cur.t - prev.t), hi=cur.t * 10)
        prev, cur = cur, at(t_next)
        trials += 1
    if found is None and bracket is None:
        bracket = [start, cur]  # out of evaluations while extrapolating

    # -- zoom: shrink the bracket around an acceptable point ---------------------------------------
    stalled = False  # the last trial landed too close to an end of the bracket
    lo_i = 0 if bracket is None or bracket[0].f <= bracket[1].f else 1
    message = ""
    while found is None and trials < max_evals:
        a, b = bracket
        if abs(b.t - a.t) * d_max < tolerance_change:
            message = f"bracket collapsed to width {abs(b.t - a.t):.3g} without meeting the Wolfe conditions"
            break
        t = cubic_minimizer(a.t, a.f, a.dd, b.t, b.f, b.dd)
        lo_t, hi_t = min(a.t, b.t), max(a.t, b.t)
        margin = 0.1 * (hi_t - lo_t)
        if min(hi_t - t, t - lo_t) < margin:  # too close to an end: move inside, unless first time
            if stalled or t >= hi_t or t <= lo_t:
                t = hi_t - margin if abs(t - hi_t) < abs(t - lo_t) else lo_t + margin
                stalled = False
            else:
                stalled = True
        else:
            stalled = False
        p = at(t)
        trials += 1
        hi_i = 1 - lo_i
        if armijo_fails(p) or p.f >= bracket[lo_i].f:
            bracket[hi_i] = p
        else:
            if curvature_ok(p):
                found = p
            elif p.dd * (bracket[hi_i].t - bracket[lo_i].t) >= 0:
                bracket[hi_i] = bracket[lo_i]
            bracket[lo_i] = p
        lo_i = 0 if bracket[0].f <= bracket[1].f else 1
    if found is not None:
        if bracket is not None:
            bracket[lo_i] = found
        best = found
    else:
        best = bracket[lo_i]
    ok = found is not None
    out_of_evals = not ok and not message
    if out_of_evals:
        message = f"no point meeting the strong Wolfe conditions (c1={c1}, c2={c2}) in {trials + 1} evaluations"
    return LineSearchResult(best.t, best.f, best.g, trials + 1, ok, "" if ok else message + f"; best t={best.t:.3g}",
                            out_of_evals)


#: names accepted by the optimizers' ``line_search`` argument
LINE_SEARCHES = ("strong_wolfe", "backtracking", None)
