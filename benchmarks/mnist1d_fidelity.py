"""Does the lab reproduce the MNIST-1D paper's table (Greydanus 2020)?

Trains the four models of the paper -- logistic regression, MLP, CNN, GRU -- on the paper's
4 000 training sequences with the paper's recipe (Adam, lr 1e-2, batches of 100, 6 000 steps),
each over 3 seeds, and prints the test accuracy on the paper's 1 000 test sequences next to the
published number: at the end of training, and at the epoch with the best validation accuracy
(validation: 1 000 more sequences from the same generator, seed 43). A row "holds" when the
mean final test accuracy is within 2 points of the paper's.

    python benchmarks/mnist1d_fidelity.py                     # 4 models x 3 seeds, full budget
    python benchmarks/mnist1d_fidelity.py --epochs 50 --seeds 2   # a shorter check
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from optimlab.lab import grid, run_all
from optimlab.lab.tasks import MNIST1D_PAPER, TASKS


def _mean_sd(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):5.1f} ± {100 * sd:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="default: the paper's 150 epochs (6 000 steps)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--records", default=None, help="JSON Lines file to keep (default: a temporary one)")
    args = ap.parse_args()
    names = [f"mnist1d-{k}" for k in MNIST1D_PAPER]
    specs = [s for n in names for s in grid([n], [f"{TASKS[n].optimizer}:lr={TASKS[n].lr}"], seeds=args.seeds,
                                            epochs=args.epochs)]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        records = run_all(specs, args.records or os.path.join(tmp, "r.jsonl"), workers=args.workers, progress=True)
    wall = time.perf_counter() - t0

    print(f"{'model':<8} {'paper':>6} {'final test (mean ± sd)':>23} {'test at best val':>17} "
          f"{'final val':>13} {'steps':>6} {'s/run':>6}  within 2 points")
    failed = 0
    for name in names:
        rs = [r for r in records if r["task"] == name]
        errors = [r for r in rs if r.get("error") or r.get("diverged")]
        paper = MNIST1D_PAPER[name.split("-", 1)[1]]
        finals = [r["test_metric"] for r in rs if r.get("test_metric") is not None]
        mean = statistics.fmean(finals) if finals else float("nan")
        ok = not errors and len(finals) == len(rs) and abs(mean - paper) <= 0.02
        failed += not ok
        print(f"{name.split('-', 1)[1]:<8} {100 * paper:5.0f}% {_mean_sd(finals):>23} "
              f"{_mean_sd([r.get('test_metric_at_best_val') for r in rs]):>17} "
              f"{_mean_sd([r.get('final_val_metric') for r in rs]):>13} {rs[0].get('steps', 0):>6} "
              f"{statistics.fmean(r.get('seconds') or 0 for r in rs):6.0f}  "
              f"{'yes' if ok else 'NO'}{f' ({len(errors)} failed)' if errors else ''}")
    print(f"\n{len(names) - failed}/{len(names)} rows within 2 points of the paper; {len(records)} runs, "
          f"{args.seeds} seeds, {wall:.0f} s wall")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
