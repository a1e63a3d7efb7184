"""The runner: optimizers x tasks x seeds x learning rates, each run independent, in parallel on
a local process pool (one thread per run), every finished run appended to a JSON Lines file.
Running the same comparison again skips the runs already recorded.

A run that fails -- diverges, or raises -- is recorded as such; it never stops the others.

Example::

    >>> specs = grid(["digits-cnn"], ["sgd:lr=0.1,momentum=0.9", "adam"], seeds=3)
    >>> records = run_all(specs, "runs/compare.jsonl")
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import math
import os
import time
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .. import registry
from ..train import evaluate, fit
from .tasks import get_task

__all__ = ["RunSpec", "parse_optimizer", "grid", "run_one", "run_all", "load_records"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text.startswith("(") and text.endswith(")"):
        return tuple(_parse_value(t) for t in text[1:-1].split("/") if t)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_optimizer(text: str) -> tuple[str, dict[str, Any]]:
    """``"sgd:lr=0.1,momentum=0.9,betas=(0.9/0.99)"`` -> ``("sgd", {"lr": 0.1, ...})``.

    Tuples are written with ``/`` between their items, since ``,`` separates arguments."""
    name, _, rest = text.strip().partition(":")
    spec = registry._spec(name)  # raises a clear KeyError for unknown names
    hyper: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"optimizer option {part!r} in {text!r} is not key=value (e.g. lr=0.01)")
        hyper[key.strip()] = _parse_value(value.strip())
    return spec.name, hyper


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run. ``lr=None`` uses the optimizer's own default learning rate (or the
    one in ``hyper``); ``batch_size="task"`` the task's default, ``None`` full batch."""

    task: str
    optimizer: str
    hyper: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None | str = "task"
    label: str = ""

    @property
    def key(self) -> str:
        blob = json.dumps([self.task, self.optimizer, list(self.hyper), self.seed, self.epochs, self.batch_size],
                          default=repr)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.label or self.optimizer


def grid(tasks: Sequence[str], optimizers: Sequence[str], seeds: int | Iterable[int] = 1,
         lrs: Sequence[float] | None = None, epochs: int | None = None, batch_size: int | None | str = "task") -> list[RunSpec]:
    """Every combination. ``optimizers`` are strings as in :func:`parse_optimizer`; ``lrs``
    (optional) overrides each optimizer's learning rate with every value in turn."""
    seeds = range(seeds) if isinstance(seeds, int) else list(seeds)
    out = []
    for task in tasks:
        get_task(task)  # fail early on a typo
        for text in optimizers:
            name, hyper = parse_optimizer(text)
            for lr in (lrs or [None]):
                h = dict(hyper, **({"lr": lr} if lr is not None else {}))
                label = text if lrs is None else f"{text}@lr={lr:g}"
                for seed in seeds:
                    out.append(RunSpec(task, name, tuple(sorted(h.items())), seed, epochs, batch_size, label))
    return out


def _downsample(xs: list[float], n: int = 400) -> list[list[float]]:
    """[[step, value], ...] with at most ~n points (every k-th step, and the last)."""
    if not xs:
        return []
    k = max(1, math.ceil(len(xs) / n))
    pts = [[i + 1, xs[i]] for i in range(0, len(xs), k)]
    if pts[-1][0] != len(xs):
        pts.append([len(xs), xs[-1]])
    return pts


