"""Plots. The only module that imports matplotlib, and only inside the functions (Agg backend,
so it works without a display). Each function takes an optional ``ax`` and returns the figure.

    >>> fig = loss_curves(records)            # training loss vs step, mean and seed band
    >>> fig.savefig("loss.png")
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from .lr_finder import smooth_losses

__all__ = ["loss_curves", "metric_curves", "train_val_curves", "sweep_gap", "time_to_target", "trajectories",
           "lr_finder", "lr_sensitivity", "diagnostics", "performance_profile"]


def _axes(ax, figsize=(6.4, 4.2)):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax.figure, ax


def _finish(ax, xlabel: str, ylabel: str, title: str | None = None):
    """Label the axes and title (the y label if no title), legend and grid; return the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax.figure


def _by_label(records):
    out: dict[str, list] = defaultdict(list)
    for r in records:
        if not r.get("error"):
            out[r["label"]].append(r)
    return out


def _band(ax, xs_list, ys_list, label, color=None):
    """Mean line and min-max band over seeds, on a common x grid."""
    xs_list = [np.asarray(x, float) for x in xs_list if len(x)]
    ys_list = [np.asarray(y, float) for y in ys_list if len(y)]
    if not xs_list:
        return
    grid = np.unique(np.concatenate(xs_list))
    ys = np.array([np.interp(grid, x, y, right=np.nan) for x, y in zip(xs_list, ys_list)])
    with np.errstate(all="ignore"):
        mean, lo, hi = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
    (line,) = ax.plot(grid, mean, label=f"{label} ({len(ys_list)} seeds)" if len(ys_list) > 1 else label, color=color)
    if len(ys_list) > 1:
        ax.fill_between(grid, lo, hi, alpha=0.2, color=line.get_color(), linewidth=0)


def loss_curves(records: list[dict[str, Any]], ax=None, title: str | None = None, log: bool = True,
                smooth: float = 0.8):
    """Training loss against optimizer steps, one line per optimizer (mean, min-max band over
    seeds; per-batch losses smoothed by an EMA with factor ``smooth``, 0 for none); diverged
    runs end where they diverged and are marked with an x."""
    fig, ax = _axes(ax)
    for label, rs in sorted(_by_label(records).items()):
        curves = [[p for p in r.get("curve") or [] if p[1] is not None] for r in rs]
        _band(ax, [[p[0] for p in c] for c in curves], [smooth_losses([p[1] for p in c], smooth) for c in curves], label)
        for r in rs:
            if r.get("diverged") and r.get("curve"):
                ax.plot(r["curve"][-1][0], r["curve"][-1][1] or ax.get_ylim()[1], "x", color="red")
    if log:
        ax.set_yscale("log")
    ylabel = "training loss (per batch, smoothed)" if smooth else "training loss (per batch)"
    return _finish(ax, "optimizer steps", ylabel, title or "Training loss")


def metric_curves(records: list[dict[str, Any]], ax=None, key: str = "val_metric", title: str | None = None):
    """A per-epoch quantity (validation metric by default) against steps, with seed bands;
    the task's target as a dashed line."""
    fig, ax = _axes(ax)
    target = None
    metric = next((r["metric"] for r in records if r.get("metric")), "metric")  # also when every run failed
    for label, rs in sorted(_by_label(records).items()):
        logs = [[e for e in r.get("epochs_log") or [] if e.get(key) is not None] for r in rs]
        _band(ax, [[e["step"] for e in lg] for lg in logs], [[e[key] for e in lg] for lg in logs], label)
        target = rs[0].get("target", target)
    if target is not None and key == "val_metric":
        ax.axhline(target, ls="--", color="gray", lw=1, label=f"target {target:g}")
    ylabel = key.replace("_", " ") if key != "val_metric" else f"validation {metric.replace('test ', '')}"
    return _finish(ax, "optimizer steps", ylabel, title)


def train_val_curves(records: list[dict[str, Any]], ax=None, key: str = "loss", title: str | None = None):
    """Training (dashed) and validation (solid) loss -- or metric, ``key="metric"`` -- against
    steps, measured at the same evaluation points (the runs' ``train_eval_*`` and ``val_*``),
    one colour per optimizer, mean and min-max band over seeds: the gap between the two lines
    is the generalization gap."""
    fig, ax = _axes(ax)
    train_key, val_key = f"train_eval_{key}", f"val_{key}"
    for i, (label, rs) in enumerate(sorted(_by_label(records).items())):
        for k, style, what in ((val_key, "-", "validation"), (train_key, "--", "training")):
            logs = [[e for e in r.get("epochs_log") or [] if e.get(k) is not None] for r in rs]
            before = len(ax.lines)
            _band(ax, [[e["step"] for e in lg] for lg in logs], [[e[k] for e in lg] for lg in logs],
                  f"{label} {what}", color=f"C{i % 10}")
            for line in ax.lines[before:]:
                line.set_linestyle(style)
    if key == "loss":
        ax.set_yscale("log")
    metric = next((r["metric"] for r in records if r.get("metric")), "metric").replace("test ", "")
    return _finish(ax, "optimizer steps", f"{metric if key == 'metric' else 'loss'}: validation (solid), training (dashed)",
                   title or "Training vs validation")


