"""The learning-rate finder (LR range test, Smith 2017, "Cyclical Learning Rates for Training
Neural Networks", section 3.3).

Train for ``steps`` mini-batches while the learning rate grows from ``start`` to ``end``
(exponentially or linearly), record the loss of every batch, smooth it with a bias-corrected
exponential moving average and stop once the smoothed loss exceeds ``diverge_factor`` times its
minimum. The model and the optimizer are then put back exactly as they were -- also when the
sweep raises -- so the finder can run just before training.

A suggestion rule is a pure function of ``(lrs, losses)`` (the smoothed losses):

* :func:`steepest`         -- where the loss falls fastest against log(lr), on the way down;
* :func:`valley`           -- the middle of the descent, from where the loss has made a fifth of
                              its fall to its minimum;
* :func:`min_over_10`      -- the learning rate of the lowest loss, divided by 10;
* :func:`bounded_steepest` -- steepest, kept within [min/10, min/3]: the default, ``suggested_lr``.

A curve that never falls by 3 % gives no suggestion (``None``). These are heuristics: on
digits-mlp and breast-cancer-logreg, with SGD and Adam, the default lands within 3x of the best
rate of a learning-rate sweep (:mod:`optimlab.lab.sweep`), where each other rule misses by more
than 3x on one of the four; with Adam on a CNN it came out ~6x too large. The defaults below
(``smooth=0.9``, ``end=100``, ``steps=100``) are the ones it was checked with: the smoothed
curve lags the raw one by ~10 steps (an EMA of 0.98 would lag ~50, half the range test), and
on a convex full-batch problem the loss is still falling at lr=10.

It runs on your own model, optimizer (optimlab's or torch.optim's) and data -- tensors or a
``DataLoader`` -- in one line, like torch-lr-finder or fastai's ``lr_find()``; batches are moved
to the model's device.

Example::

    >>> res = find_lr(model, optimlab.Adam(model.parameters()), F.cross_entropy, (x, y))
    >>> res = optimlab.find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), loader)
    >>> res.suggested_lr, res.suggestions["steepest"]
    >>> res.plot().savefig("lr-find.png")
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .train import step_on_batch

__all__ = ["find_lr", "LRFinderResult", "lr_schedule", "smooth_losses", "suggest", "steepest", "valley", "min_over_10",
           "bounded_steepest", "RULES", "DEFAULT_RULE", "MIN_DROP"]


# --- the rules: pure functions of (lrs, losses) --------------------------------------------------
def smooth_losses(losses: Sequence[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average: ``a_t = beta a_{t-1} + (1 - beta) l_t``,
    reported as ``a_t / (1 - beta^t)`` so the first values are not pulled towards 0. A
    non-finite loss makes every later value non-finite."""
    out, avg = [], 0.0
    for t, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * float(loss)
        out.append(avg / (1 - beta**t) if beta > 0 else float(loss))
    return out


#: a curve whose smoothed loss never falls this fraction below its start gives no suggestion
MIN_DROP = 0.03


def _descent(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The curve up to its first non-finite loss (a diverged sweep ends with inf/nan); raises
    ``ValueError`` when it is too short or never falls by :data:`MIN_DROP` (a flat curve that
    then diverges: any "suggestion" would be noise)."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses differ in length ({len(lrs)} vs {len(losses)})")
    bad = np.flatnonzero(~np.isfinite(losses))
    n = bad[0] if len(bad) else len(losses)
    if n < 2:
        raise ValueError(f"need at least 2 finite losses to suggest a learning rate, got {n}")
    lrs, losses = lrs[:n], losses[:n]
    drop = losses[0] - losses.min()
    if not drop > MIN_DROP * abs(losses[0]):
        raise ValueError(f"the loss fell by only {drop:.3g} from {losses[0]:.4g} before the sweep ended: no learning "
                         "rate to suggest; run more steps (a longer sweep) or check the model and data")
    return lrs, losses


def steepest(lrs: Sequence[float], losses: Sequence[float], skip_start: int = 0) -> float:
    """The learning rate where ``d loss / d log(lr)`` is most negative, looking only at the
    curve from ``skip_start`` up to the loss's minimum (past it the loss is rising)."""
    lr, loss = _descent(lrs, losses)
    end = int(np.argmin(loss)) + 1
    lo = min(skip_start, max(end - 2, 0))
    lr, loss = lr[lo:end], loss[lo:end]
    lr, loss = lr[lr > 0], loss[lr > 0]  # a linear sweep may start at 0, which has no log
    if len(lr) < 2:  # the loss only rose: the first learning rate is the best guess
        return float(lr[0])
    grad = np.gradient(loss, np.log(lr))
    return float(lr[int(np.argmin(grad))])


