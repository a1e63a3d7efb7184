"""SOAP's preconditioner (Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam",
ICLR 2025): Adam run in the eigenbasis of Shampoo's Kronecker factors.

For a tensor ``G`` with ndim >= 2, each dim ``i`` no longer than ``max_precond_dim`` keeps a
factor ``L_i`` (for a matrix, ``L`` and ``R``) and its eigenbasis ``Q_i``; longer dims are left
in their own basis. With ``rot(X) = X x_1 Q_1^T ... x_k Q_k^T`` and ``back`` its inverse::

    m <- b1 m + (1 - b1) g                              (in the original basis)
    v <- b2 v + (1 - b2) rot(g)^2                       (in the eigenbasis)
    u  = c_t back(rot(m) / (sqrt(v) + eps)),   c_t = sqrt(1 - b2^t) / (1 - b1^t)  (1 without correct_bias)
    L_i <- s L_i + (1 - s) G_(i) G_(i)^T                (s = shampoo_beta, after the step)

The eigenbases come from ``eigh`` on the first step, which only sets up ``L_i`` and ``Q_i`` and
moves nothing (so a gradient is never projected on a basis built from itself; the Adam counter
``t`` starts on the next step). Every ``precondition_frequency`` Adam steps (after the
statistics are updated), each ``Q_i`` is refreshed by one step of power iteration and a QR
decomposition, its columns first sorted by the estimated eigenvalues ``diag(Q_i^T L_i Q_i)``
(descending), and ``v`` permuted along dim ``i`` to follow them::

    perm = argsort(diag(Q_i^T L_i Q_i), descending),   v <- v[..., perm, ...],   Q_i <- qr(L_i Q_i[:, perm]).Q

This is the authors' reference implementation (github.com/nikhilvyas/SOAP) without its
dimension merging and 1-D preconditioning; the QR runs in the parameter's dtype. A tensor with
no preconditioned dim (vectors, scalars, every dim > ``max_precond_dim``) is updated by plain
Adam with the same ``c_t``, from the first step -- where the authors' code skips the first step
for every parameter, these tensors included (there they move one step later).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ..core import Transform

__all__ = ["scale_by_soap"]


def rotate(x: Tensor, bases: list[Tensor | None], back: bool = False) -> Tensor:
    """``x x_1 Q_1^T ... x_k Q_k^T`` (into the eigenbasis), or with ``back`` ``x x_1 Q_1 ...``;
    a ``None`` basis leaves its dim as it is. Each step contracts (or moves) dim 0 to the back,
    so after ``k`` of them the dims are back in order."""
    for q in bases:
        if q is None:
            x = x.movedim(0, -1)
        else:
            x = torch.tensordot(x, q, dims=([0], [1 if back else 0]))
    return x


def eigenbasis(factor: Tensor) -> Tensor:
    """The eigenvectors of a symmetric factor, by decreasing eigenvalue."""
    return torch.linalg.eigh(factor)[1].flip(1)


def refresh_eigenbasis(factor: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """One power-iteration step + QR from the current ``basis``, its columns first sorted by
    decreasing estimated eigenvalue; returns ``(new_basis, perm)``."""
    est = torch.einsum("ij,ij->j", basis, factor @ basis)  # diag(Q^T L Q)
    perm = torch.argsort(est, descending=True)
    return torch.linalg.qr(factor @ basis[:, perm])[0], perm


def _grams(g: Tensor, bases: list) -> list[Tensor | None]:
    """``G_(i) G_(i)^T`` for every preconditioned dim ``i`` (None elsewhere)."""
    dims = range(g.ndim)
    return [None if q is None else torch.tensordot(g, g, dims=([d for d in dims if d != i],) * 2)
            for i, q in enumerate(bases)]


@dataclasses.dataclass(frozen=True)
class scale_by_soap(Transform):
    """SOAP's update direction, and (``has_after``) its decoupled weight decay applied after the
    step as the authors do: ``p <- p - lr u``, then ``p <- (1 - lr wd) p`` (not on a tensor's
    set-up step). State: ``exp_avg``, ``exp_avg_sq`` (like p; ``exp_avg_sq`` in the rotated basis)
    and, for tensors with ndim >= 2, ``factors`` and ``eigenbases``: one ``n_i x n_i`` matrix per
    dim, ``None`` for dims longer than ``max_precond_dim``. ``max_precond_dim`` is structure (it
    fixes the state when it is created). Runs eagerly: the first step and the refreshes are
    host-side decisions on the step count."""

    max_precond_dim: int = 10000
    weight_decay_key: str = "weight_decay"
    lr_key: str = "lr"
    mask: object = None
    hyperparameters = ("betas", "shampoo_beta", "eps", "weight_decay", "precondition_frequency",
                       "max_precond_dim", "correct_bias")
    elementwise = False
    moment_state = {"exp_avg": False, "exp_avg_sq": True}
    has_after = True

    def init(self, p, group):
        st = {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
              "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        if p.ndim >= 2:
            st["factors"] = [p.new_zeros(n, n) if n <= self.max_precond_dim else None for n in p.shape]
            st["eigenbases"] = [p.new_zeros(n, n) if n <= self.max_precond_dim else None for n in p.shape]
        return st

    def scalars(self, group, step, host):
        b1, b2 = (float(b) for b in group["betas"])
        sb = group["shampoo_beta"]
        sb = b2 if sb is None else float(sb)

        def c(t):  # Adam's bias correction folded into the step size
            if t < 1:
                return 0.0
            return math.sqrt(1.0 - b2**t) / (1.0 - b1**t) if group["correct_bias"] else 1.0

        return {"b1": b1, "1-b1": 1.0 - b1, "b2": b2, "1-b2": 1.0 - b2, "1-sb": 1.0 - sb, "eps": group["eps"],
                "c": c(step), "c_rotated": c(step - 1), "first": step == 1,
                "refresh": step > 1 and (step - 1) % group["precondition_frequency"] == 0,
                "keep": 1.0 - float(group[self.lr_key]) * group[self.weight_decay_key]}

    def update(self, u, s):
        none = [None] * len(u.params)
        factors, bases = u.state.get("factors") or none, u.state.get("eigenbases") or none
        new = []
        for g, m, v, fs, qs in zip(u.updates, u.state["exp_avg"], u.state["exp_avg_sq"], factors, bases):
            rotated = fs is not None and any(q is not None for q in qs)
            if not rotated:  # plain Adam
                m.mul_(s["b1"]).add_(g, alpha=s["1-b1"])
                v.mul_(s["b2"]).addcmul_(g, g, value=s["1-b2"])
                new.append(m / (v.sqrt().add_(s["eps"])) * s["c"])
                continue
            if s["first"]:
                for f, q, gram in zip(fs, qs, _grams(g, qs)):
                    if f is not None:
                        f.lerp_(gram, s["1-sb"])
                        try:
                            q.copy_(eigenbasis(f))
                        except torch.linalg.LinAlgError as e:  # inf/NaN statistics: the run diverged
                            raise FloatingPointError(f"SOAP: the eigendecomposition of a {tuple(f.shape)} factor "
                                                     f"failed ({e}); the gradients are not finite") from None
                new.append(torch.zeros_like(g))
                continue
            g_rot = rotate(g, qs)
            m.mul_(s["b1"]).add_(g, alpha=s["1-b1"])
            v.mul_(s["b2"]).addcmul_(g_rot, g_rot, value=s["1-b2"])
            new.append(rotate(rotate(m, qs) / (v.sqrt().add_(s["eps"])), qs, back=True).mul_(s["c_rotated"]))
            for i, (f, q, gram) in enumerate(zip(fs, qs, _grams(g, qs))):
                if f is None:
                    continue
                f.lerp_(gram, s["1-sb"])
                if s["refresh"]:
                    basis, perm = refresh_eigenbasis(f, q)
                    q.copy_(basis)
                    v.copy_(v.index_select(i, perm))
        u.replace(new, fresh=True)

    def after(self, u, s):
        if s["keep"] == 1.0:
            return
        factors = u.state.get("factors") or [None] * len(u.params)
        for i in u.select(self.mask):
            fs = factors[i]
            if s["first"] and fs is not None and any(f is not None for f in fs):
                continue  # the set-up step moves nothing
            u.params[i].mul_(s["keep"])