def sweep_gap(rows: list[dict[str, Any]], ax=None, title: str | None = None):
    """A regularization sweep (summary rows of phase ``"sweep"``): the generalization gap
    (validation − training loss at the end) against the swept value, per optimizer, with its
    95% interval over seeds; symlog x so that 0 shows."""
    fig, ax = _axes(ax)
    groups: dict[str, list] = defaultdict(list)
    for r in rows:
        if r.get("phase") == "sweep" and r.get("generalization_gap") is not None:
            groups[r.get("base") or r["optimizer"]].append(r)
    key = "value"
    for i, (base, rs) in enumerate(sorted(groups.items())):
        rs.sort(key=lambda r: r["sweep_value"])
        key = rs[0]["sweep_key"]
        xs, ys = [r["sweep_value"] for r in rs], [r["generalization_gap"] for r in rs]
        err = [[y - (r["generalization_gap_ci"] or [y, y])[0] for y, r in zip(ys, rs)],
               [(r["generalization_gap_ci"] or [y, y])[1] - y for y, r in zip(ys, rs)]]
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, color=f"C{i % 10}", label=base)
    positive = [r["sweep_value"] for rs in groups.values() for r in rs if r["sweep_value"] > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.axhline(0, color="gray", lw=0.8)
    return _finish(ax, key, "validation − training loss (95% CI)", title or f"Generalization gap vs {key}")


def time_to_target(records: list[dict[str, Any]], ax=None, unit: str = "steps", title: str | None = None):
    """Steps (or seconds) to reach the task's target per optimizer: one dot per seed, a bar
    for the median; runs that never reached it are counted in the label."""
    fig, ax = _axes(ax)
    key = "steps_to_target" if unit == "steps" else "seconds_to_target"
    labels = sorted(_by_label(records))
    for i, label in enumerate(labels):
        rs = _by_label(records)[label]
        vals = [r[key] for r in rs if r.get(key) is not None]
        if vals:
            ax.bar(i, float(np.median(vals)), color=f"C{i}", alpha=0.5)
            ax.plot([i] * len(vals), vals, "o", color=f"C{i}")
        missed = len(rs) - len(vals)
        if missed:
            ax.text(i, 0, f"{missed} not\nreached", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"{unit} to target")
    ax.set_title(title or f"Time to target ({unit}; lower is better)")
    ax.grid(alpha=0.3, axis="y")
    return fig


def trajectories(function, paths: dict[str, np.ndarray], ax=None, title: str | None = None):
    """Paths of several optimizers over a 2-D test function's (log-scaled) contour plot."""
    import torch

    fig, ax = _axes(ax, figsize=(6.4, 5.2))
    (x0, x1), (y0, y1) = function.bounds
    xs, ys = np.linspace(x0, x1, 300), np.linspace(y0, y1, 300)
    gx, gy = np.meshgrid(xs, ys)
    pts = torch.tensor(np.stack([gx, gy]), dtype=torch.float64)
    z = function.f(pts).numpy() - function.f_min
    levels = np.logspace(math.log10(max(z.min(), 1e-3) + 1e-3), math.log10(z.max() + 1e-3), 25)
    ax.contour(gx, gy, z + 1e-3, levels=levels, cmap="Greys", linewidths=0.6, alpha=0.7)
    for label, path in paths.items():
        path = np.asarray(path)
        ok = np.isfinite(path).all(1)
        ax.plot(path[ok, 0], path[ok, 1], "-", lw=1.4, label=label, alpha=0.9)
        ax.plot(path[ok][-1:, 0], path[ok][-1:, 1], "o", ms=4, color=ax.lines[-1].get_color())
    for m in function.minima:
        ax.plot(*m, "*", color="gold", ms=14, mec="k")
    ax.plot(*function.start, "s", color="k", ms=6)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_title(title or f"{function.name}: optimizer trajectories")
    ax.legend(fontsize=8, loc="best")
    return fig


def lr_finder(lrs, losses, smoothed=None, suggestions: dict[str, float | None] | None = None, chosen: str | None = None,
              diverged_at: float | None = None, ax=None, title: str | None = None, label: str | None = None):
    """The LR range test: loss against learning rate (log x), raw per batch (faint) and smoothed,
    each rule's suggestion as a vertical line (the chosen one solid), the stop on divergence as x.
    Call it again with the same ``ax`` (and no suggestions) to overlay another seed."""
    fig, ax = _axes(ax)
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    ok = np.isfinite(losses)
    (raw,) = ax.plot(lrs[ok], losses[ok], lw=0.8, alpha=0.35)
    if smoothed is not None:
        sm = np.asarray(smoothed, float)
        fine = np.isfinite(sm)
        ax.plot(lrs[fine], sm[fine], lw=1.8, color=raw.get_color(), label=label or "smoothed loss")
        # the y range follows the smoothed curve: the raw tail after divergence would flatten it
        if fine.any():
            lo, hi = sm[fine].min(), sm[fine][0]
            ax.set_ylim(lo - 0.1 * (hi - lo + 1e-12), max(sm[fine].max(), hi) + 0.1 * (hi - lo + 1e-12))
    for i, (rule, lr) in enumerate((suggestions or {}).items()):
        if lr is not None:  # colours C6.. so they do not repeat the curves' C0, C1, ...
            mine = rule == chosen
            ax.axvline(lr, color="k" if mine else f"C{6 + i % 4}", ls="-" if mine else "--", lw=1.6 if mine else 1,
                       label=f"{rule}: {lr:.3g}" + (" (chosen)" if mine else ""))
    if diverged_at is not None:
        ends = [v for v in (smoothed if smoothed is not None else losses)[::-1] if math.isfinite(v)]
        ax.plot(diverged_at, ends[0] if ends else ax.get_ylim()[1], "x", color="red", ms=9, mew=2,
                label=f"stopped (diverging) at {diverged_at:.3g}")
    ax.set_xscale("log")
    return _finish(ax, "learning rate", "training loss (per batch)", title or "LR range test")


def lr_sensitivity(results: dict[str, list[dict[str, Any]]], best_lr: dict[str, float | None] | None = None,
                   ax=None, title: str | None = None):
    """LR sensitivity sweep: final (solid) and best (dotted) training loss against learning rate
    per optimizer (log-log); diverged runs as x above the curves; each optimizer's best rate as a star."""
    fig, ax = _axes(ax)
    tops = [r[k] for rows in results.values() for r in rows for k in ("final_loss", "best_loss")
            if not r.get("diverged") and r.get(k) is not None and math.isfinite(r[k])]
    top = 2 * max(tops, default=1.0)
    for i, (label, rows) in enumerate(sorted(results.items())):
        rows = sorted(rows, key=lambda r: r["lr"])
        ok = [r for r in rows if not r.get("diverged") and r.get("final_loss") is not None]
        ax.plot([r["lr"] for r in ok], [r["final_loss"] for r in ok], "o-", color=f"C{i}", label=f"{label} final")
        ax.plot([r["lr"] for r in ok if r.get("best_loss") is not None],
                [r["best_loss"] for r in ok if r.get("best_loss") is not None], ":", color=f"C{i}", lw=1.2)
        bad = [r for r in rows if r.get("diverged")]
        if bad:
            ax.plot([r["lr"] for r in bad], [top] * len(bad), "x", color=f"C{i}", ms=9, mew=2)
        best = (best_lr or {}).get(label)
        hit = [r for r in ok if best is not None and r["lr"] == best]
        if hit:
            ax.plot(best, hit[0]["final_loss"], "*", color=f"C{i}", ms=15, mec="k")
    ax.set_xscale("log")
    ax.set_yscale("log")
    return _finish(ax, "learning rate", "training loss: final (solid), best (dotted); x diverged",
                   title or "Learning-rate sensitivity")


def diagnostics(records: list[dict[str, Any]], fig=None, title: str | None = None):
    """Optimizer diagnostics over training (the runs' ``diagnostics`` rows, group 0): gradient
    norm, update/parameter ratio and -- for adaptive methods -- the median effective learning
    rate, per optimizer (mean and seed band), on three log-scale panels."""
    if fig is None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, _ = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    panels = (("grad_norm", "gradient norm"), ("update_ratio", "update / parameter norm"),
              ("effective_lr", "effective lr (median)"))
    for ax, (key, label) in zip(fig.axes, panels):
        for i, (name, rs) in enumerate(sorted(_by_label(records).items())):
            rows = [[d for d in r.get("diagnostics") or [] if d.get("group", 0) == 0 and d.get(key) is not None]
                    for r in rs]
            _band(ax, [[d["step"] for d in ds] for ds in rows], [[d[key] for d in ds] for ds in rows], name, f"C{i}")
        ax.set_yscale("log")
        _finish(ax, "step", label, label)
    if title:
        fig.suptitle(title)
    return fig


def performance_profile(profile: dict[str, list[float]], taus, ax=None, title: str | None = None):
    """Performance profiles (Dolan & Moré; AlgoPerf): per optimizer, the fraction of tasks on
    which it reaches the target within tau times the fastest optimizer's time."""
    fig, ax = _axes(ax)
    for i, (name, rho) in enumerate(sorted(profile.items())):
        ax.step(list(taus), rho, where="post", label=name, color=f"C{i}")
    ax.set_ylim(-0.02, 1.02)
    return _finish(ax, "tau (time to target / fastest time)", "fraction of tasks",
                   title or "Performance profile")
