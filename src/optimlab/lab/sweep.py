"""Learning-rate tools on the lab's tasks: the LR finder over seeds, and the LR sensitivity sweep.

* :func:`lr_find_task` runs :func:`optimlab.lr_finder.find_lr` on a task for one optimizer over
  several seeds (model initialisation and batch order change with the seed) and reports the
  suggestion (geometric mean over seeds) and its spread (largest / smallest).
* :func:`lr_sweep` follows DeepOBS's protocol (Schneider et al. 2019): per optimizer, a log grid
  of learning rates from 1e-5 to 1e2, a short training run at each, through the runner (records
  in a JSON Lines file, so a rerun only runs what is missing). Each optimizer's rows give the
  final and best training loss at every rate and whether the run diverged; the rates are named
  "too small" / "good" / "too large" (:func:`name_regions`).

Both take a task by name, as ``"module:function"``, or as a :class:`Task` (your own model and
data, :meth:`Task.from_data`).

Example::

    >>> found = lr_find_task("digits-mlp", "adam", seeds=3)
    >>> found.suggested_lr, found.spread
    >>> sweep = lr_sweep("digits-mlp", ["sgd", "adam"], per_decade=2, epochs=5)
    >>> sweep.best_lr, sweep.regions["adam"]
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from .. import registry
from ..lr_finder import DEFAULT_RULE, RULES, LRFinderResult, find_lr
from ..train import evaluate, steps_per_epoch
from .runner import grid, parse_optimizer, run_all
from .tasks import Task, get_task

__all__ = ["LRFindSummary", "lr_find_task", "log_grid", "SweepResult", "lr_sweep", "name_regions"]


# --- the finder on a task, over seeds -------------------------------------------------------------------
@dataclasses.dataclass
class LRFindSummary:
    """The finder over seeds: per rule the geometric mean of the seeds' suggestions and their
    spread (largest / smallest suggestion, 1.0 for one seed); ``suggested_lr`` is ``rule``'s."""

    task: str
    optimizer: str
    rule: str
    suggested_lr: float | None
    suggestions: dict[str, float | None]
    spread: dict[str, float | None]
    results: list[LRFinderResult]

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "optimizer": self.optimizer, "rule": self.rule, "suggested_lr": self.suggested_lr,
                "suggestions": self.suggestions, "spread": self.spread, "seeds": len(self.results),
                "per_seed": [r.suggestions for r in self.results],
                "diverged_at": [r.diverged_at for r in self.results]}

    def plot(self, ax=None, title: str | None = None):
        """Every seed's curve, with the suggestions over seeds marked."""
        from ..plots import lr_finder

        fig = None
        for i, r in enumerate(self.results):
            fig = lr_finder(r.lrs, r.losses, r.smoothed, self.suggestions if i == len(self.results) - 1 else None,
                            chosen=self.rule, diverged_at=r.diverged_at, ax=ax, label=f"seed {i} (smoothed)",
                            title=title or f"{self.task}, {self.optimizer}: LR range test")
            ax = ax or fig.axes[0]
        return fig


def _geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def _batch_size(task: Task, batch_size: int | None | str) -> int | None:
    return task.batch_size if batch_size == "task" else batch_size


def lr_find_task(task: str | Task, optimizer: str, seeds: int = 1, *, start: float = 1e-7, end: float = 100.0,
                 steps: int = 100, mode: str = "exp", smooth: float = 0.9, diverge_factor: float = 4.0,
                 batch_size: int | None | str = "task", rule: str = DEFAULT_RULE, **hyper: Any) -> LRFindSummary:
    """Run the LR finder on ``task`` (a name, ``"module:function"`` or a :class:`Task`) for ``optimizer`` (a registry name, or a string like
    ``"sgd:momentum=0.9"``; ``**hyper`` adds options) once per seed 0 .. seeds-1."""
    task = get_task(task)
    name, parsed = parse_optimizer(optimizer)
    extra = ",".join(f"{k}={v}" for k, v in hyper.items() if k != "lr")
    label = optimizer + ((("," if ":" in optimizer else ":") + extra) if extra else "")
    hyper = {**parsed, **hyper}
    hyper.pop("lr", None)  # the finder sets it
    if seeds < 1:
        raise ValueError(f"Invalid seeds: {seeds} (need at least 1)")
    results = []
    for seed in range(seeds):
        data = task.data(seed)
        model = task.model(seed)
        opt = registry.create(name, model.named_parameters(), **hyper)
        results.append(find_lr(model, opt, task.loss_fn(model), data.train, start=start, end=end, steps=steps,
                               mode=mode, smooth=smooth, diverge_factor=diverge_factor,
                               batch_size=_batch_size(task, batch_size), seed=seed, rule=rule))
    suggestions, spread = {}, {}
    for r in RULES:
        vals = [res.suggestions[r] for res in results if res.suggestions.get(r)]
        suggestions[r] = _geomean(vals)
        spread[r] = max(vals) / min(vals) if vals else None
    return LRFindSummary(task.name, label, rule, suggestions[rule], suggestions, spread, results)


