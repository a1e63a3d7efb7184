"""Schedule-Free learning (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less
Scheduled", NeurIPS 2024): the momentum of SGD or Adam is replaced by an interpolation between a
base sequence ``z`` and its weighted average ``x``; the gradient is taken at the interpolation
``y``, and ``x`` is what one evaluates.

    y_t     = (1 - b) z_t + b x_t                         (the parameters while training)
    z_{t+1} = z_t - lr_t u_t                              (u_t: the base update, at y_t)
    x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},   c_{t+1} = w_t / (w_1 + ... + w_t)
    w_t     = t^r (max_{i<=t} lr_i)^weight_lr_power
    lr_t    = lr min(1, t / warmup_steps)
    u_t     = g_t (SGD),   g_t / (sqrt(v_t / (1 - b2^t)) + eps) (AdamW)

AdamW's bias correction divides ``v`` (``scale_by_second_moment(bias_correction=True)``), as in
schedulefree's ``AdamWScheduleFree`` since version 1.3 and in optax's ``schedule_free_adamw``.
The paper's Algorithm 1 (schedulefree's ``AdamWScheduleFreePaper``) instead puts
``sqrt(1 - b2^t)`` into the step size, ``lr_t = lr min(1, t / warmup_steps) sqrt(1 - b2^t)``
with ``u_t = g_t / (sqrt(v_t) + eps)`` (``schedule_free_average(lr_bias_correction=True)``): the
factor then also enters ``max lr_i`` and with it the averaging weights ``w_t``, which it makes
grow over the first ``~1 / (1 - b2)`` steps. The two part by about 0.2 (relative) within 150
steps on the tests' small net.

Only ``y`` (the parameters, in train mode) and ``z`` are stored, as in the reference
implementation (facebookresearch/schedule_free); one step moves ``y`` without forming ``x``::

    y_{t+1} = (1 - c) y_t + c z_{t+1} - lr_t (1 - c)(1 - b) u_t

and ``x = (y - (1 - b) z) / b`` is formed in place of ``y`` only when switching to eval mode
(:func:`to_average_`; :func:`to_interpolation_` goes back).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..core import Transform, axpy_, scale_

__all__ = ["scale_by_second_moment", "schedule_free_average"]


@dataclasses.dataclass(frozen=True)
class scale_by_second_moment(Transform):
    """``v <- b2 v + (1 - b2) g^2``, ``u <- g / (sqrt(v / (1 - b2^t)) + eps)`` with
    ``b2 = betas[1]``; without ``bias_correction``, ``u <- g / (sqrt(v) + eps)`` (the paper's
    Schedule-Free AdamW, which puts ``sqrt(1 - b2^t)`` into its step size instead).
    State: ``exp_avg_sq`` (like p)."""

    bias_correction: bool = True
    betas_key: str = "betas"
    eps_key: str = "eps"
    hyperparameters = ("betas", "eps")
    moment_state = {"exp_avg_sq": True}

    def init(self, p, group):
        return {"exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def scalars(self, group, step, host):
        b2 = float(group[self.betas_key][1])
        return {"b2": b2, "1-b2": 1.0 - b2, "eps": group[self.eps_key], "1-b2^t": 1.0 - b2**step}

    def update(self, u, s):
        v, g = u.state["exp_avg_sq"], u.updates
        scale_(v, s["b2"])
        axpy_(v, s["1-b2"], torch._foreach_mul(g, g))
        if self.bias_correction:
            denom = torch._foreach_div(v, s["1-b2^t"])
            torch._foreach_sqrt_(denom)
        else:
            denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, s["eps"])
        u.replace(torch._foreach_div(g, denom), fresh=True)


#: the averaging weights' history. The authors keep it in Python floats; the engine keeps host-side
#: state in 0-d tensors and writes into the ones it finds, so these are created in float64: rounded
#: to float32 (torch's dtype for such scalars) the average leaves the authors' by more than 1e-10
#: (relative) within two steps.
HISTORY_KEYS = ("weight_sum", "lr_max")


def history_scalar(value) -> torch.Tensor:
    """A history entry as a 0-d float64 CPU tensor (from a float or a loaded tensor)."""
    return torch.tensor(float(value), dtype=torch.float64)


@dataclasses.dataclass(frozen=True)
class schedule_free_average(Transform):
    """The Schedule-Free step: takes the base update ``u`` (the direction of the ``z`` step,
    before the learning rate) and moves ``z`` and the parameters ``y`` (see the module
    docstring). Use with ``lr_key=None``: the update it leaves is the whole change of ``y``.

    ``adam=False``: ``b = group["momentum"]``; ``adam=True``: ``b = betas[0]``, and with
    ``lr_bias_correction`` the step size carries ``sqrt(1 - betas[1]^t)`` (the paper's AdamW).
    Reads ``lr``, ``warmup_steps``, ``r``, ``weight_lr_power``.
    State: ``z`` (like p), and the host-side ``weight_sum`` (sum of the averaging weights) and
    ``lr_max`` (largest step size so far): 0-d float64 CPU tensors whatever the parameters'
    dtype (see :data:`HISTORY_KEYS`).
    """

    adam: bool = False
    lr_bias_correction: bool = False
    host_keys = HISTORY_KEYS

    @property
    def hyperparameters(self):
        return ("lr", "betas" if self.adam else "momentum", "warmup_steps", "r", "weight_lr_power")

    def init(self, p, group):
        return {"z": p.detach().clone(memory_format=torch.preserve_format),
                "weight_sum": history_scalar(0.0), "lr_max": history_scalar(0.0)}

    def scalars(self, group, step, host):
        b = interpolation(group, self.adam)
        warmup = group["warmup_steps"]
        lr = float(group["lr"]) * (step / warmup if step <= warmup else 1.0)
        if self.lr_bias_correction:
            lr *= math.sqrt(1.0 - float(group["betas"][1]) ** step)
        lr_max = host["lr_max"] = max(float(host["lr_max"]), lr)
        weight = step ** group["r"] * lr_max ** group["weight_lr_power"]
        total = host["weight_sum"] = float(host["weight_sum"]) + weight
        c = weight / total if total > 0 else 0.0
        return {"-lr": -lr, "c": c, "-c": -c, "y_step": lr * (1.0 - c) * (1.0 - b)}

    def update(self, u, s):
        ups, z = u.mutable(), u.state["z"]
        axpy_(z, s["-lr"], ups)  # z <- z - lr u
        # the engine applies y <- y - ups:  y <- (1 - c) y + c z - lr (1 - c)(1 - b) u
        scale_(ups, s["y_step"])
        axpy_(ups, s["c"], u.params)
        axpy_(ups, s["-c"], z)


def interpolation(group: dict, adam: bool) -> float:
    """The interpolation weight ``b`` of ``y = (1 - b) z + b x`` for a param group."""
    return float(group["betas"][0]) if adam else float(group["momentum"])


def to_average_(params: list, zs: list, b: float) -> None:
    """``y -> x = (y - (1 - b) z) / b`` in place (eval mode)."""
    if params:
        torch._foreach_lerp_(params, zs, 1.0 - 1.0 / b)


def to_interpolation_(params: list, zs: list, b: float) -> None:
    """``x -> y = b x + (1 - b) z`` in place (train mode)."""
    if params:
        torch._foreach_lerp_(params, zs, 1.0 - b)
