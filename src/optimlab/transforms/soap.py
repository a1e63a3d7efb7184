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

*Under FSDP2* (DTensor parameters; see :mod:`optimlab._dist`) the numbers are those of one
process and the eigendecompositions are shared out: on the first step and on each refresh a
tensor's bases (every dim: ``eigh``, or power iteration + QR and the sort) are computed by one
rank of the mesh, round robin over the tensors, and broadcast with the permutations, so ``n``
matrices cost about ``n / world`` of them per rank. The factors and the eigenbases are split by
rows over the ranks (``Shard(0)``: each rank holds ``1 / world`` of them, and
``torch.distributed.checkpoint`` saves them as sharded tensors); ``exp_avg`` and ``exp_avg_sq``
are sharded as the parameter. Each step every rank gathers the whole gradient, bases, ``m``
and ``v`` of a tensor, updates its own shards of ``m``, ``v`` and the factors (from the whole
rotated gradient and Gram matrices), computes the whole direction as one process does and keeps
its shard; the owner of a refresh gathers the whole factors. The rotations and Gram matrices
are repeated on every rank: computing only a rank's rows of them would round differently from
one process.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from .. import _dist
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


def _set_up(*factors: Tensor) -> list[Tensor]:
    """The eigenbases of a tensor's (whole) factors, on its set-up step."""
    out = []
    for f in factors:
        try:
            out.append(eigenbasis(f))
        except torch.linalg.LinAlgError as e:  # inf/NaN statistics: the run diverged
            raise FloatingPointError(f"SOAP: the eigendecomposition of a {tuple(f.shape)} factor "
                                     f"failed ({e}); the gradients are not finite") from None
    return out


def _refreshed(*wholes: Tensor) -> list[Tensor]:
    """``wholes``: a tensor's whole factors, then its whole bases (preconditioned dims only);
    returns the refreshed bases, then the permutations (:func:`refresh_eigenbasis`)."""
    half = len(wholes) // 2
    pairs = [refresh_eigenbasis(f, q) for f, q in zip(wholes[:half], wholes[half:])]
    return [b for b, _ in pairs] + [perm for _, perm in pairs]


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
        if p.ndim >= 2:  # DTensors: split by rows, see the module docstring
            st["factors"] = [_dist.new_matrix(p, n) if n <= self.max_precond_dim else None for n in p.shape]
            st["eigenbases"] = [_dist.new_matrix(p, n) if n <= self.max_precond_dim else None for n in p.shape]
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
        new, work = [], []  # work: (job, the bases it sets, (v, whole v, dims) to permute or None)
        for g, m, v, fs, qs in zip(u.updates, u.state["exp_avg"], u.state["exp_avg_sq"], factors, bases):
            rotated = fs is not None and any(q is not None for q in qs)
            if not rotated:  # plain Adam
                m.mul_(s["b1"]).add_(g, alpha=s["1-b1"])
                v.mul_(s["b2"]).addcmul_(g, g, value=s["1-b2"])
                new.append(m / (v.sqrt().add_(s["eps"])) * s["c"])
                continue
            # whole tensors (DTensors gathered); each rank updates its own shards of the state
            g_whole = _dist.full(g)
            dims = [i for i, f in enumerate(fs) if f is not None]
            used_f, used_q = [fs[i] for i in dims], [qs[i] for i in dims]
            if s["first"]:
                self._add_grams(g_whole, fs, qs, s)
                work.append(((g, used_f, _set_up, used_q), used_q, None))
                new.append(torch.zeros_like(g))
                continue
            q_whole = [None if q is None else _dist.full(q) for q in qs]
            g_rot = rotate(g_whole, q_whole)
            m.mul_(s["b1"]).add_(g, alpha=s["1-b1"])
            g_rot_part = _dist.part(g_rot, v)
            _dist.local(v).mul_(s["b2"]).addcmul_(g_rot_part, g_rot_part, value=s["1-b2"])
            v_whole = _dist.full(v)
            d = rotate(rotate(_dist.full(m), q_whole) / (v_whole.sqrt().add_(s["eps"])), q_whole, back=True)
            new.append(_dist.like(d.mul_(s["c_rotated"]), g))
            self._add_grams(g_whole, fs, qs, s)
            if s["refresh"]:
                perms = [torch.empty(q.shape[0], dtype=torch.long, device=_dist.local(q).device) for q in used_q]
                job = (g, used_f + [q_whole[i] for i in dims], _refreshed, used_q + perms)
                work.append((job, used_q, (v, v_whole, dims)))
        self._new_bases(work)
        u.replace(new, fresh=True)

    def _add_grams(self, g, factors, bases, s) -> None:
        """``L_i <- s L_i + (1 - s) G_(i) G_(i)^T`` from the whole gradient ``g`` (each rank
        updates its own rows of a split factor)."""
        for f, gram in zip(factors, _grams(g, bases)):
            if f is not None:
                _dist.local(f).lerp_(_dist.part(gram, f), s["1-sb"])

    def _new_bases(self, work) -> None:
        """Compute the jobs' bases once (see :func:`optimlab._dist.share_out`), store them (each
        rank its rows) and, on a refresh, permute ``v`` along each dim as its basis' columns."""
        results = _dist.share_out([job for job, _, _ in work])
        for (_, qs, moment), ws in zip(work, results):
            for q, w in zip(qs, ws):
                _dist.local(q).copy_(_dist.part(w, q))
            if moment is not None:
                v, v_whole, dims = moment
                for i, perm in zip(dims, ws[len(dims):]):
                    v_whole = v_whole.index_select(i, perm)
                _dist.local(v).copy_(_dist.part(v_whole, v))

    def after(self, u, s):
        if s["keep"] == 1.0:
            return
        factors = u.state.get("factors") or [None] * len(u.params)
        for i in u.select(self.mask):
            fs = factors[i]
            if s["first"] and fs is not None and any(f is not None for f in fs):
                continue  # the set-up step moves nothing
            u.params[i].mul_(s["keep"])
