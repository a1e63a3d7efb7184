"""The runner: optimizers x tasks x seeds x learning rates, each run independent, in parallel on
a local process pool (one thread per run), every finished run appended to a JSON Lines file.
Running the same comparison again skips the runs already recorded.

A run that fails -- diverges, or raises -- is recorded as such, with a one-line ``note`` saying
why (as is a classifier stuck at chance level); it never stops the others. Ctrl-C stops at once
and keeps what finished; the workers die with the main process, even when it is killed.
Optimizer strings are checked up front by :func:`check_optimizer`.

Tasks are names, ``"module:function"`` references or :class:`~optimlab.lab.tasks.Task` objects.
Workers receive a name or a reference and resolve it themselves, or else the pickled Task; the
start method is the platform's (``fork`` on Linux, ``spawn`` on macOS and Windows) unless
``$OPTIMLAB_START_METHOD`` or ``run_all(start_method=...)`` says otherwise.

Example::

    >>> specs = grid(["digits-cnn"], ["sgd:lr=0.1,momentum=0.9", "adam"], seeds=3)
    >>> records = run_all(specs, "runs/compare.jsonl")
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import dataclasses
import difflib
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .. import registry
from ..diagnostics import compact
from ..schedules import Scheduler, cosine, warmup
from ..train import evaluate, fit, steps_per_epoch
from .executors import RayExecutor, get_executor
from .tasks import BUILTIN_TASKS, TASKS, Task, get_task, task_key

__all__ = ["RunSpec", "split_optimizers", "parse_optimizer", "check_optimizer", "spec_task", "grid", "run_one",
           "run_all", "load_records", "Interrupted", "chance_level", "row_notes", "START_METHOD_ENV",
           "resolve_start_method"]

START_METHOD_ENV = "OPTIMLAB_START_METHOD"  # fork, spawn or forkserver: how run_all starts its workers
EVALS_PER_EPOCH = 2  # validation (and the training set) is measured this often per epoch, and at each epoch's end
DIAGNOSTICS_POINTS = 50  # optimizer diagnostics (optimlab.diagnostics) recorded ~this many times per run
SCHEDULES = ("constant", "warmup_cosine")  # a run's learning-rate schedule (RunSpec.schedule)
WARMUP_FRACTION = 0.05  # warmup_cosine: linear warmup over this share of the steps, then cosine to 0


_OPEN, _CLOSE = "([{", ")]}"


def _split_top(text: str, seps: str = ",") -> list[str]:
    """Split ``text`` at any of ``seps`` outside brackets, so tuples keep their commas:
    ``"lr=0.1,betas=(0.9,0.99)"`` -> ``["lr=0.1", "betas=(0.9,0.99)"]``."""
    parts, cur, depth = [], [], 0
    for ch in text:
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {ch!r} in {text!r}")
        if ch in seps and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError(f"unclosed bracket in {text!r}: write tuples as betas=(0.9,0.99)")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _parse_value(text: str) -> Any:
    """A number, a tuple ``(0.9,0.99)`` / ``[0.9,0.99]`` / ``(0.9/0.99)``, true/false/none,
    or else the string itself."""
    if text[:1] + text[-1:] in ("()", "[]"):
        return tuple(_parse_value(t) for t in _split_top(text[1:-1], ",/"))
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() == "none":
        return None
    return text


def split_optimizers(text: str) -> list[str]:
    """``"sgd:lr=0.1,momentum=0.9,adam:betas=(0.9,0.99)"`` -> ``["sgd:lr=0.1,momentum=0.9",
    "adam:betas=(0.9,0.99)"]``: an item with ``=`` but no ``:`` continues the previous
    optimizer; commas inside brackets do not split."""
    out: list[str] = []
    for item in _split_top(text, ","):
        if "=" in item and ":" not in item.partition("=")[0] and out:
            out[-1] += ("," if ":" in out[-1] else ":") + item
        elif "=" in item and ":" not in item:
            raise ValueError(f"{item!r} in {text!r} has no optimizer before it: write e.g. sgd:{item}")
        else:
            out.append(item)
    if not out:
        raise ValueError(f"no optimizer in {text!r}: give e.g. sgd:lr=0.1,adam")
    return out


def parse_optimizer(text: str) -> tuple[str, dict[str, Any]]:
    """``"adam:lr=1e-3,betas=(0.9,0.99)"`` -> ``("adam", {"lr": 0.001, "betas": (0.9, 0.99)})``.

    Options are ``key=value`` separated by ``,``; tuples are written in brackets, their items
    separated by ``,`` or ``/`` (``betas=(0.9/0.99)``)."""
    name, _, rest = text.strip().partition(":")
    spec = registry._spec(name.strip())  # raises a clear KeyError for unknown names
    hyper: dict[str, Any] = {}
    for part in _split_top(rest, ","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"optimizer option {part!r} in {text!r} is not key=value (e.g. lr=0.01)")
        hyper[key.strip()] = _parse_value(value.strip())
    return spec.name, hyper


def _task_hyper(task, optimizer: str, hyper: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a run uses: the task's own learning rate for its default optimizer
    when none is given."""
    hyper = dict(hyper)
    if "lr" not in hyper and optimizer == task.optimizer:
        hyper["lr"] = task.lr
    return hyper


