"""Performance profiles across tasks (Dolan & Moré 2002, as AlgoPerf uses them: Dahl et al. 2023).

For each task a **target** is fixed on the validation set from the baselines: per optimizer,
the best validation result that at least half of its seeds reach (the median for an odd
number of seeds); the task's target is the best of those (:func:`derive_targets`). Each
optimizer's **time to target** on a task is the time by which at least half of its seeds have
reached the target (again the median for an odd count): the first step (or second) at which a
seed's validation result reaches it, infinite for a seed that never does -- so an optimizer
that reaches it in fewer than half of its seeds has an infinite time (:func:`times_to_target`). The **ratio** is that time over
the fastest optimizer's on the task, and the **profile** of an optimizer is, for each ``tau``,
the fraction of tasks on which its ratio is at most ``tau`` (:func:`performance_profile`):
``rho(1)`` is how often it is the fastest, ``rho(4)`` how often it is within 4x of the fastest.

Pure functions on the lab's run records (``task``, ``label``, ``seed``, ``epochs_log`` with
``step``, ``seconds``, ``val_metric``/``val_loss``, ``higher_is_better``), so they can be checked
on records built by hand.

Example::

    >>> targets = derive_targets(records)
    >>> times = times_to_target(records, targets)
    >>> profile = performance_profile(times)          # {optimizer: [rho(tau) for tau in TAUS]}
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

__all__ = ["TAUS", "derive_targets", "first_reach", "times_to_target", "ratios", "performance_profile"]

TAUS = tuple(1 + 0.25 * i for i in range(13))  # 1, 1.25, ..., 4


def _val_key(record: dict[str, Any]) -> str:
    """The validation number a record's target is about: the metric, or the loss without one."""
    log = record.get("epochs_log") or []
    return "val_metric" if any(e.get("val_metric") is not None for e in log) else "val_loss"


def _hib(record: dict[str, Any]) -> bool:
    return bool(record.get("higher_is_better", True)) if _val_key(record) == "val_metric" else False


def _ok(record: dict[str, Any]) -> bool:
    return not record.get("error") and not record.get("diverged")


def _best_val(record: dict[str, Any]) -> float | None:
    key, hib = _val_key(record), _hib(record)
    vals = [e[key] for e in record.get("epochs_log") or [] if e.get(key) is not None and math.isfinite(e[key])]
    return (max(vals) if hib else min(vals)) if vals else None


def _half(values: list[float], best_first: bool) -> float:
    """The value at least half of ``values`` reach: the ceil(n/2)-th best (the median for odd n)."""
    return sorted(values, reverse=best_first)[math.ceil(len(values) / 2) - 1]


def derive_targets(records: list[dict[str, Any]], baselines: list[str] | None = None) -> dict[str, float]:
    """Per task: the best, over the ``baselines`` (labels; default every optimizer run), of the
    best validation result that at least half of each one's seeds reach. A failed seed
    (diverged, error) counts as the worst possible result, so a baseline that fails in more
    than half of its seeds sets no target."""
    by: dict[tuple[str, str], list[float]] = defaultdict(list)
    hib_of: dict[str, bool] = {}
    for r in records:
        if baselines is not None and r["label"] not in baselines:
            continue
        hib = _hib(r)
        hib_of[r["task"]] = hib
        best = _best_val(r) if _ok(r) else None
        by[(r["task"], r["label"])].append(best if best is not None else (-math.inf if hib else math.inf))
    targets: dict[str, float] = {}
    for (task, _), vals in by.items():
        hib = hib_of[task]
        m = _half(vals, best_first=hib)
        if not math.isfinite(m):
            continue
        if task not in targets or (m > targets[task] if hib else m < targets[task]):
            targets[task] = m
    return targets


def first_reach(record: dict[str, Any], target: float, unit: str = "steps") -> float | None:
    """The first evaluation's step (``unit="steps"``) or training seconds (``"seconds"``) at
    which ``record``'s validation result reaches ``target``; ``None`` if it never does (or the
    run failed)."""
    if unit not in ("steps", "seconds"):
        raise ValueError(f"unit={unit!r}: 'steps' or 'seconds'")
    if not _ok(record):
        return None
    key, hib = _val_key(record), _hib(record)
    for e in record.get("epochs_log") or []:
        v = e.get(key)
        if v is not None and math.isfinite(v) and (v >= target if hib else v <= target):
            return float(e["step" if unit == "steps" else "seconds"])
    return None


def times_to_target(records: list[dict[str, Any]], targets: dict[str, float],
                    unit: str = "steps") -> dict[str, dict[str, float]]:
    """``{task: {optimizer label: the time by which at least half of its seeds reached the
    target}}`` (the median for an odd number of seeds); a seed that never reaches it is
    infinitely slow, so the time is infinite when more than half fail. Tasks without a target
    are left out."""
    by: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        if r["task"] not in targets:
            continue
        t = first_reach(r, targets[r["task"]], unit)
        by[(r["task"], r["label"])].append(math.inf if t is None else t)
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (task, label), ts in by.items():
        out[task][label] = _half(ts, best_first=False) if ts else math.inf
    return dict(out)


def ratios(times: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``time / fastest time`` per task and optimizer (``inf`` where it never reaches, or where
    no optimizer does). A zero time (reached at the first evaluation) counts as one step."""
    out = {}
    for task, per in times.items():
        best = min(per.values(), default=math.inf)
        out[task] = {k: (max(t, 1e-12) / max(best, 1e-12) if math.isfinite(t) and math.isfinite(best) else math.inf)
                     for k, t in per.items()}
    return out


def performance_profile(times: dict[str, dict[str, float]], taus=TAUS) -> dict[str, list[float]]:
    """``{optimizer: [fraction of tasks with ratio <= tau, for tau in taus]}`` over every task in
    ``times``; an optimizer not run on a task counts as not reaching it there."""
    rs = ratios(times)
    labels = list(dict.fromkeys(k for per in rs.values() for k in per))
    n = len(rs)
    if n == 0:
        return {k: [0.0] * len(taus) for k in labels}
    return {k: [sum(per.get(k, math.inf) <= tau * (1 + 1e-12) for per in rs.values()) / n for tau in taus]
            for k in labels}
