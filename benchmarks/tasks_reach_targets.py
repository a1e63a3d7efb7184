"""Does every lab task reach its target with its default optimizer within its default budget?

Runs each task (full budget, the task's default optimizer and learning rate) over a few seeds
on a local process pool. Targets are defined on the **validation** set (what selection and
time-to-target read), so that is what is checked: a task passes when every seed's validation
metric reaches the target at some evaluation. The table also shows the test metric, and for
the tasks with a published number (MNIST-1D, Greydanus 2020) the paper's. CI runs shortened
versions of the long tasks (tests/test_lab.py); this script checks the real budgets.

    python benchmarks/tasks_reach_targets.py                    # every task, 2 seeds
    python benchmarks/tasks_reach_targets.py --task mnist1d-cnn --seeds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from optimlab.lab import grid, run_all
from optimlab.lab.tasks import MNIST1D_PAPER, TASKS


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.fmean(xs):.4g}" + (f" ± {statistics.stdev(xs):.2g}" if len(xs) > 1 else " (1 seed)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", action="append", help="task(s); default: all")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    names = args.task or list(TASKS)
    specs = [s for n in names for s in grid([n], [f"{TASKS[n].optimizer}:lr={TASKS[n].lr}"], seeds=args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        records = run_all(specs, os.path.join(tmp, "r.jsonl"), workers=args.workers, progress=True)
    failed = 0
    print(f"{'task':<22} {'best val (mean ± sd)':<22} {'target':<10} {'reached':<8} {'test (mean ± sd)':<22} "
          f"{'published':<10} s/run")
    for name in names:
        t, rs = TASKS[name], [r for r in records if r["task"] == name]
        reached = sum(r.get("steps_to_target") is not None for r in rs)
        ok = reached == len(rs) == args.seeds
        failed += not ok
        best = [r["best_val_metric"] for r in rs if r.get("best_val_metric") is not None]
        test = [r["test_metric"] for r in rs if r.get("test_metric") is not None]
        goal = (">= " if t.higher_is_better else "<= ") + f"{t.target:g}"
        paper = MNIST1D_PAPER.get(name.split("-", 1)[1]) if name.startswith("mnist1d-") else None
        seconds = statistics.fmean(r.get("seconds") or 0 for r in rs) if rs else 0
        print(f"{name:<22} {_mean_sd(best):<22} {goal:<10} {f'{reached}/{len(rs)}':<8} {_mean_sd(test):<22} "
              f"{'-' if paper is None else f'{paper:.2f}':<10} {seconds:.1f}" + ("" if ok else "  NO"))
    print(f"\n{len(names) - failed}/{len(names)} tasks reach their target")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
