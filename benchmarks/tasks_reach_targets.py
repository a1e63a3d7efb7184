"""Does every lab task reach its target with its default optimizer within its default budget?

Runs each task (full budget, the task's default optimizer and learning rate) over a few seeds
on a local process pool and prints the test metric against the target. CI runs shortened
versions of the long tasks (tests/test_lab.py); this script checks the real budgets.

    python benchmarks/tasks_reach_targets.py                    # every task, 2 seeds
    python benchmarks/tasks_reach_targets.py --task mnist1d-cnn --seeds 3
"""

from __future__ import annotations

import argparse
import os
import tempfile

from optimlab.lab import grid, run_all
from optimlab.lab.analysis import summarize
from optimlab.lab.tasks import TASKS


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
    print(f"{'task':<22} {'optimizer':<18} {'test metric (mean ± sd)':<26} {'target':<10} reached  seconds/run")
    for r in summarize(records):
        t = TASKS[r["task"]]
        m = r["test_metric"]
        ok = m is not None and (m >= t.target if t.higher_is_better else m <= t.target)
        failed += not ok
        sd = r["test_metric_sd"]  # None with one successful seed
        shown = "-" if m is None else f"{m:.4g}" + (" (1 seed)" if sd is None else f" ± {sd:.2g}")
        goal = (">= " if t.higher_is_better else "<= ") + f"{t.target:g}"
        print(f"{r['task']:<22} {r['label']:<18} {shown:<26} {goal:<10} {'yes' if ok else 'NO':<8} {r['seconds']:.1f}")

    print(f"\n{len(names) - failed}/{len(names)} tasks reach their target")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
