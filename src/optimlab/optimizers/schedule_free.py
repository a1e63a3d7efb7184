"""Schedule-Free SGD and AdamW: no learning-rate schedule. The weights you evaluate are an
average of the iterates (Defazio et al., "The Road Less Scheduled", NeurIPS 2024).

    y_t     = (1 - b) z_t + b x_t                   parameters in train mode: gradients are taken here
    z_{t+1} = z_t - lr_t (u_t + weight_decay y_t)   u_t: the base direction, at y_t
    x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}   parameters in eval mode: evaluate and save these
    c_{t+1} = w_t / sum_{i<=t} w_i,   w_t = t^r max_{i<=t}(lr_i)^weight_lr_power
    lr_t    = lr min(1, t / warmup_steps),   b = momentum (SGD), betas[0] (AdamW)
    u_t     = g_t (SGD),   g_t / (sqrt(v_t / (1 - b2^t)) + eps) (AdamW; v_t Adam's second moment)

The defaults, the weighting and the placement of weight decay (at ``y``, inside the ``z`` step) are
those of the authors' package, ``schedulefree`` (facebookresearch/schedule_free: ``SGDScheduleFree``,
``AdamWScheduleFree``), and the two agree to rounding (``tests/test_authors_packages.py``).
AdamW's bias correction divides ``v``, as ``AdamWScheduleFree`` does since schedulefree 1.3 (and
optax's ``schedule_free_adamw``, which has no ``r`` or ``warmup_steps`` of its own).
``bias_correction="lr"`` selects the paper's form instead (schedulefree's
``AdamWScheduleFreePaper``): ``u_t = g_t / (sqrt(v_t) + eps)`` and ``lr_t`` multiplied by
``sqrt(1 - b2^t)``, which then also weighs the average (see :mod:`optimlab.transforms.schedule_free`).

**Two modes.** The parameters hold ``y`` in train mode (the default) and ``x`` in eval mode:
call ``optimizer.train()`` before training and ``optimizer.eval()`` before evaluating or saving
the model, as with ``model.train()`` / ``model.eval()``. ``step()`` in eval mode raises;
``optimlab.train.evaluate`` warns when it is given a model whose weights are still ``y``;
``optimlab.train.fit`` switches around validation and ends in eval mode. ``state_dict()``
records the mode and ``load_state_dict()`` restores it, so a checkpoint of the model and the
optimizer saved in either mode resumes exactly (load both, then call ``train()``).

Per-parameter histories: like torch.optim's step counts, each parameter's averaging weights
(``weight_sum``, ``lr_max``) count only the steps in which it had a gradient (the reference
keeps one count per param group; the two agree when every parameter gets a gradient each step).

optimlab options: ``clip_grad_value``, ``clip_param_grad_norm``, ``clip_grad_norm``, ``l2``,
``decay_mask`` (applies to ``weight_decay``), ``accumulate_steps``, ``skip_nonfinite``,
``compile`` and ``maximize`` work as everywhere. ``decoupled_decay``, ``independent_decay`` and
``l1`` are refused: they would act on ``y`` only and desynchronise it from ``z``; use
``weight_decay``.

Example::

    >>> opt = optimlab.ScheduleFreeAdamW(model.parameters(), lr=2.5e-3, warmup_steps=100)
    >>> opt.train(); ...training steps...; opt.eval(); evaluate(model); torch.save(...)
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch

from ..core import check_beta, check_betas, check_int, check_nonneg
from ..registry import register
from ..transforms.regularize import add_decayed_weights
from ..transforms.schedule_free import (HISTORY_KEYS, history_scalar, interpolation, scale_by_second_moment,
                                        schedule_free_average, to_average_, to_interpolation_)
from ._base import Optimizer

__all__ = ["ScheduleFreeSGD", "ScheduleFreeAdamW"]

#: live schedule-free optimizers, so that evaluation code can tell whether a model holds y
_LIVE: "weakref.WeakSet[_ScheduleFree]" = weakref.WeakSet()


def warn_if_training_weights(params, doing: str = "evaluating") -> bool:
    """Warn (and return True) if any of ``params`` is the training point ``y`` of a schedule-free
    optimizer in train mode, i.e. not the averaged weights ``x`` that should be evaluated."""
    ids = {id(p) for p in params}
    for opt in list(_LIVE):
        if opt.train_mode and any(id(p) in ids and "z" in opt.state.get(p, ())
                                  for g in opt.param_groups for p in g["params"]):
            warnings.warn(
                f"{doing} a model whose weights are the training point y of {type(opt).__name__}, which is in "
                "train mode; call optimizer.eval() first to use the averaged weights x (and optimizer.train() "
                "before training again)", UserWarning, stacklevel=3)
            return True
    return False


class _ScheduleFree(Optimizer):
    """The train/eval modes shared by the schedule-free optimizers."""

    _adam = False  # b from betas[0] (AdamW) or momentum (SGD)

    def __init__(self, params, defaults: dict[str, Any], **options: Any) -> None:
        self._train_mode = True
        super().__init__(params, defaults, lr_key=None, **options)
        _LIVE.add(self)

    @property
    def train_mode(self) -> bool:
        """True while the parameters hold ``y`` (training), False while they hold ``x``."""
        return self._train_mode

    @torch.no_grad()
    def eval(self) -> None:
        """Put the averaged weights ``x`` into the parameters (for evaluation and saving)."""
        if self._train_mode:
            self._switch(to_average_)
            self._train_mode = False

    @torch.no_grad()
    def train(self) -> None:
        """Put the training point ``y`` back into the parameters (before training steps)."""
        if not self._train_mode:
            self._switch(to_interpolation_)
            self._train_mode = True

    def _switch(self, fn) -> None:
        for group in self.param_groups:
            started = [(p, self.state[p]["z"]) for p in group["params"] if "z" in self.state.get(p, ())]
            if started:
                params, zs = map(list, zip(*started))
                fn(params, zs, interpolation(group, self._adam))

    def step(self, closure=None):
        if not self._train_mode:
            raise RuntimeError(
                f"{type(self).__name__}.step() was called in eval mode, where the parameters hold the averaged "
                "weights x, not the training point y: call optimizer.train() before training (and "
                "optimizer.eval() before evaluating or saving the model)")
        return super().step(closure)

    # -- the mode travels with the state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["optimlab"]["train_mode"] = self._train_mode
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the state and the mode it was saved in (load the model saved with it too: its
        parameters hold ``y`` or ``x`` accordingly). The averaging weights' history is restored
        in float64 (torch's loader casts state tensors to the parameter's dtype)."""
        mode = state_dict.get("optimlab", {}).get("train_mode")
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved = {i: {k: v for k, v in st.items() if k in HISTORY_KEYS}
                 for i, st in state_dict["state"].items() if isinstance(st, dict)}
        super().load_state_dict(state_dict)
        for i, p in zip(ids, (p for g in self.param_groups for p in g["params"])):
            for k, v in saved.get(i, {}).items():
                self.state[p][k] = history_scalar(v)
        if mode is not None:
            self._train_mode = bool(mode)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_train_mode", True)
        _LIVE.add(self)

    # -- checks and chain --------------------------------------------------------------------------
    def check_group(self, group):
        super().check_group(group)
        for key in ("decoupled_decay", "independent_decay", "l1"):
            if group[key] != 0:
                raise ValueError(
                    f"{type(self).__name__} does not support the option {key}={group[key]}: it would act on the "
                    "interpolated weights y alone, out of step with z; use weight_decay")
        check_int("warmup_steps", group["warmup_steps"])
        check_nonneg("r", group["r"])
        check_nonneg("weight_lr_power", group["weight_lr_power"])


