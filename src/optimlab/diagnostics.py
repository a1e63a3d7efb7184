"""Optimizer diagnostics: what each step did, per param group.

* ``grad_norm`` -- the L2 norm of the group's gradients (as the step read them, before any
  clipping), and per layer (parameter);
* ``update_norm`` -- the L2 norm of what the step changed, ``||p_after - p_before||``, and
  ``update_ratio = update_norm / param_norm`` (before the step): ~1e-3 is the usual healthy
  range, much larger means the step is too big for the weights (Karpathy's rule of thumb);
* ``effective_lr`` -- for adaptive methods, the step size each coordinate really gets,
  summarised over the group (min / median / mean / max): ``lr / (sqrt(v / (1 - beta2^t)) + eps)``
  for Adam-like state (``exp_avg_sq``, or ``max_exp_avg_sq`` with AMSGrad), ``lr / (sqrt(v) + eps)``
  for RMSprop (``square_avg``), ``lr / (sqrt(sum) + eps)`` for Adagrad (with its lr decay),
  ``lr sqrt(acc_delta + eps) / sqrt(square_avg + eps)`` for Adadelta; ``None`` otherwise;
* ``clipped_fraction`` / ``skipped_fraction`` -- the fraction of steps so far whose gradients the
  group's ``clip_grad_norm`` / ``clip_param_grad_norm`` / ``clip_grad_value`` rescaled, and that
  ``skip_nonfinite`` skipped (``optimizer.skipped_steps``).

``track(optimizer, every=k)`` (or ``optimizer.track_diagnostics(every=k)``) records them every
``k`` steps through torch's step hooks -- so it works for any ``torch.optim.Optimizer``, and with
closures (the gradients are read after the step, the parameters are copied before it) -- and
writes them to ``writer.add_scalar`` (a TensorBoard ``SummaryWriter``, or anything with that
method). ``optimizer.diagnostics()`` returns the latest record; untracked, it reads what it can
now (gradients, parameters, state: no update norm).

Example::

    >>> opt = optimlab.Adam(model.named_parameters(), lr=1e-3)
    >>> opt.track_diagnostics(every=10, writer=SummaryWriter("runs/x"))
    >>> ...train...
    >>> opt.diagnostics()[0]["update_ratio"], opt.diagnostics()[0]["effective_lr"]["median"]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["track", "read", "Tracker", "compact", "Diagnosable", "SCALARS"]

#: the per-group numbers that are plain floats (what :func:`compact` keeps and writers receive)
SCALARS = ("lr", "grad_norm", "param_norm", "update_norm", "update_ratio", "clipped_fraction", "skipped_fraction")


def _norms(tensors: list[Tensor]) -> list[float]:
    """L2 norms, computed in float64 where the tensor is real floating point (one sync)."""
    if not tensors:
        return []
    return torch.stack([torch.linalg.vector_norm(t.detach(), dtype=torch.float64 if not t.is_complex() else None)
                        .to(torch.float64) for t in tensors]).tolist()


def _total(norms: list[float]) -> float | None:
    return math.sqrt(sum(n * n for n in norms)) if norms else None


def _layer_names(group: dict, gi: int) -> list[str]:
    names = group.get("param_names")
    return list(names) if names else [f"group{gi}.param{i}" for i in range(len(group["params"]))]


def _effective_lr(group: dict, state: dict) -> dict[str, float] | None:
    """min / median / mean / max over the group's coordinates of the per-coordinate step size an
    adaptive method applies; ``None`` for a method without a second-moment state."""
    lr = group.get("lr")
    if lr is None:
        return None
    lr = float(lr)
    eps = group.get("eps", 1e-8)
    eps = float(eps) if isinstance(eps, (int, float, Tensor)) else 1e-8  # Adafactor's is a pair
    parts = []
    for p in group["params"]:
        st = state.get(p) or {}
        step = st.get("step")
        t = float(step) if step is not None else None
        if "acc_delta" in st and "square_avg" in st:  # Adadelta
            part = lr * (st["acc_delta"] + eps).sqrt() / (st["square_avg"] + eps).sqrt()
        elif "exp_avg_sq" in st or "max_exp_avg_sq" in st:  # Adam family
            v = st.get("max_exp_avg_sq", st.get("exp_avg_sq"))
            betas = group.get("betas")
            if isinstance(betas, (tuple, list)) and len(betas) > 1 and t:
                v = v / (1 - float(betas[1]) ** t)
            part = lr / (v.sqrt() + eps)
        elif "square_avg" in st:  # RMSprop
            part = lr / (st["square_avg"].sqrt() + eps)
        elif "sum" in st and isinstance(st["sum"], Tensor):  # Adagrad
            decayed = lr / (1 + (t - 1) * float(group.get("lr_decay", 0.0))) if t else lr
            part = decayed / (st["sum"].sqrt() + eps)
        else:
            continue
        if part.is_complex():
            part = part.abs()
        parts.append(part.detach().reshape(-1).to(torch.float64))
    if not parts:
        return None
    x = torch.cat(parts)
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return None
    return {"min": x.min().item(), "median": x.median().item(), "mean": x.mean().item(), "max": x.max().item()}


def _clipped(group: dict, grads: list[Tensor], global_norm: float | None) -> bool:
    """Whether the group's clipping options rescaled this step's gradients (the transforms'
    own tests: ``c / (N + 1e-6) < 1`` for the norms, an entry beyond ``c`` for the value)."""
    c = group.get("clip_grad_norm")
    if c is not None and global_norm is not None and float(c) / (global_norm + 1e-6) < 1:
        return True
    c = group.get("clip_param_grad_norm")
    if c is not None and any(float(c) / (n + 1e-6) < 1 for n in _norms(grads)):
        return True
    c = group.get("clip_grad_value")
    return c is not None and any(bool((g.detach().abs() > float(c)).any()) for g in grads)


def _clips(group: dict) -> bool:
    return any(group.get(k) is not None for k in ("clip_grad_norm", "clip_param_grad_norm", "clip_grad_value"))


def _grads(group: dict) -> tuple[list[int], list[Tensor]]:
    idx = [i for i, p in enumerate(group["params"]) if p.grad is not None]
    return idx, [group["params"][i].grad for i in idx]


def _group_numbers(opt: torch.optim.Optimizer, gi: int, group: dict, before: list[Tensor] | None,
                   clipped: int, skipped: int, steps: int) -> dict[str, Any]:
    names = _layer_names(group, gi)
    params = group["params"]
    idx, grads = _grads(group)
    g_norms = dict(zip(idx, _norms(grads)))
    ref = before if before is not None else [p.detach() for p in params]
    p_norms = _norms(ref)
    u_norms = _norms([p.detach() - b for p, b in zip(params, before)]) if before is not None else None
    layers = {}
    for i, name in enumerate(names):
        entry = {"grad_norm": g_norms.get(i), "param_norm": p_norms[i]}
        if u_norms is not None:
            entry["update_norm"] = u_norms[i]
            entry["update_ratio"] = u_norms[i] / p_norms[i] if p_norms[i] > 0 else None
        layers[name] = entry
    param_norm = _total(p_norms)
    update_norm = _total(u_norms) if u_norms is not None else None
    lr = group.get("lr")
    return {
        "group": gi,
        "lr": float(lr) if lr is not None else None,
        "grad_norm": _total(list(g_norms.values())),
        "param_norm": param_norm,
        "update_norm": update_norm,
        "update_ratio": update_norm / param_norm if update_norm is not None and param_norm else None,
        "effective_lr": _effective_lr(group, opt.state),
        "clipped_fraction": clipped / steps if steps else None,
        "skipped_fraction": skipped / steps if steps else None,
        "layers": layers,
    }


class Tracker:
    """Records the diagnostics of ``optimizer`` every ``every`` steps (hooks on its ``step``);
    ``history`` holds ``{"step": n, "groups": [...]}`` records. ``close()`` removes the hooks."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int = 1, writer: Any = None, prefix: str = "optimizer"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r}: diagnostics are recorded every k steps, k an integer >= 1")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer={type(writer).__name__} has no add_scalar(tag, value, step): pass a "
                            "torch.utils.tensorboard.SummaryWriter or an object with that method")
        self.optimizer, self.every, self.writer, self.prefix = optimizer, every, writer, prefix
        self.steps = 0
        self.history: list[dict[str, Any]] = []
        self._clipped = [0] * len(optimizer.param_groups)
        self._skipped, self._skipped_before = 0, 0
        self._before: list[list[Tensor]] | None = None
        self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def _pre(self, opt, args, kwargs) -> None:
        self._skipped_before = getattr(opt, "skipped_steps", 0)
        if (self.steps + 1) % self.every == 0:
            self._before = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]

    def _post(self, opt, args, kwargs) -> None:
        self.steps += 1
        skipped = getattr(opt, "skipped_steps", 0) != self._skipped_before
        self._skipped += skipped
        info = getattr(opt, "_step_info", {}) or {}
        for gi, group in enumerate(opt.param_groups):
            if gi >= len(self._clipped):
                self._clipped.append(0)
            if _clips(group) and not skipped:
                self._clipped[gi] += _clipped(group, _grads(group)[1], info.get("_global_grad_norm"))
        if self._before is None:
            return
        before, self._before = self._before, None
        groups = [_group_numbers(opt, gi, g, b, self._clipped[gi], self._skipped, self.steps)
                  for gi, (g, b) in enumerate(zip(opt.param_groups, before))]
        self.history.append({"step": self.steps, "groups": groups})
        if self.writer is not None:
            self._write(groups)

    def _write(self, groups: list[dict]) -> None:
        for g in groups:
            tag = f"{self.prefix}/group{g['group']}"
            for key in SCALARS:
                if g[key] is not None:
                    self.writer.add_scalar(f"{tag}/{key}", g[key], self.steps)
            if g["effective_lr"] is not None:
                self.writer.add_scalar(f"{tag}/effective_lr_median", g["effective_lr"]["median"], self.steps)

    def latest(self) -> list[dict[str, Any]] | None:
        return self.history[-1]["groups"] if self.history else None

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if getattr(self.optimizer, "_diagnostics", None) is self:
            self.optimizer._diagnostics = None


