"""Layer-wise transforms: each parameter tensor (a "layer") gets its own scalar, computed from
tensor norms, so none of them runs on flat buffers (``elementwise = False``).

* ``scale_by_trust_ratio`` (You et al., LARS 2017 and LAMB 2020; optax ``scale_by_trust_ratio``)::

      u <- u * c ||p|| / (||u|| + eps)        (u unchanged where ||p|| = 0 or ||u|| = 0)

  with ``c`` the trust coefficient (1 for LAMB, 0.001 for LARS). Given ``lr_key``, the learning
  rate joins the per-tensor factor: LARS scales its steps by lr *before* its momentum (its paper,
  optax), so its optimizer applies the chain's output as it is (``lr_key=None`` there).

* ``scale_by_novograd`` (Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive
  Moments for Training of Deep Networks", 2019; optax ``scale_by_novograd``): a second moment
  of the gradient's norm, one scalar per tensor, and momentum on the normalised gradient plus
  coupled weight decay::

      v_1 = ||g_1||^2,                     v_t = b2 v + (1 - b2) ||g_t||^2
      m_1 = g_1 / (sqrt(v_1) + eps) + wd p,  m_t = b1 m + g_t / (sqrt(v_t) + eps) + wd p
      u_t = m_t

``scale_by_trust_ratio`` is ``layerwise``: with ``compile=True`` it runs inside the compiled
flat kernel, which takes the norms from the row layout (:class:`optimlab.core.Segments`), so a
LAMB step is two passes over memory -- one reading p, g and the moments to reduce the norms,
one updating them -- and no parameter-sized temporary. On the eager path the ratio scales the
update in place, and NovoGrad accumulates ``g / (sqrt(v) + eps)`` straight into its momentum.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core import Transform, axpy_

__all__ = ["scale_by_trust_ratio", "scale_by_novograd"]


def _stack(xs):
    """One vector from 0-d tensors when they share a device and dtype (one kernel per op after
    that), else None."""
    first = xs[0]
    if all(x.device == first.device and x.dtype == first.dtype for x in xs):
        return torch.stack(xs)
    return None


def _trust_ratios(p_norms, u_norms, coef, eps):
    """``coef ||p|| / (||u|| + eps)``, 1 where either norm is 0, per tensor (0-d tensors)."""
    pn, un = _stack(p_norms), _stack(u_norms)
    if pn is not None and un is not None and pn.dtype == un.dtype and pn.device == un.device:
        ratio = torch.where((pn == 0) | (un == 0), 1.0, coef * pn / (un + eps))
        return list(ratio.unbind())
    return [torch.where((a == 0) | (b == 0), 1.0, coef * a / (b + eps)) for a, b in zip(p_norms, u_norms)]


@dataclasses.dataclass(frozen=True)
class scale_by_trust_ratio(Transform):
    """Scale each tensor's update by its trust ratio. ``coefficient_key`` / ``eps_key`` name the
    group's trust coefficient and eps (None: 1 and 0, LAMB's); ``lr_key`` (None: off) also
    multiplies by the group's learning rate. No state."""

    coefficient_key: str | None = None
    eps_key: str | None = None
    lr_key: str | None = None
    elementwise = False
    layerwise = True
    per_tensor = True

    @property
    def hyperparameters(self):
        return tuple(k for k in (self.coefficient_key, self.eps_key, self.lr_key) if k)

    def scalars(self, group, step, host):
        coef = 1.0 if self.coefficient_key is None else float(group[self.coefficient_key])
        eps = 0.0 if self.eps_key is None else float(group[self.eps_key])
        lr = 1.0 if self.lr_key is None else float(group[self.lr_key])
        return {"coef": coef, "eps": eps, "lr": lr}

    def update(self, u, s):
        seg = u.segments
        if seg is not None:  # the flat compiled path: one tensor of rows, per-tensor vectors
            (p,), (x,) = u.params, u.updates
            pn, un = seg.norm(p), seg.norm(x)
            ratio = torch.where((pn == 0) | (un == 0), 1.0, s["coef"] * pn / (un + s["eps"]))
            if self.lr_key is not None:
                ratio = ratio * s["lr"]
            u.replace([x * seg.expand(ratio)], fresh=True)
            return
        ratios = _trust_ratios(torch._foreach_norm(u.params), torch._foreach_norm(u.updates), s["coef"], s["eps"])
        if self.lr_key is not None:
            torch._foreach_mul_(ratios, s["lr"])
        if u._owned:  # scale in place; else one out-of-place pass rather than copy-then-scale
            torch._foreach_mul_(u.updates, ratios)
        else:
            u.replace(torch._foreach_mul(u.updates, ratios), fresh=True)


@dataclasses.dataclass(frozen=True)
class scale_by_novograd(Transform):
    """NovoGrad's layer-wise normalised momentum. ``decay``: add the ``weight_decay`` term, to
    the parameters ``mask`` selects. State: ``exp_avg`` (like p) and ``exp_avg_sq`` (a 0-d tensor: the
    moving average of ``||g||^2``)."""

    decay: bool = False
    mask: Any = None
    betas_key: str = "betas"
    eps_key: str = "eps"
    weight_decay_key: str = "weight_decay"
    hyperparameters = ("betas", "eps", "weight_decay")
    moment_state = {"exp_avg": False}
    elementwise = False
    layerwise = True
    per_tensor = True
    per_tensor_state = ("exp_avg_sq",)
    masks_on_flat = True

    def init(self, p, group):
        return {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros((), dtype=p.dtype, device=p.device)}

    def scalars(self, group, step, host):
        b1, b2 = (float(b) for b in group[self.betas_key])
        first = step == 1
        return {"b1": 0.0 if first else b1, "b2": 0.0 if first else b2, "1-b2": 1.0 if first else 1.0 - b2,
                "eps": group[self.eps_key], "wd": group[self.weight_decay_key]}

    def update(self, u, s):
        m, v, g = u.state["exp_avg"], u.state["exp_avg_sq"], u.updates
        seg = u.segments
        if seg is not None:  # the flat compiled path: v is one vector, an entry per tensor
            (m,), (v,), (g,), (p,) = m, v, g, u.params
            v.copy_(v * s["b2"] + s["1-b2"] * seg.sum(g * g).to(v.dtype))
            m.mul_(s["b1"]).add_(g / seg.expand(v.sqrt() + s["eps"]))
            if self.decay:
                decay = p * s["wd"]
                m.add_(decay if self.mask is None else torch.where(seg.expand(s["selected"]), decay, 0))
            u.replace([m])
            return
        norms = torch._foreach_norm(g)
        sq = torch._foreach_mul(norms, norms)  # not in place: a DTensor's norm (FSDP2) is a partial value
        torch._foreach_mul_(v, s["b2"])
        axpy_(v, s["1-b2"], sq)
        denom = torch._foreach_sqrt(v)  # 0-d tensors
        torch._foreach_add_(denom, s["eps"])
        torch._foreach_mul_(m, s["b1"])
        torch._foreach_addcdiv_(m, g, denom)
        if self.decay:
            idx = u.select(self.mask)
            axpy_([m[i] for i in idx], s["wd"], [u.params[i] for i in idx])
        u.replace(m)
