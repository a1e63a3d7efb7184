"""Adam's moment estimates (Kingma & Ba, 2015), with AMSGrad (Reddi et al., 2018).

    m_t = b1 m_{t-1} + (1 - b1) g_t
    v_t = b2 v_{t-1} + (1 - b2) g_t^2            (AMSGrad: vmax_t = max(vmax_{t-1}, v_t))
    u_t = (m_t / (1 - b1^t)) / (sqrt(v_t) / sqrt(1 - b2^t) + eps)
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..core import Transform, axpy_

__all__ = ["scale_by_adam"]


def _on_graph(x) -> bool:
    """A hyperparameter given as a tensor that autograd differentiates (differentiable=True)."""
    return isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()


def _zeros(p):
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def inv_sqrt_bias_correction(b: float, step):
    """``1 / sqrt(1 - b^t)``: a float for a step count that is a number, a 0-d tensor for one that
    is a tensor (a traced step: ``math.sqrt`` would read the count back to the host and guard on it)."""
    return (1.0 - b**step).rsqrt() if isinstance(step, torch.Tensor) else 1.0 / math.sqrt(1.0 - b**step)


@dataclasses.dataclass(frozen=True)
class scale_by_adam(Transform):
    """Adam's bias-corrected first and second moments. State: ``exp_avg``, ``exp_avg_sq``
    (and ``max_exp_avg_sq`` with AMSGrad), each shaped like the parameter."""

    amsgrad: bool = False
    betas_key: str = "betas"
    eps_key: str = "eps"
    hyperparameters = ("betas", "eps", "amsgrad")
    moment_state = {"exp_avg": False, "exp_avg_sq": True, "max_exp_avg_sq": True}

    def init(self, p, group):
        st = {"exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}
        if self.amsgrad:
            st["max_exp_avg_sq"] = _zeros(p)
        return st

    def scalars(self, group, step, host):
        b1, b2 = group[self.betas_key]
        if _on_graph(b1) or _on_graph(b2):  # differentiable=True with betas to differentiate
            b1, b2 = (b.reshape(()) if isinstance(b, torch.Tensor) else b for b in (b1, b2))
            return {"b1": b1, "1-b1": 1 - b1, "b2": b2, "1-b2": 1 - b2, "1/bc1": 1 / (1 - b1**step),
                    "1/sqrt(bc2)": (1 - b2**step) ** -0.5, "eps": group[self.eps_key]}
        b1, b2 = float(b1), float(b2)
        return {
            "b1": b1,
            "1-b1": 1.0 - b1,
            "b2": b2,
            "1-b2": 1.0 - b2,
            "1/bc1": 1.0 / (1.0 - b1**step),
            "1/sqrt(bc2)": inv_sqrt_bias_correction(b2, step),
            "eps": group[self.eps_key],
        }

    def moments(self, u, s) -> list:
        """Update ``exp_avg`` and ``exp_avg_sq`` (and the AMSGrad maximum) in place; return
        the denominator ``sqrt(v) / sqrt(1 - b2^t) + eps`` as new tensors."""
        m, v, g = u.state["exp_avg"], u.state["exp_avg_sq"], u.updates
        torch._foreach_mul_(m, s["b1"])
        axpy_(m, s["1-b1"], g)
        torch._foreach_mul_(v, s["b2"])
        if isinstance(s["1-b2"], float):  # eager: no g^2 temporary
            torch._foreach_addcmul_(v, g, g, value=s["1-b2"])
        else:  # compiled: the scalar is a 0-d tensor, and the compiler fuses the product anyway
            axpy_(v, s["1-b2"], torch._foreach_mul(g, g))
        if self.amsgrad:
            vmax = u.state["max_exp_avg_sq"]
            torch._foreach_maximum_(vmax, v)
            v = vmax
        denom = torch._foreach_sqrt(v)
        torch._foreach_mul_(denom, s["1/sqrt(bc2)"])
        torch._foreach_add_(denom, s["eps"])
        return denom

    def update(self, u, s):
        u.replace_ratio(u.state["exp_avg"], self.moments(u, s), s["1/bc1"])
