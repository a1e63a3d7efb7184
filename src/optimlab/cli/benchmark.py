"""``optimlab benchmark``: optimizers across the lab's learning tasks, summarised as performance
profiles (AlgoPerf's rule: for each optimizer, the fraction of tasks on which it reaches the
target within tau times the fastest optimizer's time, tau from 1 to 4).

Each task's target is derived from the baselines on the validation set: the best, over the
optimizers run, of each one's median (over seeds) best validation result. With ``--tune N``
each optimizer first gets the same tuning budget -- N learning rates, log-spaced from a tenth
to ten times its given rate, on a tuning seed, the best validation result chosen -- and its
evaluation seeds then run at the chosen rate; without it the given configurations are the
baselines. Time to target is the time by which at least half of the seeds reached it (the
median for an odd number of seeds), in steps (or ``--unit seconds``).

    optimlab benchmark --task digits-mlp --task mnist1d-logreg --epochs 5
    optimlab benchmark --optimizers 'sgd:lr=0.1,momentum=0.9,adam:lr=1e-3' --tune 4 --seeds 3
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import sys

from ._common import environment, fail, help_texts, positive_int, writable_dir

DEFAULT_OPTIMIZERS = "sgd:lr=0.1,momentum=0.9,rmsprop:lr=1e-3,adam:lr=1e-3"
TUNE_SEED = 1000  # tuning runs use their own seed, never an evaluation seed
SHOWN_TAUS = (1.0, 1.5, 2.0, 3.0, 4.0)


def add_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="performance profiles of optimizers across the learning tasks",
                       **help_texts(__doc__))
    p.add_argument("--task", action="append", metavar="TASK",
                   help="task (repeatable; default: every built-in learning task -- see `optimlab tasks`), or your "
                        "own: module:function")
    p.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS, metavar="SPECS",
                   help=f"comma-separated optimizers as in `optimlab compare` (default {DEFAULT_OPTIMIZERS})")
    p.add_argument("--tune", type=int, default=0, metavar="N",
                   help="learning rates tried per optimizer and task (log-spaced, lr/10 to 10 lr) on a tuning seed "
                        "before the evaluation seeds; 0 (default): use the given rates")
    p.add_argument("--seeds", type=positive_int, default=3, metavar="N", help="evaluation seeds, 0..N-1 (default 3)")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="epochs per run (default: each task's budget)")
    p.add_argument("--unit", choices=["steps", "seconds"], default="steps", help="time to target in (default steps)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/benchmark/YYYYmmdd-HHMMSS)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="parallel runs (default: number of cores)")
    p.add_argument("--json", action="store_true", help="print the targets, times, ratios and profile as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _lr_grid(lr: float, n: int) -> list[float]:
    return [lr] if n == 1 else [lr * 10 ** (-1 + 2 * i / (n - 1)) for i in range(n)]


def _tuned(records, task, text, hib) -> float | None:
    """The learning rate whose tuning run had the best validation result (failed runs never win)."""
    best = None
    for r in records:
        if r["task"] != task or r["label"].rpartition("@lr=")[0] != text or r.get("error") or r.get("diverged"):
            continue
        v = r.get("best_val_metric")
        if v is not None and math.isfinite(v) and (best is None or (v > best[0] if hib else v < best[0])):
            best = (v, r["lr"])
    return best and best[1]


def run(args) -> int:
    from ..lab import grid, run_all
    from ..lab.profiles import TAUS, derive_targets, performance_profile, ratios, times_to_target
    from ..lab.runner import Interrupted, check_optimizer, split_optimizers
    from ..lab.tasks import BUILTIN_TASKS, TASKS, get_task

    try:
        if args.tune < 0:
            raise ValueError(f"--tune {args.tune}: give the number of learning rates to try (0: no tuning)")
        names = args.task or [n for n in TASKS if n in BUILTIN_TASKS and TASKS[n].kind == "learning"]
        tasks = {n: get_task(n) for n in names}
        texts = split_optimizers(args.optimizers)
        for text in texts:
            check_optimizer(text, names[0])
        out = writable_dir(args.out or os.path.join("runs", "benchmark", f"{datetime.datetime.now():%Y%m%d-%H%M%S}"))
    except (KeyError, ValueError, TypeError) as e:
        return fail("benchmark", e)
    path = os.path.join(out, "records.jsonl")
    show = not args.quiet
    try:
        lrs: dict[tuple[str, str], float | None] = {}
        if args.tune:
            specs = []
            for n in names:
                for text in texts:
                    specs += grid([n], [text], seeds=[TUNE_SEED], lrs=_lr_grid(_start_lr(text, tasks[n]), args.tune),
                                  epochs=args.epochs)
            tuning = run_all(specs, os.path.join(out, "tuning.jsonl"), workers=args.workers, progress=show)
            lrs = {(n, text): _tuned(tuning, tasks[n].name, text, tasks[n].higher_is_better)
                   for n in names for text in texts}
        specs = []
        for n in names:
            for text in texts:
                lr = lrs.get((n, text))
                for s in grid([n], [text], seeds=args.seeds, lrs=[lr] if lr else None, epochs=args.epochs):
                    specs.append(dataclasses.replace(s, label=text))
        records = run_all(specs, path, workers=args.workers, progress=show)
    except Interrupted as e:
        print(f"optimlab benchmark: interrupted; {e.saved}/{e.total} runs saved in {e.path}; run the same command "
              f"with --out {out} to finish", file=sys.stderr)
        return 130
    targets = derive_targets(records)
    times = times_to_target(records, targets, args.unit)
    rs = ratios(times)
    profile = performance_profile(times)
    summary = {"out": out, "unit": args.unit, "targets": targets, "times": times, "ratios": rs,
               "taus": list(TAUS), "profile": profile,
               "tuned_lr": {f"{n}|{t}": lr for (n, t), lr in lrs.items()}, **environment()}
    with open(os.path.join(out, "profile.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    from .. import plots

    fig = plots.performance_profile(profile, TAUS, title=f"Performance profile ({len(rs)} tasks, {args.seeds} seeds)")
    fig.savefig(os.path.join(out, "profile.png"), dpi=110)
    if args.json:
        print(json.dumps(summary, default=str))
        return 0
    _print(targets, times, rs, profile, texts, args.unit, tasks)
    print(f"\nrecords, profile.json and profile.png in {out}")
    return 0


def _start_lr(text: str, task) -> float:
    """The rate the tuning grid is centred on: the one given, the task's own for its default
    optimizer, else the optimizer's default."""
    from .. import registry
    from ..lab.runner import _task_hyper, parse_optimizer

    name, hyper = parse_optimizer(text)
    hyper = _task_hyper(task, name, hyper)
    return float(hyper.get("lr", registry._spec(name).defaults.get("lr", 1e-3)))


