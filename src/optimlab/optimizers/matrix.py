"""Optimizers whose update depends on each tensor's shape or layout: Adafactor (factored second
moments), Muon (orthogonalised momentum, matrices only) and SparseAdam (sparse gradients).
torch.optim's signatures and numbers.

Adafactor (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
ICML 2018; torch's variant)::

    V_t = factored (ndim >= 2) or full second moment of g, weight t^beta2_decay on g^2
    U_t = g / max(sqrt(V_t), eps1),   U_t <- U_t / max(1, RMS(U_t) / d)
    p <- (1 - lr weight_decay) p - max(eps2, RMS(p)) min(lr, 1/sqrt(t)) U_t

Muon (Keller Jordan, 2024; Liu et al., "Muon is Scalable for LLM Training", 2025)::

    B_t = mu B_{t-1} + (1 - mu) g,   M = (1 - mu) g + mu B_t (nesterov) or B_t
    p <- (1 - lr weight_decay) p - lr scale(A, B) NewtonSchulz(M)

SparseAdam (torch.optim.SparseAdam): Adam restricted to the entries a sparse gradient holds::

    m_S <- b1 m_S + (1 - b1) g_S,   v_S <- b2 v_S + (1 - b2) g_S^2
    p_S <- p_S - lr sqrt(1 - b2^t) / (1 - b1^t) m_S / (sqrt(v_S) + eps)

Example::

    >>> opt = optimlab.Adafactor(model.parameters(), lr=1e-2)
    >>> opt = optimlab.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02)
    >>> opt = optimlab.SparseAdam(embedding.parameters(), lr=1e-2)   # nn.Embedding(sparse=True)
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..core import Transform, _num, check_betas, check_int, check_nonneg, check_positive
from ..registry import register
from ..transforms.factored import clip_by_block_rms, scale_by_factored_rms, scale_by_param_rms
from ..transforms.orthogonal import ADJUST_LR_FNS, ema_momentum, orthogonalize
from ..transforms.regularize import decay_weights
from ._base import Optimizer

__all__ = ["Adafactor", "Muon", "SparseAdam"]


def _decoupled_decay(group) -> list[Transform]:
    """torch's decoupled ``weight_decay``: ``p <- (1 - lr weight_decay) p`` before the step."""
    return [decay_weights("weight_decay", group["decay_mask"], lr_key="lr")] if group["weight_decay"] != 0 else []


@register("adafactor", torch_name="Adafactor")
class Adafactor(Optimizer):
    """Adafactor: factored second moments, update clipping and a relative step size.

    Tensors with ndim >= 2 keep ``row_var``/``col_var`` over their last two dims, vectors and
    0-d tensors a full ``variance``; see the module docstring for the rule.
    Example: ``optimlab.Adafactor(model.parameters(), lr=1e-2, weight_decay=1e-2)``.
    """

    complex_params = False  # refused when stepped, as torch does

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *,
                 foreach=None, maximize=False, **options):
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        if not group["beta2_decay"] <= 0:
            raise ValueError(f"beta2_decay should be <= 0 but is: {group['beta2_decay']} (beta2_t = 1 - t^beta2_decay)")
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"Invalid eps: {eps!r} (expected a pair (eps1, eps2); eps1 may be None)")
        for i, e in enumerate(eps):
            if (e is not None or i == 1) and _num(f"eps[{i}]", e) < 0:
                raise ValueError(f"epsilon{i + 1} should be >= 0 but is: {e} (eps=(eps1, eps2); eps1 may be None)")
        if not group["d"] >= 1:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {group['d']}")

    def core(self, group):
        return [scale_by_factored_rms(dtype_eps=group["eps"][0] is None), clip_by_block_rms(),
                scale_by_param_rms()] + _decoupled_decay(group)


def check_orthogonalization(group: dict) -> None:
    """Validate Muon's Newton-Schulz settings (``ns_steps``, ``ns_coefficients``, ``adjust_lr_fn``)."""
    check_int("ns_steps", group["ns_steps"])
    if group["ns_steps"] >= 100:
        raise ValueError(f"Invalid ns_steps: {group['ns_steps']} (must be < 100; 5 is usual)")
    coefs = group["ns_coefficients"]
    if not isinstance(coefs, (tuple, list)) or len(coefs) != 3:
        raise ValueError(f"Invalid ns_coefficients: {coefs!r} (expected 3 numbers (a, b, c))")
    if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {group['adjust_lr_fn']} is not supported; "
                         f"adjust_lr_fn must be one of {ADJUST_LR_FNS}")


