"""Does low-precision optimizer state train as well as float32 state? (issue 12)

1. **Pure-bfloat16 MLP** (the issue's setting): an 86 k-parameter MLP held in bfloat16 fits a
   teacher MLP for 300 full-batch AdamW steps (1024 examples) at lr 1e-4. Plain bfloat16 stalls (updates far
   below the weights' spacing round away); ``param_rounding="stochastic"`` / ``"kahan"`` must
   reach <= 2x the float32 model's loss.
2. **Lab tasks** ``digits-cnn`` and ``char-lm`` (their default Adam recipe) over 3 seeds with
   float32, bfloat16 and 8-bit state: 8-bit's mean final training loss must lie within the
   float32 runs' seed spread (their min..max) or below it.

Peers run next to ours where installed (``pip install -e '.[bench]'``): torchao's AdamW8bit and
torch-optimi's AdamW (Kahan summation for bfloat16 parameters).

    python benchmarks/state_quality.py                  # everything (~20 min on 2 CPU cores)
    python benchmarks/state_quality.py --quick          # the MLP, digits-cnn at 5 epochs, 2 seeds
    python benchmarks/state_quality.py --char-epochs 1  # cut char-lm's budget
    python benchmarks/state_quality.py --skip-tasks     # only the MLP (--skip-mlp: only the tasks)
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch

import optimlab
from optimlab.lab.tasks import get_task
from optimlab.train import evaluate, fit


def _peers() -> dict:
    """Peer optimizers that are installed: name -> class taking ``(params, lr=, weight_decay=)``."""
    out = {}
    if importlib.util.find_spec("torchao"):
        from torchao.optim import AdamW8bit

        out["torchao AdamW8bit"] = AdamW8bit
    if importlib.util.find_spec("optimi"):
        import optimi

        out["optimi AdamW"] = optimi.AdamW  # Kahan summation for 16-bit parameters
    return out


# ---------------------------------------------------------------------------------------------
# 1. The pure-bfloat16 MLP
# ---------------------------------------------------------------------------------------------
def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(80, 256), torch.nn.GELU(), torch.nn.Linear(256, 256), torch.nn.GELU(),
                               torch.nn.Linear(256, 1))  # 86 785 parameters


def mlp_run(make, dtype: torch.dtype, steps: int = 300) -> tuple[float, float]:
    """Final training loss (in float32 arithmetic on the model's outputs) and seconds."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 80, generator=g)
    with torch.no_grad():
        y = _mlp(1)(x)
    model = _mlp(0).to(dtype)
    opt = make(model.parameters())
    xd = x.to(dtype)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        (model(xd).float() - y).square().mean().backward()
        opt.step()
    with torch.no_grad():
        return (model(xd).float() - y).square().mean().item(), time.perf_counter() - t0


def bf16_mlp(steps: int) -> bool:
    kw = dict(lr=1e-4, weight_decay=0.0)
    rows = [("AdamW, float32 model", lambda ps: optimlab.AdamW(ps, **kw), torch.float32),
            ("AdamW, bf16 model (plain)", lambda ps: optimlab.AdamW(ps, **kw), torch.bfloat16),
            ("AdamW, bf16 + stochastic", lambda ps: optimlab.AdamW(ps, **kw, param_rounding="stochastic"), torch.bfloat16),
            ("AdamW, bf16 + kahan", lambda ps: optimlab.AdamW(ps, **kw, param_rounding="kahan"), torch.bfloat16),
            ("AdamW, bf16 + 8-bit state + stochastic",
             lambda ps: optimlab.AdamW(ps, **kw, state_bits=8, param_rounding="stochastic"), torch.bfloat16)]
    # torchao rounds bfloat16 parameters stochastically only when asked; optimi uses Kahan summation by itself
    extra = {"torchao AdamW8bit": {"bf16_stochastic_round": True}}
    rows += [(f"{label}, bf16 model", lambda ps, cls=cls, label=label: cls(ps, **kw, **extra.get(label, {})),
              torch.bfloat16) for label, cls in _peers().items()]
    print(f"\n1. pure-bfloat16 MLP (86 785 parameters, 300 full-batch steps, lr 1e-4)\n")
    print(f"{'optimizer':<44}{'final loss':>12}{'vs fp32':>9}{'seconds':>9}")
    results = {}
    for label, make, dtype in rows:
        loss, secs = mlp_run(make, dtype, steps)
        results[label] = loss
        print(f"{label:<44}{loss:>12.3g}{loss / results['AdamW, float32 model']:>8.2f}x{secs:>9.1f}")
    ok = all(results[k] <= 2 * results["AdamW, float32 model"]
             for k in ("AdamW, bf16 + stochastic", "AdamW, bf16 + kahan"))
    print(f"check: stochastic and kahan <= 2x the float32 loss: {'PASS' if ok else 'FAIL'}")
    return ok


# ---------------------------------------------------------------------------------------------
# 2. Lab tasks over seeds
# ---------------------------------------------------------------------------------------------
def task_run(task_name: str, make, seed: int, epochs: int) -> tuple[float, float, float]:
    """(final training loss, test metric, seconds) of one run of the task's recipe."""
    task = get_task(task_name)
    data, model = task.data(seed), task.model(seed)
    loss_fn = task.loss_fn(model)
    opt = make(model.parameters(), task.lr)
    t0 = time.perf_counter()
    fit(model, opt, loss_fn, data.train, epochs=epochs, batch_size=task.batch_size, seed=seed)
    secs = time.perf_counter() - t0
    train_loss, _ = evaluate(model, loss_fn, data.train, task.metric)
    _, test_metric = evaluate(model, loss_fn, data.test, task.metric)
    return train_loss, test_metric, secs


def lab_tasks(tasks: dict[str, int], seeds: int) -> bool:
    variants = {"fp32 state": lambda ps, lr: optimlab.Adam(ps, lr=lr),
                "bf16 state": lambda ps, lr: optimlab.Adam(ps, lr=lr, state_dtype=torch.bfloat16),
                "8-bit state": lambda ps, lr: optimlab.Adam(ps, lr=lr, state_bits=8)}
    for label, cls in _peers().items():  # the tasks' recipe is Adam: no weight decay
        variants[label] = lambda ps, lr, cls=cls: cls(ps, lr=lr, weight_decay=0.0)
    ok = True
    for task_name, epochs in tasks.items():
        task = get_task(task_name)
        print(f"\n2. {task_name}: Adam lr {task.lr}, {epochs} epochs, batch {task.batch_size}, seeds 0..{seeds - 1}\n")
        print(f"{'state':<20}{'final train loss (per seed)':<36}{'mean':>9}{task.metric_name:>26}{'s/run':>7}")
        losses = {}
        for label, make in variants.items():
            runs = [task_run(task_name, make, s, epochs) for s in range(seeds)]
            losses[label] = [r[0] for r in runs]
            per_seed = " ".join(f"{r[0]:.4f}" for r in runs)
            metric = statistics.fmean(r[1] for r in runs)
            print(f"{label:<20}{per_seed:<36}{statistics.fmean(losses[label]):>9.4f}{metric:>26.4f}"
                  f"{statistics.fmean(r[2] for r in runs):>7.1f}")
        lo, hi = min(losses["fp32 state"]), max(losses["fp32 state"])
        mean8 = statistics.fmean(losses["8-bit state"])
        passed = mean8 <= hi  # within the spread, or below it (better)
        ok &= passed
        where = "within" if lo <= mean8 <= hi else "below (better than)" if mean8 < lo else "above"
        print(f"check: 8-bit mean {mean8:.4f} is {where} the fp32 seeds' spread [{lo:.4f}, {hi:.4f}]: "
              f"{'PASS' if passed else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the MLP, digits-cnn at 5 epochs, 2 seeds")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--char-epochs", type=int, default=None, help="char-lm's budget (default: the task's)")
    ap.add_argument("--skip-tasks", action="store_true")
    ap.add_argument("--skip-mlp", action="store_true")
    args = ap.parse_args()
    ok = args.skip_mlp or bf16_mlp(300)
    if not args.skip_tasks:
        if args.quick:
            tasks, seeds = {"digits-cnn": 5}, 2
        else:
            tasks = {"digits-cnn": get_task("digits-cnn").epochs,
                     "char-lm": args.char_epochs or get_task("char-lm").epochs}
            seeds = args.seeds
        ok &= lab_tasks(tasks, seeds)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