def valley(lrs: Sequence[float], losses: Sequence[float], entry: float = 0.2) -> float:
    """The middle (geometric) of the valley's descent: from the first learning rate at which
    the loss has made ``entry`` (a fifth) of its total fall to its minimum, to the minimum.

    (The flat start, where the loss has not yet moved, is not part of the valley; a
    longest-decreasing-run definition would start there on a smooth, noise-free curve.)"""
    lr, loss = _descent(lrs, losses)
    low = int(np.argmin(loss))
    level = loss[0] - entry * (loss[0] - loss[low])
    first = int(np.argmax(loss[:low + 1] <= level))
    return float(math.sqrt(lr[first] * lr[low]))


def min_over_10(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The learning rate of the lowest loss, divided by 10 (one decade back from the edge)."""
    lr, loss = _descent(lrs, losses)
    return float(lr[int(np.argmin(loss))] / 10)


def bounded_steepest(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """:func:`steepest`, kept between a tenth and a third of the learning rate of the lowest
    loss (the edge of divergence).

    Steepest descent alone lands far left of the best rate where the loss declines slowly over
    several decades (full-batch logistic regression), and right at the edge where the loss
    dips just before a spike (a CNN with Adam); min/10 alone is too cautious where the loss
    drops sharply just before it diverges (SGD on a small MLP)."""
    edge = 10 * min_over_10(lrs, losses)
    return min(max(steepest(lrs, losses), edge / 10), edge / 3)


RULES: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "steepest": steepest, "valley": valley, "min_over_10": min_over_10, "bounded_steepest": bounded_steepest}
# The default was chosen against LR sweeps on digits-mlp and breast-cancer-logreg with SGD and Adam
# (the only rule within 3x of the sweep's best in all four; see tests/test_lr_tools.py).
DEFAULT_RULE = "bounded_steepest"


def lr_schedule(start: float, end: float, steps: int, mode: str = "exp") -> list[float]:
    """The finder's learning rates: ``start (end/start)^(i/(steps-1))`` or linear."""
    if mode not in ("exp", "linear"):
        raise ValueError(f"Invalid mode: {mode!r} (use 'exp' or 'linear')")
    if not (start > 0 if mode == "exp" else start >= 0) or not end > start:
        raise ValueError(f"Invalid learning-rate range: start={start}, end={end} (need 0 < start < end; "
                         "start may be 0 for mode='linear')")
    if steps < 2:
        raise ValueError(f"Invalid steps: {steps} (need at least 2)")
    t = np.linspace(0.0, 1.0, steps)
    lrs = start * (end / start) ** t if mode == "exp" else start + (end - start) * t
    return [float(v) for v in lrs]


# --- the result --------------------------------------------------------------------------------------
@dataclasses.dataclass
class LRFinderResult:
    """One range test: the learning rates tried, the raw and smoothed loss at each, every rule's
    suggestion, the chosen one, and the learning rate at which the sweep stopped on divergence
    (``None`` if it reached ``end``)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float | None]
    suggested_lr: float | None
    rule: str
    diverged_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        clean = lambda xs: [v if math.isfinite(v) else None for v in xs]  # noqa: E731  JSON has no NaN
        return {"suggested_lr": self.suggested_lr, "rule": self.rule, "suggestions": dict(self.suggestions),
                "diverged_at": self.diverged_at, "lrs": self.lrs, "losses": clean(self.losses),
                "smoothed": clean(self.smoothed)}

    def plot(self, ax=None, title: str | None = None):
        """Loss (raw and smoothed) against lr, every rule's suggestion marked; returns the figure."""
        from .plots import lr_finder

        return lr_finder(self.lrs, self.losses, self.smoothed, self.suggestions, chosen=self.rule,
                         diverged_at=self.diverged_at, ax=ax, title=title)


def suggest(lrs: Sequence[float], smoothed: Sequence[float], rules: Iterable[str] = RULES) -> dict[str, float | None]:
    """Every rule's suggestion (``None`` where the curve is too short or never falls)."""
    out: dict[str, float | None] = {}
    for name in rules:
        try:
            out[name] = RULES[name](lrs, smoothed)
        except ValueError:
            out[name] = None
    return out


# --- the sweep -----------------------------------------------------------------------------------------
def _batches(data, batch_size: int | None, gen: torch.Generator):
    """Endless mini-batches: from ``(inputs, targets)`` tensors, reshuffled every pass; from
    any other iterable of batches (a DataLoader), cycled."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        n = len(x)
        bs = n if batch_size is None else min(batch_size, n)
        while True:
            order = torch.randperm(n, generator=gen)
            for i in range(0, n - bs + 1, bs):  # whole batches only: the loss scale stays comparable
                idx = order[i:i + bs]
                yield x[idx], y[idx]
    else:
        seen = 0
        while True:
            empty = True
            for batch in data:
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    raise ValueError(f"find_lr needs (inputs, targets) batches; the data yielded a "
                                     f"{type(batch).__name__}")
                empty = False
                seen += 1
                yield batch[0], batch[1]
            if empty:
                raise ValueError(f"the data for find_lr ran out after {seen} batches: pass a DataLoader (it can be "
                                 "iterated again) or (inputs, targets) tensors, or fewer steps" if seen else
                                 "the data for find_lr yielded no batches")


def _to(x, device: torch.device):
    return x.to(device) if isinstance(x, Tensor) and x.device != device else x


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, ratios: list[float]) -> None:
    for group, ratio in zip(optimizer.param_groups, ratios):
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr * ratio)
        else:
            group["lr"] = lr * ratio


def find_lr(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data,
    *,
    start: float = 1e-7,
    end: float = 100.0,
    steps: int = 100,
    mode: str = "exp",
    smooth: float = 0.9,
    diverge_factor: float = 4.0,
    batch_size: int | None = 32,
    seed: int = 0,
    rule: str = DEFAULT_RULE,
) -> LRFinderResult:
    """Run the LR range test on ``model`` with ``optimizer`` and put both back afterwards.

    ``data`` is ``(inputs, targets)`` (mini-batches of ``batch_size``, ``None`` for the full
    batch, drawn with ``seed``) or any iterable of ``(inputs, targets)`` batches, such as a
    ``DataLoader`` (its own batch size; cycled when shorter than ``steps``); tensors are moved to
    the model's device. Returns an :class:`LRFinderResult`: ``suggested_lr`` (``None`` when the
    loss never fell), every rule's suggestion, the curve and ``plot()``. The learning
    rate of every param group follows the sweep (groups keep their ratios to the first group's
    rate). The sweep stops early once the smoothed loss exceeds ``diverge_factor`` times its
    minimum, or any loss is non-finite. Model and optimizer state, gradients, the param groups'
    learning rates, train/eval mode and torch's RNG are restored bit for bit, also on error.
    """
    lrs = lr_schedule(start, end, steps, mode)
    if not 0 <= smooth < 1:
        raise ValueError(f"Invalid smooth: {smooth} (need 0 <= smooth < 1)")
    if not diverge_factor > 1:
        raise ValueError(f"Invalid diverge_factor: {diverge_factor} (need > 1)")
    if rule not in RULES:
        raise ValueError(f"Invalid rule: {rule!r} (known: {', '.join(RULES)})")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size} (use None for the full batch)")
    if not optimizer.param_groups or "lr" not in optimizer.param_groups[0]:
        raise ValueError("find_lr needs an optimizer whose param groups have an 'lr'")

    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    grads = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    was_training = model.training
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    device = next((p.device for p in model.parameters()), None)
    base = float(optimizer.param_groups[0]["lr"])
    ratios = [float(g["lr"]) / base if base > 0 else 1.0 for g in optimizer.param_groups]
    tried: list[float] = []
    losses: list[float] = []
    diverged_at = None
    try:
        torch.manual_seed(seed)
        model.train()
        batches = _batches(data, batch_size, torch.Generator().manual_seed(seed))
        best = math.inf
        avg = 0.0
        for t, lr in enumerate(lrs, 1):
            xb, yb = next(batches)
            if device is not None:
                xb, yb = _to(xb, device), _to(yb, device)
            _set_lr(optimizer, lr, ratios)

            loss = step_on_batch(model, optimizer, loss_fn, xb, yb)
            tried.append(lr)
            losses.append(loss)
            avg = smooth * avg + (1 - smooth) * loss
            smoothed = avg / (1 - smooth**t)
            best = min(best, smoothed)
            # "above diverge_factor x the minimum", written to hold for negative losses too
            if not math.isfinite(smoothed) or smoothed - best > (diverge_factor - 1) * max(abs(best), 1e-12):
                diverged_at = lr
                break
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        for p, g in grads:
            p.grad = g
        model.train(was_training)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

    smoothed_losses = smooth_losses(losses, smooth)
    suggestions = suggest(tried, smoothed_losses)
    return LRFinderResult(tried, losses, smoothed_losses, suggestions, suggestions[rule], rule, diverged_at)