@register("muon", torch_name="Muon")
class Muon(Optimizer):
    """Muon: momentum orthogonalised by Newton-Schulz, for 2-D parameters.

    Like torch, every parameter must be a matrix (optimise the others with e.g. AdamW).
    Example: ``optimlab.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02)``.
    """

    state_step = False  # torch keeps no step count for Muon
    complex_params = False  # refused when stepped, as torch does

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None, **options):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        for p in group["params"]:
            if p.ndim != 2:
                raise ValueError(
                    f"Muon only supports 2D parameters whereas we found a parameter with size: {p.size()}; "
                    "optimise biases, norms, embeddings and other non-matrix parameters with another "
                    "optimizer (e.g. AdamW on [p for p in model.parameters() if p.ndim != 2])")
        check_nonneg("momentum", group["momentum"])
        check_nonneg("eps", group["eps"])
        check_orthogonalization(group)

    def core(self, group):
        return [ema_momentum(nesterov=group["nesterov"]),
                orthogonalize(ns_steps=group["ns_steps"], adjust_lr_fn=group["adjust_lr_fn"])] + _decoupled_decay(group)


@dataclasses.dataclass(frozen=True)
class _scale_by_sparse_adam(Transform):
    """SparseAdam's moments, updated only where the (sparse) gradient has entries; the update is
    sparse. State: ``exp_avg``, ``exp_avg_sq`` (dense, like p)."""

    hyperparameters = ("betas", "eps")
    elementwise = False

    def init(self, p, group):
        return {k: torch.zeros_like(p, memory_format=torch.preserve_format) for k in ("exp_avg", "exp_avg_sq")}

    def scalars(self, group, step, host):
        b1, b2 = (float(b) for b in group["betas"])
        return {"1-b1": 1.0 - b1, "1-b2": 1.0 - b2, "eps": group["eps"],
                "sqrt(bc2)/bc1": math.sqrt(1.0 - b2**step) / (1.0 - b1**step)}

    def update(self, u, s):
        new = []
        for g, m, v in zip(u.updates, u.state["exp_avg"], u.state["exp_avg_sq"]):
            g = g.coalesce()  # unique indices: the update is not linear in g
            at, vals = tuple(g.indices()), g.values()
            m_s, v_s = m[at], v[at]
            m_s += (vals - m_s) * s["1-b1"]
            v_s += (vals * vals - v_s) * s["1-b2"]
            m[at], v[at] = m_s, v_s
            step = m_s.div_(v_s.sqrt_().add_(s["eps"])).mul_(s["sqrt(bc2)/bc1"])
            new.append(torch.sparse_coo_tensor(g.indices(), step, g.shape, is_coalesced=True, check_invariants=False))
        u.replace(new)
        u._owned = True


#: optimlab options that would need dense gradients
_DENSE_OPTIONS = ("l2", "decoupled_decay", "clip_grad_value", "clip_param_grad_norm", "clip_grad_norm")


@register("sparse-adam", torch_name="SparseAdam", sparse_gradients=True)
class SparseAdam(Optimizer):
    """SparseAdam: Adam on the rows a sparse gradient touches (``nn.Embedding(sparse=True)``).

    Only sparse gradients are accepted (as in torch). Of optimlab's options, ``l1`` and
    ``independent_decay`` act on every row each step; those that would densify the gradient
    (``l2``, clipping, ``decoupled_decay``, ``skip_nonfinite``) are refused.
    Example: ``optimlab.SparseAdam(nn.Embedding(10_000, 64, sparse=True).parameters(), lr=1e-2)``.
    """

    low_precision = ("param_rounding",)  # its row-wise moments stay full precision

    step_as_int = True  # torch's SparseAdam keeps an int count

    sparse_gradients = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize), **options)

    def check_group(self, group):
        super().check_group(group)
        check_positive("lr", group["lr"])
        check_positive("eps", group["eps"])
        check_betas("betas", group["betas"])
        for p in group["params"]:
            if p.is_sparse:
                raise ValueError(f"SparseAdam requires dense parameter tensors (got a sparse one of shape "
                                 f"{tuple(p.shape)}); the gradients are sparse, the parameters dense")
            if torch.is_complex(p):
                raise ValueError(f"SparseAdam does not support complex parameters (got one of shape "
                                 f"{tuple(p.shape)}); optimise torch.view_as_real(p) instead")
        used = [f"{k}={group[k]!r}" for k in _DENSE_OPTIONS if group[k] not in (None, 0)]
        if self.skip_nonfinite:
            used.append("skip_nonfinite=True")
        if used:
            raise ValueError(f"SparseAdam does not support {', '.join(used)}: these options need dense gradients")

    def core(self, group):
        return [_scale_by_sparse_adam()]

    def _grad(self, p):
        g = super()._grad(p)
        if g is not None and not g.is_sparse:
            raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
        return g

