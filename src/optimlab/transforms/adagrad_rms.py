"""Per-coordinate step sizes from running statistics of the gradient: AdaGrad's sum of
squares, RMSProp's moving average (optionally centred), Adadelta's unit-corrected ratio and
Adamax's infinity norm. With ``g`` the gradient at step ``t`` (``t = 1, 2, ...``):

* ``scale_by_rss`` (AdaGrad; Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online
  Learning and Stochastic Optimization", JMLR 2011)::

      s_t = s_{t-1} + g^2                      (s_0 = initial_accumulator_value)
      u_t = g / (sqrt(s_t) + eps)

* ``scale_by_inverse_time_decay`` (AdaGrad's ``lr_decay``)::

      u_t <- u_t / (1 + (t - 1) * lr_decay)

* ``scale_by_rms`` (RMSProp; Hinton, Neural Networks for Machine Learning, lecture 6e, 2012;
  centred variant: Graves, "Generating Sequences With Recurrent Neural Networks", 2013)::

      v_t = a v_{t-1} + (1 - a) g^2
      m_t = a m_{t-1} + (1 - a) g                  (centred only)
      u_t = g / (sqrt(v_t) + eps)                  or  g / (sqrt(v_t - m_t^2) + eps)  (centred)

  RMSprop's momentum, ``b_t = mu b_{t-1} + u_t`` from ``b_0 = 0``, is exactly
  :class:`~optimlab.transforms.momentum.trace` without dampening.

* ``scale_by_adadelta`` (Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012)::

      v_t = rho v_{t-1} + (1 - rho) g^2
      u_t = sqrt(d_{t-1} + eps) / sqrt(v_t + eps) * g
      d_t = rho d_{t-1} + (1 - rho) u_t^2

* ``scale_by_adamax`` (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
  section 7.1)::

      m_t = b1 m_{t-1} + (1 - b1) g
      n_t = max(b2 n_{t-1}, |g| + eps)
      u_t = m_t / ((1 - b1^t) n_t)

State keys are torch.optim's: ``sum``; ``square_avg``, ``grad_avg``; ``square_avg``,
``acc_delta``; ``exp_avg``, ``exp_inf``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..core import Transform, axpy_, scale_

__all__ = ["scale_by_rss", "scale_by_inverse_time_decay", "scale_by_rms", "scale_by_adadelta", "scale_by_adamax"]


def _zeros(p):
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def _ema_(avgs, s, name, xs) -> None:
    """``avg <- d * avg + (1 - d) * x`` in place, with ``d = s[name]``, ``1 - d = s["1-" + name]``."""
    scale_(avgs, s[name])
    axpy_(avgs, s["1-" + name], xs)


def _ema_sq_(avgs, s, name, xs) -> None:
    """``avg <- d * avg + (1 - d) * x^2`` in place (see :func:`_ema_`): one ``addcmul`` pass
    and no ``x^2`` temporary where ``1 - d`` is a number (eager; torch's own kernels), the
    product first where it is a 0-d tensor (compiled: the compiler fuses it anyway)."""
    if isinstance(s["1-" + name], Tensor):
        _ema_(avgs, s, name, torch._foreach_mul(xs, xs))
    else:
        scale_(avgs, s[name])
        torch._foreach_addcmul_(avgs, xs, xs, value=s["1-" + name])


def _divide_by_root(u, v, eps) -> None:
    """Make ``g / (sqrt(v) + eps)`` the update (``g`` the current update)."""
    denom = torch._foreach_sqrt(v)
    torch._foreach_add_(denom, eps)
    u.replace_ratio(u.updates, denom)


def _ema_scalars(name, d) -> dict[str, float]:
    """The scalars ``_ema_`` reads for a moving average with decay ``d``."""
    return {name: float(d), "1-" + name: 1.0 - float(d)}


@dataclasses.dataclass(frozen=True)
class scale_by_rss(Transform):
    """AdaGrad: divide by the root of the running sum of squared gradients. State: ``sum``
    (like p, starting at ``initial_accumulator_value``)."""

    eps_key: str = "eps"
    init_key: str = "initial_accumulator_value"
    hyperparameters = ("eps", "initial_accumulator_value")
    moment_state = {"sum": True}

    def init(self, p, group):
        v0 = float(group[self.init_key])
        if p.is_complex():  # two real entries (torch's rule): both parts start at v0
            v0 = complex(v0, v0)
        return {"sum": torch.full_like(p, v0, memory_format=torch.preserve_format)}

    def scalars(self, group, step, host):
        return {"eps": group[self.eps_key]}

    def update(self, u, s):
        sums, g = u.state["sum"], u.updates
        torch._foreach_addcmul_(sums, g, g)
        _divide_by_root(u, sums, s["eps"])


@dataclasses.dataclass(frozen=True)
class scale_by_inverse_time_decay(Transform):
    """``u <- u / (1 + (t - 1) * decay)``: AdaGrad's ``lr_decay`` (no state)."""

    key: str = "lr_decay"

    @property
    def hyperparameters(self):
        return (self.key,)

    def scalars(self, group, step, host):
        return {"c": 1.0 / (1.0 + (step - 1) * group[self.key])}

    def update(self, u, s):
        scale_(u.mutable(), s["c"])


@dataclasses.dataclass(frozen=True)
class scale_by_rms(Transform):
    """RMSProp: divide by the root of a moving average of squared gradients, or (``centered``)
    of their moving variance. State: ``square_avg`` (and ``grad_avg`` when centred)."""

    centered: bool = False
    alpha_key: str = "alpha"
    eps_key: str = "eps"
    hyperparameters = ("alpha", "eps", "centered")
    moment_state = {"square_avg": True, "grad_avg": False}

    def init(self, p, group):
        st = {"square_avg": _zeros(p)}
        if self.centered:
            st["grad_avg"] = _zeros(p)
        return st

    def scalars(self, group, step, host):
        return {**_ema_scalars("a", group[self.alpha_key]), "eps": group[self.eps_key]}

    def update(self, u, s):
        v, g = u.state["square_avg"], u.updates
        _ema_sq_(v, s, "a", g)
        if self.centered:
            m = u.state["grad_avg"]
            _ema_(m, s, "a", g)
            v = torch._foreach_addcmul(v, m, m, value=-1.0)  # fused like torch's: less cancellation
        _divide_by_root(u, v, s["eps"])


@dataclasses.dataclass(frozen=True)
class scale_by_adadelta(Transform):
    """Adadelta: scale by the ratio of the RMS of past updates to the RMS of gradients.
    State: ``square_avg`` and ``acc_delta`` (like p)."""

    rho_key: str = "rho"
    eps_key: str = "eps"
    hyperparameters = ("rho", "eps")
    moment_state = {"square_avg": True, "acc_delta": True}

    def init(self, p, group):
        return {"square_avg": _zeros(p), "acc_delta": _zeros(p)}

    def scalars(self, group, step, host):
        return {**_ema_scalars("rho", group[self.rho_key]), "eps": group[self.eps_key]}

    def update(self, u, s):
        v, d, g = u.state["square_avg"], u.state["acc_delta"], u.updates
        _ema_sq_(v, s, "rho", g)
        rms_v = torch._foreach_add(v, s["eps"])
        torch._foreach_sqrt_(rms_v)
        delta = torch._foreach_add(d, s["eps"])
        torch._foreach_sqrt_(delta)
        torch._foreach_div_(delta, rms_v)
        torch._foreach_mul_(delta, g)
        _ema_sq_(d, s, "rho", delta)
        u.replace(delta, fresh=True)


@dataclasses.dataclass(frozen=True)
class scale_by_adamax(Transform):
    """Adamax: Adam's bias-corrected first moment over an exponentially weighted infinity
    norm. State: ``exp_avg`` and ``exp_inf`` (like p)."""

    betas_key: str = "betas"
    eps_key: str = "eps"
    hyperparameters = ("betas", "eps")
    moment_state = {"exp_avg": False, "exp_inf": True}

    def init(self, p, group):
        return {"exp_avg": _zeros(p), "exp_inf": _zeros(p)}

    def scalars(self, group, step, host):
        b1, b2 = (float(b) for b in group[self.betas_key])
        return {**_ema_scalars("b1", b1), "b2": b2, "1/bc1": 1.0 / (1.0 - b1**step), "eps": group[self.eps_key]}

    def update(self, u, s):
        m, n, g = u.state["exp_avg"], u.state["exp_inf"], u.updates
        if isinstance(s["1-b1"], Tensor):
            _ema_(m, s, "b1", g)
        else:  # torch's Adamax: one lerp pass (and its roundings)
            torch._foreach_lerp_(m, g, s["1-b1"])
        scale_(n, s["b2"])
        abs_g = torch._foreach_abs(g)
        torch._foreach_add_(abs_g, s["eps"])
        torch._foreach_maximum_(n, abs_g)
        u.replace_ratio(m, n, s["1/bc1"])
