"""Cautious updates (Liang et al., "Cautious Optimizers: Improving Training with One Line of
Code", 2024): drop the entries of the update that point against the current gradient, and
rescale the survivors so the update keeps its average size. Per parameter tensor of ``n``
entries, with ``u`` the update to be subtracted and ``g`` the gradient::

    phi = 1[u * g > 0]                      (the entries that descend)
    u  <- u * phi * n / (sum(phi) + 1)

The ``+ 1`` is the paper's (Algorithm 2) and its reference code's; optax's
``contrib.cautious`` defaults to ``+ 1e-8`` (pass ``eps=1.0`` there to match).

Placed after an optimizer's update direction and before decoupled weight decay (as the paper
does for C-AdamW and C-Lion); ``g`` is the loss gradient the optimizer received (before any
coupled L2 term), negated under ``maximize``. Any momentum chain can use it, e.g.
``[scale_by_adam(), cautious()]`` is C-Adam and ``[trace(), cautious()]`` cautious
heavy-ball SGD.

The rescale needs each tensor's count of kept entries: on the flat compiled path it comes from
the row layout (``layerwise``, :class:`optimlab.core.Segments`); ``rescale=False`` (mask only)
is elementwise.
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import Transform

__all__ = ["cautious"]


@dataclasses.dataclass(frozen=True)
class cautious(Transform):
    """Mask update entries whose sign disagrees with the gradient, then (``rescale``) scale each
    tensor by ``n / (kept + 1)``. No state."""

    maximize: bool = False
    rescale: bool = True

    layerwise = True
    per_tensor = True

    @property
    def elementwise(self):  # the rescale counts entries per tensor
        return not self.rescale

    def update(self, u, s):
        seg = u.segments
        if seg is not None and self.rescale:  # the flat compiled path: per-tensor counts by rows
            (x,), (g,) = u.updates, u.grads
            keep = (x * g < 0) if self.maximize else (x * g > 0)
            factor = seg.numel / (seg.sum(keep.to(x.dtype)) + 1)
            u.replace([torch.where(keep, x * seg.expand(factor), 0)], fresh=True)
            return
        grads = torch._foreach_neg(u.grads) if self.maximize else u.grads
        keep = torch._foreach_mul(u.updates, grads)
        torch._foreach_sign_(keep)
        torch._foreach_clamp_min_(keep, 0.0)  # 1 where u and g agree, else 0
        if self.rescale:
            kept = torch._foreach_norm(keep, 1)  # per tensor: the number of kept entries
            torch._foreach_add_(kept, 1.0)
            torch._foreach_reciprocal_(kept)
            torch._foreach_mul_(kept, [float(k.numel()) for k in keep])
            torch._foreach_mul_(keep, kept)
        torch._foreach_mul_(keep, u.updates)
        u.replace(keep, fresh=True)
