"""Sign-based steps: signSGD and Lion's interpolated sign.

* ``scale_by_sign``: ``u <- sign(u)`` (Bernstein et al., "signSGD: Compressed Optimisation for
  Non-Convex Problems", ICML 2018). Chained after a moving average of the gradient
  (:class:`~optimlab.transforms.orthogonal.ema_momentum`) it is Signum; optax's
  ``sign_sgd`` / ``signum``.

* ``scale_by_lion`` (Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS
  2023; optax's ``scale_by_lion``): the sign of an interpolation between the stored momentum and
  the gradient, and a slower momentum kept for the next step::

      u_t = sign(b1 m_{t-1} + (1 - b1) g_t)
      m_t = b2 m_{t-1} + (1 - b2) g_t                 (m_0 = 0)

``sign(0) = 0`` in both (torch's and jax's ``sign``).
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import Transform, axpy_

__all__ = ["scale_by_sign", "scale_by_lion"]


@dataclasses.dataclass(frozen=True)
class scale_by_sign(Transform):
    """``u <- sign(u)`` entry by entry. No state."""

    def update(self, u, s):
        u.replace(torch._foreach_sign(u.updates), fresh=True)


@dataclasses.dataclass(frozen=True)
class scale_by_lion(Transform):
    """Lion's update direction. State: ``exp_avg`` (like p), the momentum ``m``."""

    betas_key: str = "betas"
    hyperparameters = ("betas",)
    moment_state = {"exp_avg": False}

    def init(self, p, group):
        return {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def scalars(self, group, step, host):
        b1, b2 = (float(b) for b in group[self.betas_key])
        return {"b1": b1, "1-b1": 1.0 - b1, "b2": b2, "1-b2": 1.0 - b2}

    def update(self, u, s):
        m, g = u.state["exp_avg"], u.updates
        direction = torch._foreach_mul(m, s["b1"])
        axpy_(direction, s["1-b1"], g)
        torch._foreach_sign_(direction)
        torch._foreach_mul_(m, s["b2"])
        axpy_(m, s["1-b2"], g)
        u.replace(direction, fresh=True)
