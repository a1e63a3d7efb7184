"""A small, readable fit loop.

Batch modes (one epoch is one pass over the training set):

* ``batch_size=None``  -- full-batch gradient descent: 1 optimizer step per epoch;
* ``batch_size=1``     -- per-example (stochastic) gradient descent: N steps per epoch;
* ``batch_size=B``     -- mini-batch gradient descent: ceil(N / B) steps per epoch.

Every step goes through ``optimizer.step(closure)``, so closure-based optimizers (L-BFGS, line
searches) work unchanged. Training is seeded and deterministic; the shuffling generator, torch's
RNG, the model, the optimizer and the history are checkpointed atomically, and ``resume=True``
continues the same trajectory. A loss that becomes non-finite or explodes stops the run, which
is reported as diverged with advice instead of printing NaN.

Example::

    >>> result = fit(model, optimlab.Adam(model.parameters()), torch.nn.functional.cross_entropy,
    ...              (x_train, y_train), val=(x_val, y_val), metric=accuracy, epochs=10, batch_size=32)
    >>> result.diverged, result.best("val_metric")
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .optimizers.schedule_free import warn_if_training_weights

__all__ = ["fit", "FitResult", "accuracy", "save_atomic", "steps_per_epoch", "step_on_batch"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def accuracy(output: Tensor, target: Tensor) -> float:
    """Fraction of rows whose arg-max (or, for one output, sign) matches the target, as
    count / total in float64 (a float32 mean of 1 000 rows reads 900 right as 0.89999998)."""
    if output.ndim == 1 or output.shape[-1] == 1:
        pred = (output.reshape(-1) > 0).to(target.dtype)
    else:
        pred = output.argmax(-1)
    return (pred == target).sum().item() / max(target.numel(), 1)


def steps_per_epoch(n: int, batch_size: int | None) -> int:
    """1 for full batch, N for per-example, ceil(N / B) for mini-batches."""
    return 1 if batch_size is None or batch_size >= n else math.ceil(n / batch_size)


@dataclasses.dataclass
class FitResult:
    """What a run did: per-step training losses, per-epoch records, and how it ended."""

    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    step_losses: list[float] = dataclasses.field(default_factory=list)
    epoch_records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    diverged: bool = False
    stopped_early: bool = False
    message: str = ""
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    # optimizer diagnostics every ``diagnostics_every`` steps (optimlab.diagnostics' records)
    diagnostics: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def best(self, key: str, higher_is_better: bool = False) -> float | None:
        vals = [r[key] for r in self.epoch_records if r.get(key) is not None and math.isfinite(r[key])]
        if not vals:
            return None
        return max(vals) if higher_is_better else min(vals)

    def last(self, key: str) -> float | None:
        for r in reversed(self.epoch_records):
            if r.get(key) is not None:
                return r[key]
        return None


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a write killed midway leaves the previous file intact."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@torch.no_grad()
def evaluate(model: torch.nn.Module, loss_fn: LossFn, data, metric=None, batch_size: int = 4096) -> tuple[float, float | None]:
    """Mean loss (and metric) over a data set, in eval mode, batched to bound memory. Warns if the
    weights are a schedule-free optimizer's training point y (call ``optimizer.eval()`` first)."""
    warn_if_training_weights(model.parameters())
    x, y = data
    was_training = model.training
    model.eval()
    outs = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    out = torch.cat(outs)
    loss = loss_fn(out, y).item()
    return loss, (metric(out, y) if metric is not None else None)


def step_on_batch(model, optimizer, loss_fn: LossFn, xb: Tensor, yb: Tensor) -> float:
    """One optimizer step on one batch, through a closure (so L-BFGS and line searches work);
    returns the batch loss before the step. Optimizers that need second derivatives
    (``needs_hessian``: Newton, NewtonCG, Sophia-H) get a closure that returns the loss without
    calling ``backward``: they differentiate it themselves, keeping the graph when they need it."""
    differentiates = getattr(optimizer, "needs_hessian", False)

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        if not differentiates:
            loss.backward()
        return loss

    loss = optimizer.step(closure)
    return float(loss.detach() if isinstance(loss, Tensor) else loss)