# --- the sensitivity sweep -------------------------------------------------------------------------------
def log_grid(lo: float = 1e-5, hi: float = 1e2, per_decade: int = 5) -> list[float]:
    """Learning rates from ``lo`` to ``hi``, ``per_decade`` of them per factor of 10 (DeepOBS:
    1e-5 ... 1e2)."""
    if not 0 < lo < hi:
        raise ValueError(f"Invalid grid range: lo={lo}, hi={hi} (need 0 < lo < hi)")
    if per_decade < 1:
        raise ValueError(f"Invalid per_decade: {per_decade} (need at least 1)")
    n = round(math.log10(hi / lo) * per_decade)
    return [float(f"{lo * 10 ** (i / per_decade):.3g}") for i in range(n + 1)]


@dataclasses.dataclass
class SweepResult:
    """Per optimizer: the grid's rows (one per learning rate, sorted), the best learning rate
    (lowest final training loss among runs that did not diverge) and the named regions
    (``{"too small": [lo, hi], "good": [...], "too large": [...]}``, ``None`` where empty)."""

    task: str
    epochs: int
    rows: dict[str, list[dict[str, Any]]]
    best_lr: dict[str, float | None]
    regions: dict[str, dict[str, list[float] | None]]
    records: str

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "epochs": self.epochs, "best_lr": self.best_lr, "regions": self.regions,
                "grid": self.rows, "records": self.records}

    def plot(self, ax=None, title: str | None = None):
        from ..plots import lr_sensitivity

        return lr_sensitivity(self.rows, self.best_lr, ax=ax,
                              title=title or f"{self.task}: learning-rate sensitivity ({self.epochs} epochs)")


def name_regions(rows: list[dict[str, Any]], good: float = 0.9) -> tuple[float | None, dict]:
    """Name every row's region (in place) and return ``(best_lr, {region: [lo, hi]})``.

    * best: the lowest final loss among runs that did not diverge;
    * "good": did not diverge, and took the loss down by at least ``good`` (90 %) of the best
      run's drop from the initial loss -- a drop, not a ratio of losses, because a loss bounded
      far from 0 (regularised logistic regression) puts every rate within 2x of the best;
    * "too small": below the best rate and not good: the loss moved too little;
    * "too large": above the best rate and not good: diverged, ended above the initial loss, or
      clearly short of the best;
    * "failed": every run at that rate raised (in no region).
    """
    fine = [r for r in rows if not r["diverged"] and r["final_loss"] is not None and math.isfinite(r["final_loss"])]
    best = min(fine, key=lambda r: r["final_loss"], default=None)
    regions: dict[str, list[float] | None] = {"too small": None, "good": None, "too large": None}
    for r in rows:
        if not r["diverged"] and r["final_loss"] is None:  # every run raised: see r["errors"]
            r["region"] = "failed"
            continue
        if best is not None and r in fine and (r["initial_loss"] - r["final_loss"]
                                               >= good * (best["initial_loss"] - best["final_loss"])):
            r["region"] = "good"
        elif best is not None and r["lr"] < best["lr"]:
            r["region"] = "too small"
        else:
            r["region"] = "too large"
        span = regions[r["region"]]
        regions[r["region"]] = [min(span[0], r["lr"]), max(span[1], r["lr"])] if span else [r["lr"], r["lr"]]
    return (best["lr"] if best else None), regions