def run_one(spec: RunSpec, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """Train one run and return its record. Never raises: errors are recorded."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {"key": spec.key, "task": spec.task, "optimizer": spec.optimizer, "label": spec.name,
                              "hyper": dict(spec.hyper), "seed": spec.seed}
    try:
        task = get_task(spec.task)
        data = task.data(spec.seed)
        model = task.model(spec.seed)
        loss_fn = task.loss_fn(model)
        hyper = dict(spec.hyper)
        if "lr" not in hyper and spec.optimizer == task.optimizer:
            hyper["lr"] = task.lr
        # named: name-based masks (decay_mask=r"bias|norm", MuonAdam's embedding rule) see the names
        opt = registry.create(spec.optimizer, model.named_parameters(), **hyper)
        epochs = spec.epochs or task.epochs
        bs = task.batch_size if spec.batch_size == "task" else spec.batch_size
        ckpt = os.path.join(checkpoint_dir, f"{spec.key}.pt") if checkpoint_dir else None
        res = fit(model, opt, loss_fn, data.train, val=data.val, metric=task.metric,
                  higher_is_better=task.higher_is_better, epochs=epochs, batch_size=bs, seed=spec.seed,
                  target=task.target, checkpoint=ckpt, resume=ckpt is not None)
        if callable(getattr(opt, "eval", None)):
            opt.eval()
        test_loss, test_metric = evaluate(model, loss_fn, data.test, task.metric)
        record.update(
            lr=next((g["lr"] for g in opt.param_groups if "lr" in g), None),
            epochs=res.epochs, batch_size=bs, steps=res.steps, seconds=res.seconds,
            diverged=res.diverged, message=res.message,
            final_train_loss=res.last("train_loss"), final_val_loss=res.last("val_loss"),
            final_val_metric=res.last("val_metric"),
            best_val_metric=res.best("val_metric", task.higher_is_better),
            test_loss=None if res.diverged else test_loss, test_metric=None if res.diverged else test_metric,
            target=task.target, metric=task.metric_name, higher_is_better=task.higher_is_better,
            steps_to_target=res.steps_to_target, seconds_to_target=res.seconds_to_target,
            curve=_downsample(res.step_losses), epochs_log=res.epoch_records, error=None,
            cost=_cost(opt, res),
        )
        if ckpt and os.path.exists(ckpt):
            os.unlink(ckpt)
    except Exception as exc:  # one broken run must not stop the comparison
        record.update(diverged=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
    record["wall_seconds"] = time.perf_counter() - t0
    return _finite(record)


def _cost(opt, res) -> dict[str, Any]:
    """What the run's optimizer steps cost: closure evaluations (function and gradient),
    Hessian-vector products, seconds. Second-order optimizers count their own
    (``optimizer.cost``); a first-order step is one evaluation."""
    own = getattr(opt, "cost", None)
    if own is not None and hasattr(own, "as_dict"):
        c = own.as_dict()
        return {"function_evals": c["function_evals"], "hvps": c["hvps"], "hessians": c.get("hessians", 0),
                "line_search_failures": c.get("line_search_failures", 0), "seconds": res.seconds}
    return {"function_evals": res.steps, "hvps": 0, "hessians": 0, "line_search_failures": 0, "seconds": res.seconds}


def _finite(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def load_records(path: str) -> list[dict[str, Any]]:
    """Every complete line of a JSON Lines file (a half-written last line is ignored)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _end_last_line(path: str) -> None:
    """A comparison killed mid-write leaves a partial last line: end it, so the next record
    starts on a line of its own (the partial line is then skipped by :func:`load_records`)."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_all(specs: Sequence[RunSpec], path: str, workers: int | None = None, progress: bool = False,
            checkpoint_dir: str | None = None) -> list[dict[str, Any]]:
    """Run every spec not yet recorded in ``path`` (JSON Lines), appending each record as it
    finishes; return the records of all ``specs``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    done = {r["key"]: r for r in load_records(path) if r.get("error") is None}
    todo = [s for s in specs if s.key not in done]
    workers = workers or min(len(todo), os.cpu_count() or 1) or 1
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="run", leave=False)

    _end_last_line(path)

    def keep(rec):
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        done[rec["key"]] = rec
        if bar is not None:
            bar.update(1)

    try:
        if workers <= 1 or len(todo) <= 1:
            for s in todo:
                keep(run_one(s, checkpoint_dir))
        else:
            with cf.ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
                futures = [pool.submit(run_one, s, checkpoint_dir) for s in todo]
                for fut in cf.as_completed(futures):
                    keep(fut.result())
    finally:
        if bar is not None:
            bar.close()
    return [done[s.key] for s in specs if s.key in done]