@register("schedule-free-sgd")
class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-Free SGD: ``z`` takes plain SGD steps (with coupled ``weight_decay`` at ``y``),
    ``x`` averages them, gradients are taken at ``y = (1 - momentum) z + momentum x``.

    See the module docstring for the rule, the modes and the options; defaults as the reference's
    ``SGDScheduleFree``. Example: ``optimlab.ScheduleFreeSGD(model.parameters(), lr=1.0)``.
    """

    low_precision = ("param_rounding",)  # its state holds no gradient moments

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, *, foreach=None, maximize=False, **options):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                        weight_lr_power=weight_lr_power, foreach=foreach, maximize=maximize)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_beta("momentum", group["momentum"])
        if not group["momentum"] > 0:
            raise ValueError(f"Invalid momentum: {group['momentum']} (must be in (0, 1): eval() divides by it)")

    def core(self, group):
        return self.weight_decay(group) + [schedule_free_average()]


@register("schedule-free-adamw")
class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-Free AdamW: ``z`` takes Adam steps without momentum
    (``g / (sqrt(v / (1 - b2^t)) + eps)``, plus ``weight_decay * y``), ``x`` averages them,
    gradients are taken at ``y = (1 - b1) z + b1 x``.

    ``bias_correction``: ``"v"`` (default) divides ``v`` by ``1 - b2^t``, as schedulefree's
    ``AdamWScheduleFree`` (since version 1.3) and optax; ``"lr"`` multiplies the step size by
    ``sqrt(1 - b2^t)`` instead, which also changes the averaging weights, as the paper's
    Algorithm 1 and schedulefree's ``AdamWScheduleFreePaper``.

    See the module docstring for the rule, the modes and the options; defaults as the authors'
    ``AdamWScheduleFree``. Example: ``optimlab.ScheduleFreeAdamW(model.parameters(), lr=2.5e-3)``.
    """

    _adam = True

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, bias_correction="v", *, foreach=None, maximize=False, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                        weight_lr_power=weight_lr_power, bias_correction=bias_correction, foreach=foreach,
                        maximize=maximize)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_betas("betas", group["betas"])
        if not group["betas"][0] > 0:
            raise ValueError(f"Invalid betas[0]: {group['betas'][0]} (must be in (0, 1): eval() divides by it)")
        check_nonneg("eps", group["eps"])
        if group["bias_correction"] not in ("v", "lr"):
            raise ValueError(f"Invalid bias_correction: {group['bias_correction']!r} (expected 'v': divide v by "
                             "1 - b2^t, as schedulefree's AdamWScheduleFree; or 'lr': multiply the step size by "
                             "sqrt(1 - b2^t), as the paper and AdamWScheduleFreePaper)")

    def core(self, group):
        on_lr = group["bias_correction"] == "lr"
        decay = [add_decayed_weights("weight_decay", group["decay_mask"])] if group["weight_decay"] != 0 else []
        return ([scale_by_second_moment(bias_correction=not on_lr)] + decay
                + [schedule_free_average(adam=True, lr_bias_correction=on_lr)])