def _initial_loss(task: Task, seed: int) -> float:
    """The training loss of the untrained model (the reference for "did it learn at all")."""
    data = task.data(seed)
    model = task.model(seed)
    return evaluate(model, task.loss_fn(model), data.train)[0]


def _row(lr: float, recs: list[dict[str, Any]], initial: float, budget: int) -> dict[str, Any]:
    """One learning rate's result over seeds (medians over the runs the runner did not stop).

    ``diverged``: a run was stopped by the runner (its loss became non-finite or exploded), or
    the final loss ended more than 10 % above the initial one -- on a loss that grows only
    linearly, such as logistic regression's, a far too large rate oscillates with growing loss
    without ever exploding. (The margin keeps a rate too small to move the loss, whose last
    epoch is a little above the start by noise, from counting as diverged.)
    ``stopped_early``: a run was stopped before its budget of ``budget_steps``."""
    ok = [r for r in recs if not r.get("error") and not r.get("diverged") and r.get("final_train_loss") is not None]
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    best = [min(e["train_loss"] for e in r["epochs_log"]) for r in ok if r.get("epochs_log")]
    final = med([r["final_train_loss"] for r in ok])
    stopped = any(r.get("diverged") for r in recs)
    steps = max((r.get("steps") or 0 for r in recs), default=0)
    return {
        "lr": lr,
        "final_loss": final,
        "best_loss": med(best),
        "initial_loss": initial,
        "diverged": stopped or (final is not None and (not math.isfinite(final)
                                                      or final - initial > 0.1 * abs(initial))),
        "stopped_early": stopped and steps < budget,
        "steps": steps,
        "budget_steps": budget,
        "val_metric": med([r["final_val_metric"] for r in ok if r.get("final_val_metric") is not None]),
        "reached_target": sum(r.get("steps_to_target") is not None for r in recs),
        "seeds": len(recs),
        "errors": [r["error"] for r in recs if r.get("error")],
        "messages": sorted({r["message"] for r in recs if r.get("message")}),
    }


def lr_sweep(task: str | Task, optimizers: Sequence[str], lrs: Sequence[float] | None = None, *, per_decade: int = 5,
             lo: float = 1e-5, hi: float = 1e2, epochs: int | None = None, seeds: int = 1,
             batch_size: int | None | str = "task", workers: int | None = None,
             path: str = os.path.join("runs", "lr-sweep", "records.jsonl"), good: float = 0.9,
             progress: bool = False, executor=None) -> SweepResult:
    """Train every optimizer at every learning rate of ``lrs`` (default :func:`log_grid` of
    ``lo``..``hi`` with ``per_decade``) for ``epochs`` (default: a quarter of the task's budget)
    over ``seeds``; runs are recorded in ``path`` and skipped when already there. ``task``: a
    name, a ``"module:function"`` reference or a :class:`Task`. ``executor``: where the runs
    execute, as for :func:`run_all` (``"ray"``: on Ray)."""
    t = get_task(task)
    lrs = sorted(lrs) if lrs is not None else log_grid(lo, hi, per_decade)
    epochs = epochs or max(1, t.epochs // 4)
    specs_by_opt = {}
    for text in optimizers:
        _, hyper = parse_optimizer(text)
        if "lr" in hyper:
            raise ValueError(f"the sweep sets the learning rate: drop lr= from {text!r}")
        specs_by_opt[text] = grid([task], [text], seeds=seeds, lrs=lrs, epochs=epochs, batch_size=batch_size)
    records = run_all([s for ss in specs_by_opt.values() for s in ss], path, workers=workers, progress=progress,
                      executor=executor)
    by_key = {r["key"]: r for r in records}
    budget = epochs * steps_per_epoch(len(t.data(0).train[0]), _batch_size(t, batch_size))
    initial = statistics.median(_initial_loss(t, s) for s in range(seeds))
    rows, best_lr, regions = {}, {}, {}
    for text, specs in specs_by_opt.items():
        rows[text] = []
        for lr in lrs:
            recs = [by_key[s.key] for s in specs if dict(s.hyper)["lr"] == lr and s.key in by_key]
            rows[text].append(_row(lr, recs, initial, budget))
        best_lr[text], regions[text] = name_regions(rows[text], good)
    return SweepResult(t.name, epochs, rows, best_lr, regions, path)