def track(optimizer: torch.optim.Optimizer, every: int = 1, writer: Any = None) -> Tracker:
    """Record ``optimizer``'s diagnostics every ``every`` steps (replacing an earlier tracker);
    returns the :class:`Tracker` (its ``history``; ``close()`` stops it)."""
    old = getattr(optimizer, "_diagnostics", None)
    if old is not None:
        old.close()
    tracker = Tracker(optimizer, every, writer)
    optimizer._diagnostics = tracker
    return tracker


def read(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Per param group, the latest tracked diagnostics; without tracking (or before the first
    tracked step), what can be read now -- gradient and parameter norms, effective learning
    rate -- with ``update_norm``, ``update_ratio`` and the fractions ``None``."""
    tracker = getattr(optimizer, "_diagnostics", None)
    latest = tracker.latest() if tracker is not None else None
    if latest is not None:
        return latest
    return [_group_numbers(optimizer, gi, g, None, 0, 0, 0) for gi, g in enumerate(optimizer.param_groups)]


def compact(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows ``{"step", "group", <SCALARS>, "effective_lr"}`` (the median) without the per-layer
    numbers: small enough for the lab's JSON records."""
    return [{"step": rec["step"], "group": g["group"], **{k: g[k] for k in SCALARS},
             "effective_lr": g["effective_lr"]["median"] if g["effective_lr"] else None}
            for rec in history for g in rec["groups"]]


class Diagnosable:
    """``track_diagnostics(every=1, writer=None)`` and ``diagnostics()`` for optimizer classes
    that are not :class:`~optimlab.core.ChainOptimizer` (which has its own)."""

    def track_diagnostics(self, every: int = 1, writer: Any = None) -> Tracker:
        return track(self, every, writer)

    def diagnostics(self) -> list[dict[str, Any]]:
        return read(self)
