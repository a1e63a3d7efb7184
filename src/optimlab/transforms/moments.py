"""Adam's relatives: other first/second moment estimates, each as optax writes it (or the paper,
where optax has no version or differs from it). ``t`` is the step (1 at the first), bias
corrections are ``bc_i = 1 - b_i^t``, and every state tensor is shaped like its parameter.

AdaBelief (Zhuang et al., NeurIPS 2020; optax ``scale_by_belief``): the second moment tracks
the gradient's deviation from its moving average, the "belief"::

    m_t = b1 m + (1 - b1) g,     s_t = b2 s + (1 - b2) (g - m_t)^2 + eps
    u_t = (m_t / bc1) / (sqrt(s_t / bc2) + eps)

Yogi (Zaheer et al., NeurIPS 2018; optax ``scale_by_yogi``): an additive second moment that
cannot grow the step size as fast as Adam's; both moments start at ``initial_accumulator_value``::

    m_t = b1 m + (1 - b1) g,     v_t = v - (1 - b2) sign(v - g^2) g^2
    u_t = (m_t / bc1) / (sqrt(v_t / bc2) + eps)

Adan (Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm", TPAMI 2024; Algorithm 1 with the
authors' code's ``b = 1 - beta``), with ``d_t = g_t - g_{t-1}`` (``d_1 = 0``)::

    m_t = b1 m + (1 - b1) g,     v_t = b2 v + (1 - b2) d,     n_t = b3 n + (1 - b3) (g + b2 d)^2
    u_t = (m_t / bc1 + b2 v_t / bc2) / (sqrt(n_t / bc3) + eps)

ADOPT (Taniguchi et al., NeurIPS 2024; optax ``contrib.scale_by_adopt``): normalise the gradient
by the *previous* second moment, clip it, then average; the first step only initialises ``v``::

    v_1 = g_1^2, m_1 = 0;   for t > 1:
    x_t = clip(g / max(sqrt(v_{t-1}), eps), -c_t, c_t)     (c_t = clip_lambda(t - 1), default (t-1)^0.25)
    m_t = b1 m + (1 - b1) x_t,   v_t = b2 v + (1 - b2) g^2,   u_t = m_t

AdEMAMix (Pagliardini et al., "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025;
optax ``contrib.scale_by_ademamix``): a fast and a slow (un-bias-corrected) momentum mixed::

    m1_t = b1 m1 + (1 - b1) g,   m2_t = b3 m2 + (1 - b3) g,   v_t = b2 v + (1 - b2) g^2
    u_t = (m1_t / bc1 + alpha m2_t) / (sqrt(v_t / bc2) + eps)

with, given ``t_alpha_beta3 = T``, the paper's warm-up ``alpha_t = alpha min(t, T) / T`` and
``b3_t = exp(ln b1 ln b3 / ((1 - r) ln b3 + r ln b1))``, ``r = min(t, T) / T``.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..core import Transform, axpy, axpy_, scale_
from .adam import inv_sqrt_bias_correction

__all__ = ["scale_by_belief", "scale_by_yogi", "scale_by_adan", "scale_by_adopt", "adopt_clip_lambda",
           "scale_by_ademamix"]


def _zeros(p):
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def _ema_(avg, x, keep, add):
    """``avg <- keep * avg + add * x`` in place."""
    torch._foreach_mul_(avg, keep)
    axpy_(avg, add, x)


def _denominator(v, inv_sqrt_bc, eps):
    """``sqrt(v) / sqrt(bc) + eps`` as new tensors."""
    denom = torch._foreach_sqrt(v)
    scale_(denom, inv_sqrt_bc)
    torch._foreach_add_(denom, eps)
    return denom


def _betas(group, key):
    return [float(b) for b in group[key]]


@dataclasses.dataclass(frozen=True)
class scale_by_belief(Transform):
    """AdaBelief's moments. ``eps`` is added inside the second moment and to the denominator (the
    authors' code; optax's defaults ``eps = eps_root = 1e-16`` agree). State: ``exp_avg``,
    ``exp_avg_var``."""

    betas_key: str = "betas"
    eps_key: str = "eps"
    hyperparameters = ("betas", "eps")
    moment_state = {"exp_avg": False, "exp_avg_var": True}

    def init(self, p, group):
        return {"exp_avg": _zeros(p), "exp_avg_var": _zeros(p)}

    def scalars(self, group, step, host):
        b1, b2 = _betas(group, self.betas_key)
        return {"b1": b1, "1-b1": 1.0 - b1, "b2": b2, "1-b2": 1.0 - b2, "1/bc1": 1.0 / (1.0 - b1**step),
                "1/sqrt(bc2)": inv_sqrt_bias_correction(b2, step), "eps": group[self.eps_key]}

    def update(self, u, s):
        m, var, g = u.state["exp_avg"], u.state["exp_avg_var"], u.updates
        _ema_(m, g, s["b1"], s["1-b1"])
        resid = torch._foreach_sub(g, m)
        torch._foreach_mul_(resid, resid)
        _ema_(var, resid, s["b2"], s["1-b2"])
        torch._foreach_add_(var, s["eps"])
        denom = _denominator(var, s["1/sqrt(bc2)"], s["eps"])
        new = torch._foreach_div(m, denom)
        scale_(new, s["1/bc1"])
        u.replace(new, fresh=True)


@dataclasses.dataclass(frozen=True)
class scale_by_yogi(Transform):
    """Yogi's moments. State: ``exp_avg``, ``exp_avg_sq``, both starting at the group's
    ``initial_accumulator_value`` (optax's choice, for both)."""

    betas_key: str = "betas"
    eps_key: str = "eps"
    init_key: str = "initial_accumulator_value"
    hyperparameters = ("betas", "eps", "initial_accumulator_value")
    moment_state = {"exp_avg": False, "exp_avg_sq": True}

    def init(self, p, group):
        v0 = float(group[self.init_key])
        return {"exp_avg": torch.full_like(p, v0, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.full_like(p, v0, memory_format=torch.preserve_format)}

    def scalars(self, group, step, host):
        b1, b2 = _betas(group, self.betas_key)
        return {"b1": b1, "1-b1": 1.0 - b1, "b2-1": b2 - 1.0, "1/bc1": 1.0 / (1.0 - b1**step),
                "1/sqrt(bc2)": inv_sqrt_bias_correction(b2, step), "eps": group[self.eps_key]}

    def update(self, u, s):
        m, v, g = u.state["exp_avg"], u.state["exp_avg_sq"], u.updates
        _ema_(m, g, s["b1"], s["1-b1"])
        g2 = torch._foreach_mul(g, g)
        step = torch._foreach_sub(v, g2)
        torch._foreach_sign_(step)
        torch._foreach_mul_(step, g2)  # sign(v - g^2) g^2
        axpy_(v, s["b2-1"], step)
        denom = _denominator(v, s["1/sqrt(bc2)"], s["eps"])
        new = torch._foreach_div(m, denom)
        scale_(new, s["1/bc1"])
        u.replace(new, fresh=True)


@dataclasses.dataclass(frozen=True)
class scale_by_adan(Transform):
    """Adan's three moments. State: ``exp_avg``, ``exp_avg_diff``, ``exp_avg_sq`` and
    ``prev_grad`` (the last gradient), all like p."""

    betas_key: str = "betas"
    eps_key: str = "eps"
    hyperparameters = ("betas", "eps")
    moment_state = {"exp_avg": False, "exp_avg_diff": False, "exp_avg_sq": True}

    def init(self, p, group):
        return {"exp_avg": _zeros(p), "exp_avg_diff": _zeros(p), "exp_avg_sq": _zeros(p), "prev_grad": _zeros(p)}

    def scalars(self, group, step, host):
        b1, b2, b3 = _betas(group, self.betas_key)
        return {"b1": b1, "1-b1": 1.0 - b1, "b2": b2, "1-b2": 1.0 - b2, "b3": b3, "1-b3": 1.0 - b3,
                "has_prev": (step > 1).to(step.dtype) if isinstance(step, torch.Tensor) else float(step > 1),  # d_1 = 0
                "1/bc1": 1.0 / (1.0 - b1**step), "b2/bc2": b2 / (1.0 - b2**step),
                "1/sqrt(bc3)": inv_sqrt_bias_correction(b3, step), "eps": group[self.eps_key]}

    def update(self, u, s):
        st, g = u.state, u.updates
        m, v, n, prev = st["exp_avg"], st["exp_avg_diff"], st["exp_avg_sq"], st["prev_grad"]
        diff = torch._foreach_sub(g, prev)
        scale_(diff, s["has_prev"])
        torch._foreach_copy_(prev, g)
        _ema_(m, g, s["b1"], s["1-b1"])
        _ema_(v, diff, s["b2"], s["1-b2"])
        look = axpy(g, s["b2"], diff)  # g + b2 d
        torch._foreach_mul_(look, look)
        _ema_(n, look, s["b3"], s["1-b3"])
        denom = _denominator(n, s["1/sqrt(bc3)"], s["eps"])
        new = torch._foreach_mul(m, s["1/bc1"])
        axpy_(new, s["b2/bc2"], v)
        torch._foreach_div_(new, denom)
        u.replace(new, fresh=True)


def adopt_clip_lambda(step: int) -> float:
    """ADOPT's default clipping threshold after ``step`` updates: ``step ** 0.25``."""
    return step**0.25


@dataclasses.dataclass(frozen=True)
class scale_by_adopt(Transform):
    """ADOPT's normalise-then-average step. ``clip``: clip the normalised gradient at
    ``group["clip_lambda"](t - 1)``. State: ``exp_avg``, ``exp_avg_sq``."""

    clip: bool = True
    betas_key: str = "betas"
    eps_key: str = "eps"
    clip_key: str = "clip_lambda"
    hyperparameters = ("betas", "eps", "clip_lambda")
    moment_state = {"exp_avg": False, "exp_avg_sq": True}

    def init(self, p, group):
        return {"exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}

    def scalars(self, group, step, host):
        b1, b2 = _betas(group, self.betas_key)
        if isinstance(step, torch.Tensor):  # a traced step: no branch on the count's value
            first = step == 1
            b1, b2 = torch.where(first, 1.0, b1), torch.where(first, 0.0, b2)
        elif step == 1:  # v_1 = g^2, m_1 = m_0: no step yet
            b1, b2 = 1.0, 0.0
        s = {"b1": b1, "1-b1": 1.0 - b1, "b2": b2, "1-b2": 1.0 - b2, "eps": group[self.eps_key]}
        if self.clip:
            c = group[self.clip_key](step - 1)
            c = c if isinstance(c, torch.Tensor) else float(c)
            s["c"], s["-c"] = c, -c
        return s

    def update(self, u, s):
        m, v, g = u.state["exp_avg"], u.state["exp_avg_sq"], u.updates
        denom = torch._foreach_sqrt(v)
        torch._foreach_clamp_min_(denom, s["eps"])
        x = torch._foreach_div(g, denom)  # g / max(sqrt(v_{t-1}), eps)
        if self.clip:
            torch._foreach_clamp_min_(x, s["-c"])
            torch._foreach_clamp_max_(x, s["c"])
        _ema_(m, x, s["b1"], s["1-b1"])
        _ema_(v, torch._foreach_mul(g, g), s["b2"], s["1-b2"])
        u.replace(m)


@dataclasses.dataclass(frozen=True)
class scale_by_ademamix(Transform):
    """AdEMAMix's fast and slow momenta over Adam's second moment. State: ``exp_avg``,
    ``exp_avg_slow``, ``exp_avg_sq``."""

    betas_key: str = "betas"
    alpha_key: str = "alpha"
    warmup_key: str = "t_alpha_beta3"
    eps_key: str = "eps"
    hyperparameters = ("betas", "alpha", "t_alpha_beta3", "eps")
    moment_state = {"exp_avg": False, "exp_avg_slow": False, "exp_avg_sq": True}

    def init(self, p, group):
        return {"exp_avg": _zeros(p), "exp_avg_slow": _zeros(p), "exp_avg_sq": _zeros(p)}

    def scalars(self, group, step, host):
        b1, b2, b3 = _betas(group, self.betas_key)
        alpha, warmup = float(group[self.alpha_key]), group.get(self.warmup_key)
        if warmup and isinstance(step, torch.Tensor):  # the same, traced: tensor maths of the count
            r = step.clamp_max(warmup) / warmup
            alpha = alpha * r
            if 0.0 < b1 and b3 > 0.0:
                b3 = torch.exp(math.log(b1) * math.log(b3) / ((1 - r) * math.log(b3) + r * math.log(b1))).clamp_max(b3)
        elif warmup:  # the paper's schedulers: alpha grows linearly, b3 so that 1/(1 - b3) does
            r = min(step, warmup) / warmup
            alpha *= r
            if 0.0 < b1 and b3 > 0.0:
                b3 = min(math.exp(math.log(b1) * math.log(b3) / ((1 - r) * math.log(b3) + r * math.log(b1))), b3)
        return {"b1": b1, "1-b1": 1.0 - b1, "b2": b2, "1-b2": 1.0 - b2, "b3": b3, "1-b3": 1.0 - b3,
                "1/bc1": 1.0 / (1.0 - b1**step), "1/sqrt(bc2)": inv_sqrt_bias_correction(b2, step),
                "alpha": alpha, "eps": group[self.eps_key]}

    def update(self, u, s):
        st, g = u.state, u.updates
        m1, m2, v = st["exp_avg"], st["exp_avg_slow"], st["exp_avg_sq"]
        _ema_(m1, g, s["b1"], s["1-b1"])
        _ema_(m2, g, s["b3"], s["1-b3"])
        _ema_(v, torch._foreach_mul(g, g), s["b2"], s["1-b2"])
        denom = _denominator(v, s["1/sqrt(bc2)"], s["eps"])
        new = torch._foreach_mul(m1, s["1/bc1"])
        axpy_(new, s["alpha"], m2)
        torch._foreach_div_(new, denom)
        u.replace(new, fresh=True)