def _mode_switch(optimizer, mode: str) -> None:
    """Optimizers with two sequences of weights (schedule-free) expose train()/eval()."""
    fn = getattr(optimizer, mode, None)
    if callable(fn):
        fn()


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    train: tuple[Tensor, Tensor],
    *,
    val: tuple[Tensor, Tensor] | None = None,
    metric: Callable[[Tensor, Tensor], float] | None = None,
    higher_is_better: bool = True,
    epochs: int = 10,
    batch_size: int | None = 32,
    shuffle: bool = True,
    seed: int = 0,
    max_steps: int | None = None,
    target: float | None = None,
    early_stopping: int | None = None,
    divergence_factor: float = 1e3,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    scheduler: Any | None = None,
    plateau: Any | None = None,
    eval_every: int | None = None,
    train_eval: tuple[Tensor, Tensor] | None = None,
    diagnostics_every: int | None = None,
    writer: Any | None = None,
) -> FitResult:
    """Train ``model`` with ``optimizer`` on ``train = (inputs, targets)``.

    ``metric`` (e.g. :func:`accuracy`) is computed on ``val`` each epoch, together with the
    validation loss, so overfitting shows as a gap between ``train_loss`` and ``val_loss``.
    ``target``: the first step/second at which the validation metric reaches it is recorded
    (``higher_is_better`` says which way). ``early_stopping=k`` stops after k epochs without a
    better validation metric. A training loss that is non-finite or above
    ``divergence_factor`` times the first loss stops the run as diverged.
    ``checkpoint``: a file written atomically after every epoch; with ``resume=True`` an
    existing checkpoint is loaded and training continues where it stopped.
    ``scheduler`` (an :class:`optimlab.schedules.Scheduler` or a torch LR scheduler) is stepped
    after every optimizer step; ``plateau`` (:class:`optimlab.schedules.ReduceOnPlateau` or
    torch's ``ReduceLROnPlateau``) after every epoch with the validation metric (the validation
    loss without ``metric``). Both are checkpointed with the run.
    Optimizers with ``train()``/``eval()`` modes (schedule-free) train in train mode, validate in
    eval mode and are left in eval mode, so the model ends holding the weights that were
    validated; checkpoints are written in train mode (the optimizer's state_dict records the
    mode) and resume exactly.
    ``eval_every=k``: evaluate also at every ``k``-th step within an epoch (a finer time to target;
    early stopping and ``plateau`` then count evaluations, not epochs). ``train_eval`` (the
    training set or a fixed part of it): its loss and metric at every evaluation, at the same
    points as validation's (``train_eval_loss``, ``train_eval_metric``). Each evaluation is a
    record in ``epoch_records`` (``epoch`` is fractional mid-epoch; ``train_loss`` averages the
    steps since the previous one) and calls ``on_epoch``. ``seconds`` count training only: the
    clock stops while evaluating.
    ``diagnostics_every=k``: the optimizer's diagnostics (gradient, update and parameter norms,
    effective learning rate, clipped/skipped steps: :mod:`optimlab.diagnostics`) every k steps,
    in ``result.diagnostics``. ``writer`` (a TensorBoard ``SummaryWriter``, or anything with
    ``add_scalar(tag, value, step)``) receives each evaluation's losses and metrics and the
    diagnostics.
    """
    x, y = train
    n = len(x)
    if n == 0:
        raise ValueError("the training set is empty")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size} (use None for full batch, 1 for per-example)")
    if plateau is not None:
        _check_plateau(plateau, val, metric is not None and higher_is_better)
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"Invalid eval_every: {eval_every} (steps between evaluations, at least 1; None: once per epoch)")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    result = FitResult()
    first_loss: float | None = None
    best_metric: float | None = None
    bad_epochs = 0
    start_epoch = 0

    if resume and checkpoint is not None and os.path.exists(checkpoint):
        ck = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        result = ck["result"]
        first_loss, best_metric, bad_epochs = ck["first_loss"], ck["best_metric"], ck["bad_epochs"]
        for obj, key in ((scheduler, "scheduler"), (plateau, "plateau")):
            if obj is not None and ck.get(key) is not None:
                obj.load_state_dict(ck[key])
        start_epoch = result.epochs
        if result.diverged or result.stopped_early:
            _mode_switch(optimizer, "eval")
            return result

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start_epoch, unit="epoch", leave=False)
    t_start = time.perf_counter() - result.seconds
    tracker = _track(optimizer, diagnostics_every, writer, result)

    def evaluation(epoch_done: float, losses: list[float]) -> dict[str, Any]:
        """One evaluation point: the mean training loss since the last one, the loss and metric
        on ``train_eval`` and ``val``, the target, plateau and early-stopping bookkeeping."""
        nonlocal best_metric, bad_epochs, t_start
        t_eval = time.perf_counter()
        record = {"epoch": epoch_done, "step": result.steps, "seconds": t_eval - t_start,
                  "train_loss": sum(losses) / len(losses)}
        if val is not None or train_eval is not None:
            _mode_switch(optimizer, "eval")
            if train_eval is not None:
                record["train_eval_loss"], record["train_eval_metric"] = evaluate(model, loss_fn, train_eval, metric)
            if val is not None:
                record["val_loss"], record["val_metric"] = evaluate(model, loss_fn, val, metric)
            _mode_switch(optimizer, "train")
        if val is not None:
            m = record["val_metric"] if metric is not None else record["val_loss"]
            hib = higher_is_better if metric is not None else False
            if target is not None and result.steps_to_target is None and (m >= target if hib else m <= target):
                result.steps_to_target, result.seconds_to_target = result.steps, record["seconds"]
            if plateau is not None:
                plateau.step(m)
            if best_metric is None or (m > best_metric if hib else m < best_metric):
                best_metric, bad_epochs = m, 0
            else:
                bad_epochs += 1
        result.epoch_records.append(record)
        if writer is not None:
            for key in ("train_loss", "train_eval_loss", "train_eval_metric", "val_loss", "val_metric"):
                if record.get(key) is not None:
                    writer.add_scalar(key.replace('_', '/', 1), record[key], result.steps)
        if on_epoch is not None:
            on_epoch(record)
        t_start += time.perf_counter() - t_eval  # the training clock stops while evaluating
        return record

    model.train()
    _mode_switch(optimizer, "train")
    try:
        for epoch in range(start_epoch, epochs):
            order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
            bs = n if batch_size is None else batch_size
            epoch_losses = []
            for i in range(0, n, bs):
                idx = order[i:i + bs]
                xb, yb = x[idx], y[idx]

                loss = step_on_batch(model, optimizer, loss_fn, xb, yb)
                if scheduler is not None:
                    scheduler.step()
                result.steps += 1
                result.step_losses.append(loss)
                epoch_losses.append(loss)
                if first_loss is None:
                    first_loss = loss
                if not math.isfinite(loss) or loss > divergence_factor * max(abs(first_loss), 1e-8):
                    result.diverged = True
                    result.message = _divergence_advice(optimizer, loss, first_loss, epoch, result.steps)
                    break
                if max_steps is not None and result.steps >= max_steps:
                    break
                if eval_every is not None and result.steps % eval_every == 0 and i + bs < n:
                    evaluation(epoch + (i + bs) / n, epoch_losses)
                    epoch_losses = []
            if result.diverged:
                result.epochs = epoch + 1
                break
            record = evaluation(epoch + 1, epoch_losses)
            result.epochs = epoch + 1
            result.seconds = time.perf_counter() - t_start
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.4g}")
            if early_stopping is not None and bad_epochs >= early_stopping:
                result.stopped_early = True
                result.message = f"stopped early: no better validation result for {early_stopping} epochs"
            if checkpoint is not None:
                save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                             "result": result, "first_loss": first_loss, "best_metric": best_metric,
                             "bad_epochs": bad_epochs,
                             "scheduler": None if scheduler is None else scheduler.state_dict(),
                             "plateau": None if plateau is None else plateau.state_dict()}, checkpoint)
            if result.stopped_early or (max_steps is not None and result.steps >= max_steps):
                break
    finally:
        if bar is not None:
            bar.close()
        if tracker is not None:
            tracker.close()
    result.seconds = time.perf_counter() - t_start
    _mode_switch(optimizer, "eval")  # the model keeps the weights validation saw (schedule-free: x)
    return result