def check_optimizer(text: str, task: str | Task | None = None, *, without_lr: bool = False) -> tuple[str, dict[str, Any]]:
    """Parse ``text`` and build the optimizer once -- on ``task``'s model, or on a dummy 2-D
    parameter -- so that a typo or a bad value fails here, before any training, with the
    optimizer's own message and the string it came from. ``without_lr``: the caller sets the
    learning rate (LR finder, sweep), so ``lr=`` is ignored. Returns ``parse_optimizer(text)``."""
    name, hyper = parse_optimizer(text)
    build = {k: v for k, v in hyper.items() if not (without_lr and k == "lr")}
    if task is not None:
        t = get_task(task)
        params = t.model(0).named_parameters()
        if not without_lr:
            build = _task_hyper(t, name, build)
    else:
        params = [torch.nn.Parameter(torch.zeros(2, 2))]
    try:
        registry.create(name, params, **build)
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        defaults = registry._spec(name).defaults
        hints = [f"did you mean {close[0]}= instead of {k}=?" for k in build if k not in defaults and repr(k) in msg
                 for close in [difflib.get_close_matches(k, defaults, n=1)] if close]
        raise ValueError(f"optimizer {text!r}: {'; '.join(hints + [msg])}") from None
    return name, hyper


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run. ``lr=None`` uses the optimizer's own default learning rate (or the
    one in ``hyper``); ``batch_size="task"`` the task's default, ``None`` full batch.
    ``task``: a name, a ``"module:function"`` reference, or a :class:`Task` (pickled to workers).
    ``schedule``: ``None`` or ``"constant"`` (the learning rate as given) or ``"warmup_cosine"``
    (linear warmup over 5 % of the steps, then cosine to 0). ``tags`` are copied into the record
    (the tuning protocol's ``phase``, ``base`` and ``trial``) and are part of the run's key."""

    task: str | Task
    optimizer: str
    hyper: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None | str = "task"
    label: str = ""
    schedule: str | None = None
    tags: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        parts = [task_key(self.task), self.optimizer, list(self.hyper), self.seed, self.epochs, self.batch_size]
        if self.schedule not in (None, "constant"):
            parts.append(self.schedule)
        if self.tags:  # only when set: the keys of earlier records stay valid
            parts.append(list(self.tags))
        return hashlib.sha1(json.dumps(parts, default=repr).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.label or self.optimizer


def spec_task(task: str | Task) -> str | Task:
    """``task`` as a :class:`RunSpec` holds it: a name, or a Task by its reference when it has
    one. Resolving it here makes a typo fail before any run."""
    t = get_task(task)
    return task if isinstance(task, str) else (t.ref or t)


def grid(tasks: Sequence[str | Task] | str | Task, optimizers: Sequence[str], seeds: int | Iterable[int] = 1,
         lrs: Sequence[float] | None = None, epochs: int | None = None, batch_size: int | None | str = "task") -> list[RunSpec]:
    """Every combination. ``tasks``: names, ``"module:function"`` references or :class:`Task`
    objects (one alone is fine); ``optimizers`` are strings as in :func:`parse_optimizer`;
    ``lrs`` (optional) overrides each optimizer's learning rate with every value in turn."""
    seeds = range(seeds) if isinstance(seeds, int) else list(seeds)
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    out = []
    for task in map(spec_task, tasks):
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


def chance_level(task, data) -> tuple[float, float] | None:
    """For a classification task (an accuracy metric): the validation accuracy of always
    answering the most frequent class (at least 1/num_classes), and the noise around it (two
    binomial standard errors on the validation set, at least 0.01). ``None`` for other tasks."""
    if "accuracy" not in task.metric_name:
        return None
    y = data.val[1].reshape(-1)
    classes = torch.cat([data.train[1].reshape(-1), y]).unique().numel()
    c = max(1 / max(classes, 2), torch.unique(y, return_counts=True)[1].max().item() / len(y))
    return c, max(0.01, 2 * math.sqrt(c * (1 - c) / len(y)))


def _note(record: dict[str, Any], res=None, chance=None) -> str | None:
    """The row's one-line reason: diverged (where, at which loss, what to do), error, or stuck
    at chance; ``None`` for a healthy run."""
    if record.get("error"):
        return "error: " + record["error"].splitlines()[0]
    if record.get("diverged"):
        loss = res.step_losses[-1] if res.step_losses else float("nan")
        lr = record.get("lr")
        try_lr = f" (try lr={lr / 10:g})" if isinstance(lr, (int, float)) and lr > 0 else ""
        return f"diverged at step {res.steps} (loss {loss:.3g}): lower lr{try_lr}"
    if record.get("stuck_at_chance"):
        c = chance[0]
        return f"stuck at chance (val {record['final_val_metric']:.1%} vs {c:.1%}): try another lr or more epochs"
    return None


def run_one(spec: RunSpec, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """Train one run and return its record. Never raises: errors are recorded. ``note`` says
    in one line why a run is not healthy (diverged, error, stuck at chance)."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {"key": spec.key, "task": task_key(spec.task), "optimizer": spec.optimizer, "label": spec.name,
                              "hyper": dict(spec.hyper), "seed": spec.seed, **dict(spec.tags)}
    if spec.schedule not in (None, "constant"):
        record["schedule"] = spec.schedule
    try:
        task = get_task(spec.task)
        record["task"] = task.name  # what tables and reports call it (a reference's own name)
        data = task.data(spec.seed)
        model = task.model(spec.seed)
        loss_fn = task.loss_fn(model)
        hyper = _task_hyper(task, spec.optimizer, dict(spec.hyper))
        # named: name-based masks (decay_mask=r"bias|norm", MuonAdam's embedding rule) see the names
        opt = registry.create(spec.optimizer, model.named_parameters(), **hyper)
        lr = next((g["lr"] for g in opt.param_groups if "lr" in g), None)  # before a schedule changes it
        epochs = spec.epochs or task.epochs
        bs = task.batch_size if spec.batch_size == "task" else spec.batch_size
        # test functions take thousands of one-step epochs: a checkpoint each would cost more than the run
        ckpt = os.path.join(checkpoint_dir, f"{spec.key}.pt") if checkpoint_dir and task.kind != "function" else None
        spe = steps_per_epoch(len(data.train[0]), bs)
        # test functions take one-step epochs and have no data: each epoch is already each step
        finer = task.kind != "function" and spe > 1
        best_val = _BestValidation(task, model, opt)
        res = fit(model, opt, loss_fn, data.train, val=data.val, metric=task.metric,
                  higher_is_better=task.higher_is_better, epochs=epochs, batch_size=bs, seed=spec.seed,
                  target=task.target, checkpoint=ckpt, resume=ckpt is not None,
                  on_epoch=best_val,
                  scheduler=_scheduler(spec.schedule, opt, epochs * spe),
                  eval_every=max(1, spe // EVALS_PER_EPOCH) if finer else None,
                  train_eval=None if task.kind == "function" else _train_part(data, spec.seed),
                  diagnostics_every=max(1, math.ceil(epochs * spe / DIAGNOSTICS_POINTS)))
        if callable(getattr(opt, "eval", None)):
            opt.eval()
        test_loss, test_metric = evaluate(model, loss_fn, data.test, task.metric)
        # the training loss evaluated where the final validation loss was (not the epoch's
        # running average over changing weights): the generalization gap compares like with like
        train_eval_loss, train_eval_metric = evaluate(model, loss_fn, data.train, task.metric)
        chance = chance_level(task, data)
        final_val = res.last("val_metric")
        record.update(
            lr=lr,
            epochs=res.epochs, batch_size=bs, steps=res.steps, seconds=res.seconds,
            diverged=res.diverged, message=res.message,
            final_train_loss=res.last("train_loss"), final_val_loss=res.last("val_loss"),
            final_val_metric=final_val,
            best_val_metric=res.best("val_metric", task.higher_is_better),
            final_train_eval_loss=None if res.diverged else train_eval_loss,
            final_train_eval_metric=None if res.diverged else train_eval_metric,
            test_metric_at_best_val=None if res.diverged else best_val.test_metric(res, spec.seed, data),
            test_loss=None if res.diverged else test_loss, test_metric=None if res.diverged else test_metric,
            target=task.target, metric=task.metric_name, higher_is_better=task.higher_is_better,
            steps_to_target=res.steps_to_target, seconds_to_target=res.seconds_to_target,
            curve=_downsample(res.step_losses), epochs_log=res.epoch_records, error=None,
            diagnostics=compact(res.diagnostics),
            cost=_cost(opt, res), chance=chance and chance[0],
            stuck_at_chance=bool(chance and not res.diverged and final_val is not None
                                 and final_val <= chance[0] + chance[1]),
        )
        record["note"] = _note(record, res, chance)
        if ckpt and os.path.exists(ckpt):
            os.unlink(ckpt)
    except Exception as exc:  # one broken run must not stop the comparison
        record.update(diverged=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
        record["note"] = _note(record)
    record["wall_seconds"] = time.perf_counter() - t0
    return _finite(record)


def _scheduler(schedule: str | None, opt, total_steps: int) -> Scheduler | None:
    """The run's learning-rate schedule (see :data:`SCHEDULES`); None for a constant rate."""
    if schedule in (None, "constant"):
        return None
    if schedule != "warmup_cosine":
        raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    lr = opt.param_groups[0]["lr"]
    w = max(1, round(WARMUP_FRACTION * total_steps))
    return Scheduler(opt, {"lr": warmup(cosine(lr, max(1, total_steps - w)), w)})


def _train_part(data, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random part of the training set as large as the validation set (all of it if
    smaller): its loss and metric are measured at the same points as validation's, at the
    same cost and with the same noise."""
    x, y = data.train
    k = min(len(x), max(len(data.val[0]), 1))
    if k == len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]
    return x[idx], y[idx]


def row_notes(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """Per (task, label): the runs' notes, ``"seed 1: diverged at step 40 ..."`` (the seed is
    left out when the row has one run), in seed order."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        rows.setdefault((r["task"], r["label"]), []).append(r)
    out = {}
    for key, rs in rows.items():
        rs = sorted(rs, key=lambda r: r.get("seed", 0))
        notes = [(f"seed {r.get('seed')}: " if len(rs) > 1 else "") + r["note"] for r in rs if r.get("note")]
        if notes:
            out[key] = notes
    return out


def _val_key(task) -> tuple[str, bool]:
    """What "best validation" means for a task: its metric (or the loss), and which way is better."""
    return ("val_metric", task.higher_is_better) if task.metric is not None else ("val_loss", False)


class _BestValidation:
    """An ``on_epoch`` hook for :func:`fit` that keeps a copy of the weights at the best
    validation result (a schedule-free optimizer's evaluation weights), so that the test set is
    read once, after training, at that checkpoint -- never during training, and never to choose."""

    def __init__(self, task, model, opt):
        self.task, self.model, self.opt = task, model, opt
        self.key, self.hib = _val_key(task)
        self.value: float | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def __call__(self, record: dict) -> None:
        m = record.get(self.key)
        if m is None or not math.isfinite(m) or (self.value is not None and not (m > self.value if self.hib
                                                                                  else m < self.value)):
            return
        swap = callable(getattr(self.opt, "eval", None))  # schedule-free: the weights validation saw
        if swap:
            self.opt.eval()
        self.value, self.state = m, {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if swap:
            self.opt.train()

    def test_metric(self, res, seed: int, data) -> float | None:
        """The test metric of the kept weights; None if none were kept or -- after a resume --
        the best validation result came before it, so the weights kept are not that checkpoint's."""
        best = res.best(self.key, self.hib)
        if self.state is None or best is None or self.value != best:
            return None
        model = self.task.model(seed)
        model.load_state_dict(self.state)
        return evaluate(model, self.task.loss_fn(model), data.test, self.task.metric)[1]


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


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie -- killed, not yet reaped -- does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _die_with_parent(main: int) -> None:
    """Exit when the main process dies, even by ``kill -9``. On Linux the kernel sends SIGKILL
    when the parent dies (``prctl(PR_SET_PDEATHSIG)``: fork and spawn, where the parent is the
    main process); everywhere a daemon thread checks twice a second that the parent is the same
    and the main process alive (forkserver: the parent is the server, which outlives the main
    process as long as workers hold it open)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    parent = os.getppid()

    def watch():
        while os.getppid() == parent and _alive(main):
            time.sleep(0.5)
        os._exit(1)

    if not _alive(main):  # it died before prctl took effect
        os._exit(1)
    threading.Thread(target=watch, name="optimlab-parent-watchdog", daemon=True).start()


def _init_worker(main: int) -> None:
    # Ctrl-C reaches the whole process group: the main process alone handles it (and ends us)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _die_with_parent(main)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_all`. ``saved`` of ``total`` runs are recorded in ``path``;
    running the same specs again finishes the rest."""

    def __init__(self, saved: int, total: int, path: str):
        super().__init__(f"{saved}/{total} runs saved in {path}")
        self.saved, self.total, self.path = saved, total, path


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """End a pool now: drop the queued runs, terminate the running ones."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(1.0)
        if p.is_alive():
            p.kill()


def resolve_start_method(method: str | None = None) -> str:
    """``method``, else ``$OPTIMLAB_START_METHOD``, else the platform's default start method."""
    method = method or os.environ.get(START_METHOD_ENV, "").strip() or multiprocessing.get_start_method()
    known = multiprocessing.get_all_start_methods()
    if method not in known:
        raise ValueError(f"start method {method!r} (from {START_METHOD_ENV} or start_method=) is not one of "
                         f"{', '.join(known)}")
    return method


def _for_workers(specs: Sequence[RunSpec], method: str) -> list[RunSpec]:
    """The specs as worker processes can receive them. A Task with a reference travels as the
    reference; a task registered in ``TASKS`` after import exists in a forked worker only, so
    other start methods get the Task itself; a Task object must pickle -- checked here, once
    per task, so the error comes before any run, with the fix."""
    out, checked = [], set()
    for s in specs:
        task = s.task
        if isinstance(task, str) and method != "fork" and task in TASKS and task not in BUILTIN_TASKS:
            task = TASKS[task]
        if isinstance(task, Task) and task.ref:
            task = task.ref
        if isinstance(task, Task) and id(task) not in checked:
            _check_picklable(task, method)
            checked.add(id(task))
        out.append(s if task is s.task else dataclasses.replace(s, task=task))
    return out


def _check_picklable(task: Task, method: str) -> None:
    fix = ("define the model, loss and metric at module level (not lambdas or local functions), or put "
           "`def make_task(): return Task.from_data(...)` in a module and pass 'module:make_task' instead of the Task "
           "(or use workers=1)")
    try:
        blob = pickle.dumps(task)
    except Exception as e:
        why = " ".join(str(e).split())
        raise ValueError(f"task {task.name!r} cannot be sent to worker processes ({type(e).__name__}: {why}): "
                         f"{fix}") from None
    interactive = getattr(sys.modules.get("__main__"), "__file__", None) is None
    if method != "fork" and interactive and b"__main__" in blob:
        raise ValueError(f"task {task.name!r} uses functions defined in this interactive session, which {method} "
                         f"workers cannot import: {fix}")


def run_all(specs: Sequence[RunSpec], path: str, workers: int | None = None, progress: bool = False,
            checkpoint_dir: str | None = None, start_method: str | None = None,
            executor: str | RayExecutor | None = None) -> list[dict[str, Any]]:
    """Run every spec not yet recorded in ``path`` (JSON Lines), appending each record as it
    finishes; return the records of all ``specs``. The progress bar goes to stderr.

    Ctrl-C stops at once (running workers are terminated) and raises :class:`Interrupted`;
    the finished runs are kept, and with ``checkpoint_dir`` the interrupted ones continue from
    their last epoch next time. Workers die with this process, even when it is killed.
    ``start_method``: how workers start (default ``$OPTIMLAB_START_METHOD``, else the platform's).
    A :class:`Task` object given in ``specs`` must pickle (``ValueError`` up front otherwise).
    ``executor``: ``"local"`` (default: the process pool) or ``"ray"`` / a
    :class:`~optimlab.lab.executors.RayExecutor` (each run a Ray task; ``workers`` caps how many
    run at once, default: as many as the cluster takes)."""
    method = resolve_start_method(start_method)
    remote = get_executor(executor)  # None: the local pool
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    done = {r["key"]: r for r in load_records(path) if r.get("error") is None}
    todo = [s for s in specs if s.key not in done]
    cap = workers  # the caller's own limit, for a remote executor
    workers = workers or min(len(todo), os.cpu_count() or 1) or 1
    if remote is not None or (workers > 1 and len(todo) > 1):
        todo = _for_workers(todo, "spawn" if remote else method)  # Ray's workers start afresh, as spawned ones
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="run", leave=False, file=sys.stderr)

    _end_last_line(path)

    def keep(rec):
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        done[rec["key"]] = rec
        if bar is not None:
            bar.update(1)

    pool = None
    try:
        if remote is not None:  # paths as workers elsewhere see them
            remote.run(run_one, todo, (checkpoint_dir and os.path.abspath(checkpoint_dir),), keep, cap)
        elif workers <= 1 or len(todo) <= 1:
            for s in todo:
                keep(run_one(s, checkpoint_dir))
        else:
            pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                          initializer=_init_worker, initargs=(os.getpid(),))
            futures = [pool.submit(run_one, s, checkpoint_dir) for s in todo]
            for fut in cf.as_completed(futures):
                keep(fut.result())
            pool.shutdown()
            pool = None
    except KeyboardInterrupt:
        if pool is not None:
            _stop(pool)
            pool = None
        raise Interrupted(sum(s.key in done for s in specs), len(specs), path) from None
    finally:
        if pool is not None:
            _stop(pool)
        if bar is not None:
            bar.close()
    return [done[s.key] for s in specs if s.key in done]
