"""Muon's pieces (Keller Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024;
Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", 2024; Liu et al., "Muon is
Scalable for LLM Training", 2025), as torch.optim.Muon computes them.

* ``ema_momentum``: momentum as a moving average, from ``B_0 = 0``::

      B_t = mu B_{t-1} + (1 - mu) g_t
      u_t = (1 - mu) g_t + mu B_t   (Nesterov)   or   u_t = B_t

  (not :class:`~optimlab.transforms.momentum.trace`: that one adds ``(1 - dampening) g`` to an
  undamped first buffer, and its Nesterov step is ``g + mu B``).

* ``newton_schulz(G, steps, coefficients, eps)``: ``X_0 = G / max(||G||_F, eps)``, then ``steps``
  times ``A = X X^T``, ``X <- a X + (b A + c A^2) X``, in bfloat16 on the wide orientation of
  ``G`` (the Gram matrix is the smaller one). With Jordan's coefficients ``(3.4445, -4.7750,
  2.0315)`` the singular values land in roughly [0.5, 1.5]: ``X ~ U V^T`` for ``G = U S V^T``
  (Jordan: as good as the exact ``U V^T`` in training, for a fraction of the cost).

* ``orthogonalize``: ``u <- scale(shape) * newton_schulz(u)`` per matrix, with ``scale`` torch's
  learning-rate adjustment for an ``A x B`` matrix: ``sqrt(max(1, A / B))`` (``adjust_lr_fn``
  ``None`` or ``"original"``, Jordan) or ``0.2 sqrt(max(A, B))`` (``"match_rms_adamw"``, Liu et
  al.: the update's RMS matches AdamW's, so AdamW's lr and weight decay carry over).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import Tensor

from .. import _dist
from ..core import Transform

__all__ = ["ema_momentum", "newton_schulz", "orthogonalize"]

#: the shape-dependent scalings ``orthogonalize`` accepts (``None`` means ``"original"``)
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


@dataclasses.dataclass(frozen=True)
class ema_momentum(Transform):
    """Moving-average momentum (torch.optim.Muon's). State: ``momentum_buffer`` (like p)."""

    nesterov: bool = False
    momentum_key: str = "momentum"
    hyperparameters = ("momentum", "nesterov")
    moment_state = {"momentum_buffer": False}

    def init(self, p, group):
        return {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def scalars(self, group, step, host):
        mu = group[self.momentum_key]
        return {"mu": mu, "1-mu": 1.0 - mu}

    def update(self, u, s):
        bufs = u.state["momentum_buffer"]
        if self.nesterov and u.deferred() is None and not isinstance(s["mu"], Tensor):
            # buf <- buf + (1 - mu) (g - buf), then g + mu (buf - g): made one tensor at a time
            # by whoever applies or reads it (Muon orthogonalises each as it comes: one
            # matrix's temporaries at a time, its gradient and buffer read twice while in
            # cache, as torch's loop does)
            grads, mu, one_minus = u.updates, s["mu"], s["1-mu"]
            u.defer(lambda i: grads[i].lerp(bufs[i].lerp_(grads[i], one_minus), mu))
            return
        _lerp(bufs, u.updates, s["1-mu"], inplace=True)
        if self.nesterov:
            u.replace(_lerp(u.updates, bufs, s["mu"], inplace=False))
            u._owned = True
        else:
            u.replace(bufs)


def _lerp(xs: list[Tensor], ys: list[Tensor], w, inplace: bool) -> list[Tensor]:
    """``x + w (y - x)`` for every pair, in place or as new tensors. torch's lerp, so the
    roundings are torch.optim's; ``w`` is a Python number or a 0-d tensor."""
    if not isinstance(w, Tensor):
        return (torch._foreach_lerp_ if inplace else torch._foreach_lerp)(xs, ys, w)
    return [x.lerp_(y, w.to(x.dtype)) if inplace else x.lerp(y, w.to(x.dtype)) for x, y in zip(xs, ys)]


def newton_schulz(G: Tensor, steps: int = 5, coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7) -> Tensor:
    """Approximately orthogonalise the matrix ``G`` by the quintic Newton-Schulz iteration
    (see the module docstring); returns a bfloat16 matrix shaped like ``G``."""
    if G.ndim != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got a tensor of shape {tuple(G.shape)}")
    if len(coefficients) != 3:
        raise ValueError(f"Newton-Schulz coefficients must be 3 numbers (a, b, c), got {coefficients!r}")
    a, b, c = coefficients
    tall = G.size(0) > G.size(1)
    X = G.bfloat16()
    # X.norm()'s kernel without its two Python wrappers (Tensor.norm, torch.norm: ~3 us a
    # matrix, ~15 % of the non-matmul time of a small model's Muon step)
    norm = torch.linalg.vector_norm(X).clamp_min(eps)
    X = X.div_(norm) if X is not G else X / norm  # (in place on our own copy)
    if tall:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)  # a X + (b A + c A^2) X
    return X.T if tall else X


def _newton_schulz_as(x: Tensor, mat, steps: int, coefficients, eps) -> Tensor:
    """:func:`newton_schulz` of ``x`` seen as a matrix of shape ``mat`` (None: ``x`` is that
    matrix; a reshape costs ~2 us, a tiny model's step ~100 us), shaped like ``x`` again."""
    if mat is None:
        return newton_schulz(x, steps, coefficients, eps)
    return newton_schulz(x.reshape(mat), steps, coefficients, eps).reshape(x.shape)


def _lr_ratio(adjust_lr_fn: str | None, shape) -> float:
    """torch.optim.Muon's shape-dependent scaling of the learning rate for an ``A x B`` matrix."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"Invalid adjust_lr_fn: {adjust_lr_fn!r} (expected one of {ADJUST_LR_FNS})")


@dataclasses.dataclass(frozen=True)
class orthogonalize(Transform):
    """Replace each matrix update by its Newton-Schulz orthogonalisation, scaled for its shape
    by ``adjust_lr_fn``. No state. ``ns_steps`` is structure (the loop's length)."""

    ns_steps: int = 5
    adjust_lr_fn: str | None = None
    coefficients_key: str = "ns_coefficients"
    eps_key: str = "eps"
    hyperparameters = ("ns_coefficients", "eps", "ns_steps", "adjust_lr_fn")
    elementwise = False

    def scalars(self, group, step, host):
        a, b, c = group[self.coefficients_key]
        return {"a": a, "b": b, "c": c, "eps": group[self.eps_key]}

    def matrix_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """The shape of the matrix orthogonalised for an update of ``shape`` (here itself)."""
        return tuple(shape)

    def orthogonal(self, x: Tensor, s: dict) -> Tensor:
        """Newton-Schulz of ``x`` as its matrix (:meth:`matrix_shape`), shaped like ``x``
        again; bfloat16."""
        shape = tuple(x.shape)
        mat = self.matrix_shape(shape)
        return _newton_schulz_as(x, None if mat == shape else mat, self.ns_steps, (s["a"], s["b"], s["c"]), s["eps"])

    @functools.lru_cache(maxsize=64)
    def _plan(self, shapes: tuple) -> tuple[list[float], list]:
        """For each update shape: its learning-rate ratio, and the matrix shape to reshape to
        (None where it is the shape itself). Remembered: a model steps the same shapes every
        step."""
        mats = [self.matrix_shape(tuple(shape)) for shape in shapes]
        return ([_lr_ratio(self.adjust_lr_fn, mat) for mat in mats],
                [None if mat == tuple(shape) else mat for mat, shape in zip(mats, shapes)])

    def update(self, u, s):
        if not _dist._distributed():
            # one process: each bfloat16 matrix is applied as torch applies it, p <- p - lr *
            # ratio * O in one pass (no float32 copy, no scaling pass), and made when it is
            # applied, one at a time (its temporaries freed, their memory reused while still
            # in cache, before the next one's are made). Everything per step is looked up here,
            # not per matrix: the Python between two matrices' products runs with cold caches
            get = u.deferred() or u.updates.__getitem__
            steps, coefficients, eps = self.ns_steps, (s["a"], s["b"], s["c"]), s["eps"]
            ratios, mats = self._plan(tuple(g.shape for g in u.grads))

            u.defer(lambda i: _newton_schulz_as(get(i), mats[i], steps, coefficients, eps), ratios)
            return

        def whole(g):
            o = self.orthogonal(g, s).to(g.dtype)
            ratio = _lr_ratio(self.adjust_lr_fn, self.matrix_shape(tuple(g.shape)))
            return o if ratio == 1.0 else o.mul_(ratio)

        # shards (FSDP2's DTensors) are orthogonalised whole, each on one rank (see map_whole)
        u.replace(_dist.map_whole(whole, u.updates))
        u._owned = True
