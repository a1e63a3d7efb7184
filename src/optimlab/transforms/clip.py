"""Gradient clipping: by value, by each parameter's norm, and by the global norm.

* ``clip_by_value(key)``:            u <- clamp(u, -c, c)
* ``clip_by_param_norm(key)``:       u <- u * min(1, c / ||u||)          per tensor
* ``clip_by_global_norm(key)``:      u <- u * min(1, c / ||g||_global)   (the norm over every
                                     parameter of the optimizer, as torch.nn.utils.clip_grad_norm_)
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import Transform

__all__ = ["clip_by_value", "clip_by_param_norm", "clip_by_global_norm"]


@dataclasses.dataclass(frozen=True)
class clip_by_value(Transform):
    key: str = "clip_grad_value"

    @property
    def hyperparameters(self):
        return (self.key,)

    def scalars(self, group, step, host):
        c = float(group[self.key])
        return {"lo": -c, "hi": c}

    def update(self, u, s):
        ups = u.mutable()
        torch._foreach_clamp_min_(ups, s["lo"])
        torch._foreach_clamp_max_(ups, s["hi"])


@dataclasses.dataclass(frozen=True)
class clip_by_param_norm(Transform):
    key: str = "clip_param_grad_norm"
    elementwise = False  # needs each tensor's own norm: on the flat path from the row layout
    layerwise = True
    per_tensor = True

    @property
    def hyperparameters(self):
        return (self.key,)

    def scalars(self, group, step, host):
        return {"c": float(group[self.key])}

    def update(self, u, s):
        seg = u.segments
        if seg is not None:  # the flat compiled path
            (x,) = u.updates
            u.replace([x * seg.expand(torch.clamp(s["c"] / (seg.norm(x) + 1e-6), max=1.0))], fresh=True)
            return
        norms = torch._foreach_norm(u.updates)
        coefs = [torch.clamp(s["c"] / (n + 1e-6), max=1.0) for n in norms]
        u.replace(torch._foreach_mul(u.updates, coefs), fresh=True)


@dataclasses.dataclass(frozen=True)
class clip_by_global_norm(Transform):
    """Scales by ``min(1, c / (N + 1e-6))`` with ``N`` the global gradient norm, which the
    optimizer computes once per step over all groups (``_global_grad_norm``)."""

    key: str = "clip_grad_norm"

    @property
    def hyperparameters(self):
        return (self.key,)

    def scalars(self, group, step, host):
        total = float(group["_global_grad_norm"])
        return {"coef": min(1.0, float(group[self.key]) / (total + 1e-6))}

    def update(self, u, s):
        ups = u.mutable()
        torch._foreach_mul_(ups, s["coef"])
