"""Pure analysis of run records: per-optimizer summaries over seeds, and a plain-language
verdict on "Adam converges faster and generalizes better than SGD/GD".

Everything here is a function of the records (dicts from :mod:`optimlab.lab.runner`); nothing
trains, nothing plots.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

__all__ = ["summarize", "verdict", "format_table"]

ADAM_FAMILY = {"adam", "adamw", "nadam", "radam", "adamax"}
PLAIN_GD = {"sgd"}


def _mean_sd(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, label): means and spreads over seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["label"])].append(r)
    rows = []
    for (task, label), rs in groups.items():
        ok = [r for r in rs if not r.get("error")]
        fine = [r for r in ok if not r.get("diverged")]
        test_m, test_sd = _mean_sd([r.get("test_metric") for r in fine])
        reached = [r for r in fine if r.get("steps_to_target") is not None]
        steps = sorted(r["steps_to_target"] for r in reached)
        secs = sorted(r["seconds_to_target"] for r in reached)
        gap_m, _ = _mean_sd([(r.get("final_val_loss") or 0) - (r.get("final_train_loss") or 0) for r in fine
                             if r.get("final_val_loss") is not None and r.get("final_train_loss") is not None])
        first = (ok or rs)[0]
        rows.append({
            "task": task, "label": label, "optimizer": first["optimizer"], "lr": first.get("lr"),
            "runs": len(rs), "errors": len(rs) - len(ok), "diverged": len(ok) - len(fine),
            "metric": first.get("metric"), "higher_is_better": first.get("higher_is_better", True),
            "target": first.get("target"),
            "test_metric": test_m, "test_metric_sd": test_sd,
            "best_val_metric": _mean_sd([r.get("best_val_metric") for r in fine])[0],
            "final_train_loss": _mean_sd([r.get("final_train_loss") for r in fine])[0],
            "generalization_gap": gap_m,
            "reached": len(reached), "steps_to_target": statistics.median(steps) if steps else None,
            "seconds_to_target": statistics.median(secs) if secs else None,
            "seconds": _mean_sd([r.get("seconds") for r in fine])[0],
            "messages": sorted({r["message"] for r in ok if r.get("message")} | {r["error"] for r in rs if r.get("error")}),
        })
    rows.sort(key=lambda r: (r["task"], r["label"]))
    return rows


def _fmt(x, pct=False, digits=4):
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of summary rows."""
    head = ["task", "optimizer", "lr", "test metric", "best val", "train loss", "steps->target", "s->target",
            "reached", "diverged"]
    lines = [head]
    for r in rows:
        pct = r["metric"] is not None and "accuracy" in r["metric"]
        test = _fmt(r["test_metric"], pct) + (f" ± {_fmt(r['test_metric_sd'], pct)}" if r["test_metric_sd"] else "")
        lines.append([r["task"], r["label"], _fmt(r["lr"]), test, _fmt(r["best_val_metric"], pct),
                      _fmt(r["final_train_loss"]), _fmt(r["steps_to_target"]), _fmt(r["seconds_to_target"], digits=3),
                      f"{r['reached']}/{r['runs']}", str(r["diverged"] + r["errors"])])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _pick(rows, family):
    cands = [r for r in rows if r["optimizer"] in family and r["runs"] > r["errors"]]
    if not cands:
        return None
    # the best of the family on the test metric (fair: each side gets its best configuration)
    sign = 1 if cands[0]["higher_is_better"] else -1
    return max(cands, key=lambda r: sign * (r["test_metric"] if r["test_metric"] is not None else -sign * math.inf))


def verdict(rows: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """Does "Adam converges faster and generalizes better than SGD/GD" hold on ``task``?

    *Faster*: fewer median steps to the task's target (a run that never reaches it counts as
    never). *Generalizes better*: a better test metric by more than the seeds' spread (the
    larger of the two standard deviations; with one seed, any difference is reported as
    inconclusive). Returns the verdict and the sentences that justify it.
    """
    rows = [r for r in rows if r["task"] == task]
    adam, sgd = _pick(rows, ADAM_FAMILY), _pick(rows, PLAIN_GD)
    if adam is None or sgd is None:
        return {"task": task, "verdict": "not tested", "text": [
            "The comparison needs an Adam-family optimizer and SGD/GD on this task."]}
    text = []
    a_name, s_name = adam["label"], sgd["label"]

    # converges faster?
    def reach(r):
        return f"{r['reached']}/{r['runs']} seeds" + (f", median {r['steps_to_target']:g} steps" if r["reached"] else "")

    target = adam["target"]
    if adam["reached"] == 0 and sgd["reached"] == 0:
        faster = None
        text.append(f"Neither {a_name} nor {s_name} reached the target ({target:g}) within the budget.")
    elif adam["reached"] > sgd["reached"] and (adam["reached"] == adam["runs"] or sgd["reached"] == 0):
        faster = True
        text.append(f"{a_name} reached the target ({target:g}) in {reach(adam)}; {s_name} in {reach(sgd)}.")
    elif sgd["reached"] > adam["reached"] and (sgd["reached"] == sgd["runs"] or adam["reached"] == 0):
        faster = False
        text.append(f"{s_name} reached the target ({target:g}) in {reach(sgd)}; {a_name} in {reach(adam)}.")
    else:
        ratio = sgd["steps_to_target"] / adam["steps_to_target"]
        faster = ratio > 1.0
        who, by = (a_name, ratio) if faster else (s_name, 1 / ratio)
        text.append(f"Both reached the target ({target:g}): {a_name} in {reach(adam)}, {s_name} in {reach(sgd)} "
                    f"— {who} was {by:.2g}x faster in steps.")

    # generalizes better?
    hib = adam["higher_is_better"]
    pct = adam["metric"] is not None and "accuracy" in adam["metric"]
    if adam["test_metric"] is None or sgd["test_metric"] is None:
        better = None
        text.append("No test result to compare (a run diverged or failed on every seed).")
    else:
        diff = (adam["test_metric"] - sgd["test_metric"]) * (1 if hib else -1)
        spread = max(adam["test_metric_sd"] or 0.0, sgd["test_metric_sd"] or 0.0)
        a_txt = f"{_fmt(adam['test_metric'], pct)} ± {_fmt(adam['test_metric_sd'], pct)}"
        s_txt = f"{_fmt(sgd['test_metric'], pct)} ± {_fmt(sgd['test_metric_sd'], pct)}"
        seeds = min(adam["runs"], sgd["runs"])
        if seeds < 2 or abs(diff) <= spread:
            better = None
            text.append(f"{adam['metric']}: {a_name} {a_txt} vs {s_name} {s_txt} over {seeds} seed(s): "
                        "the difference is within the spread across seeds — no clear winner.")
        else:
            better = diff > 0
            text.append(f"{adam['metric']}: {a_name} {a_txt} vs {s_name} {s_txt} over {seeds} seeds: "
                        f"{a_name if better else s_name} generalizes better.")
    if faster is True and better is True:
        v = "holds"
    elif faster is False and better is False:
        v = "does not hold"
    elif faster is None and better is None:
        v = "inconclusive"
    else:
        parts = {True: "yes", False: "no", None: "unclear"}
        v = f"partly (faster: {parts[faster]}; generalizes better: {parts[better]})"
    return {"task": task, "verdict": v, "faster": faster, "generalizes_better": better, "adam": a_name, "sgd": s_name,
            "text": text}
