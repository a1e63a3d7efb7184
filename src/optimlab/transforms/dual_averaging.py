"""MADGRAD (Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual
Averaged Gradient Method for Stochastic Optimization", JMLR 2022; optax
``contrib.scale_by_madgrad`` and the authors' code), with ``t`` the step (1 at the first)::

    lambda_t = (lr + eps) sqrt(t)
    G_t = G + lambda_t g^2,     s_t = s + lambda_t g           (weighted sums, from 0)
    z_t = x_0 - s_t / (G_t^(1/3) + eps)                         (dual averaging from x_0)
    x_t = momentum x_{t-1} + (1 - momentum) z_t

The learning rate lives inside the sums, so the transform emits the whole step
``u = x_{t-1} - x_t = (1 - momentum)(x_{t-1} - z_t)``, applied as ``p <- p - u``
(the optimizer has ``lr_key=None``).

The cube root is the expensive part. Compiled, Inductor turns ``pow(x, 1/3)`` into a vector
``pow`` that costs ~5x a memory pass (25 M float32, 2 threads: 45 ms against 8.7 ms for a
copy), which made the whole step compute-bound at 0.45 of the memory bus. Inside the compiled
kernel it is ``exp(log(x) / 3)`` instead (20 ms on the same data, within 2e-6 relative of
``pow``; 0 still gives 0). Newton's method on ``x^(-1/3)`` from a bit-level first guess is
faster alone (12.5 ms) but slower inside this kernel (41 ms per step against 33 ms): Inductor's
CPU code moves bit casts through memory one lane at a time. The eager path keeps
``torch._foreach_pow``, one pass.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..core import Transform, axpy_, scale_

__all__ = ["scale_by_madgrad"]


def _cube_root(xs):
    """x^(1/3) for x >= 0: ``exp(log(x) / 3)`` when compiled, ``pow`` when eager (see above)."""
    if torch.compiler.is_compiling():
        return [torch.exp(torch.log(x) * (1 / 3)) for x in xs]
    return torch._foreach_pow(xs, 1.0 / 3.0)


@dataclasses.dataclass(frozen=True)
class scale_by_madgrad(Transform):
    """MADGRAD's dual-averaged step. State: ``grad_sum_sq``, ``s`` and ``x0`` (the parameter's
    value at its first step), all like p."""

    lr_key: str = "lr"
    momentum_key: str = "momentum"
    eps_key: str = "eps"
    hyperparameters = ("lr", "momentum", "eps")
    moment_state = {"grad_sum_sq": True}

    def init(self, p, group):
        zeros = torch.zeros_like(p, memory_format=torch.preserve_format)
        return {"grad_sum_sq": zeros, "s": zeros.clone(), "x0": p.detach().clone(memory_format=torch.preserve_format)}

    def scalars(self, group, step, host):
        eps, lr = group[self.eps_key], group[self.lr_key]
        if isinstance(step, torch.Tensor):  # a traced step: tensor maths (lr may be a tensor too)
            return {"lamb": (lr + eps) * step.sqrt(), "eps": eps, "1-mom": 1.0 - group[self.momentum_key]}
        return {"lamb": (float(lr) + eps) * math.sqrt(step), "eps": eps,
                "1-mom": 1.0 - group[self.momentum_key]}

    def update(self, u, s):
        st, g = u.state, u.updates
        gss, acc = st["grad_sum_sq"], st["s"]
        axpy_(gss, s["lamb"], torch._foreach_mul(g, g))
        axpy_(acc, s["lamb"], g)
        rms = _cube_root(gss)
        torch._foreach_add_(rms, s["eps"])
        z = torch._foreach_div(acc, rms)  # x0 - z
        torch._foreach_sub_(z, st["x0"])
        torch._foreach_add_(z, u.params)  # x - z
        scale_(z, s["1-mom"])
        u.replace(z, fresh=True)