def _track(optimizer, every: int | None, writer, result: FitResult):
    """Diagnostics for this fit: a tracker appending to ``result.diagnostics``, counting steps
    from ``result.steps`` (so a resumed run continues the numbering); ``None`` without
    ``every``."""
    if every is None:
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer={type(writer).__name__} has no add_scalar(tag, value, step): pass a "
                            "torch.utils.tensorboard.SummaryWriter or an object with that method")
        return None
    from .diagnostics import Tracker

    tracker = Tracker(optimizer, every, writer)
    tracker.steps, tracker.history = result.steps, result.diagnostics
    return tracker


def _check_plateau(plateau, val, higher_is_better: bool) -> None:
    """A plateau rule needs the validation metric, watched in the direction that is better."""
    if val is None:
        raise ValueError("plateau= is stepped with the validation metric each epoch; pass val=(x_val, y_val)")
    want = "max" if higher_is_better else "min"
    mode = getattr(plateau, "mode", want)
    if mode != want:
        raise ValueError(f"plateau has mode={mode!r} but the validation metric is "
                         f"{'higher' if higher_is_better else 'lower'}-is-better; create it with mode={want!r}")


def _divergence_advice(optimizer, loss: float, first: float, epoch: int, step: int) -> str:
    lrs = sorted({g["lr"] for g in optimizer.param_groups if "lr" in g})
    what = "became non-finite" if not math.isfinite(loss) else f"exploded to {loss:.3g} (first loss {first:.3g})"
    lr_txt = f" at lr={lrs[0]:g}" if len(lrs) == 1 else ""
    smaller = f"; try lr={lrs[0] / 10:g} or smaller" if len(lrs) == 1 else "; try a smaller learning rate"
    return (f"diverged: the training loss {what} at epoch {epoch + 1}, step {step}{lr_txt}{smaller}, "
            "or clip gradients (clip_grad_norm=1.0)")