def _print(targets, times, rs, profile, texts, unit, tasks) -> None:
    width = max(12, *(len(t) for t in texts))
    print("targets (validation, from the baselines):")
    for n, t in tasks.items():
        if t.name in targets:
            print(f"  {t.name:<22} {t.metric_name.replace('test ', 'val ')} {'>=' if t.higher_is_better else '<='} "
                  f"{targets[t.name]:.4g}")
    print(f"\ntime to target ({unit}, reached by at least half the seeds) / ratio to the fastest:")
    print(f"  {'task':<22} " + " ".join(f"{t:>{width}}" for t in texts))
    for task, per in times.items():
        cells = [("never" if not math.isfinite(per.get(t, math.inf)) else f"{per[t]:.4g} ({rs[task][t]:.2f}x)")
                 for t in texts]
        print(f"  {task:<22} " + " ".join(f"{c:>{width}}" for c in cells))
    from ..lab.profiles import TAUS

    print("\nperformance profile: fraction of tasks within tau x the fastest")
    print(f"  {'optimizer':<{width}} " + " ".join(f"{'tau=' + format(t, 'g'):>8}" for t in SHOWN_TAUS))
    for t in texts:
        rho = profile.get(t, [0.0] * len(TAUS))
        print(f"  {t:<{width}} " + " ".join(f"{rho[TAUS.index(tau)]:>8.2f}" for tau in SHOWN_TAUS))
