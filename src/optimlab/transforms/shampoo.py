"""Shampoo's pieces (Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor
Optimization", ICML 2018; Anil et al., "Scalable Second Order Optimization for Deep Learning",
2020): Kronecker-factored statistics, their inverse roots, blocking and grafting.

For a block ``G`` of a gradient with ``k`` dims (a matrix: ``k = 2``) and ``G_(i)`` its
mode-``i`` unfolding (dim ``i`` as rows, all other dims flattened as columns)::

    H_i <- b2 H_i + (1 - b2) G_(i) G_(i)^T      (b2 = 1: H_i <- H_i + G_(i) G_(i)^T, the paper's sums)
    P_i  = (H_i / (1 - b2^t) + matrix_eps I)^(-1/(2k))   every precondition_frequency steps
    D    = M x_1 P_1 x_2 ... x_k P_k            (a matrix: D = P_L M P_R, P = (. + eps I)^(-1/4))

with ``M`` the filtered gradient ``m / (1 - b1^t)``, ``m <- b1 m + (1 - b1) g``. The inverse
roots come from an eigendecomposition in ``root_dtype`` (float64 by default) with the
eigenvalues clamped at zero before ``matrix_eps`` is added.

*Blocking* (Anil et al. §3): a dimension longer than ``block_size`` is cut into pieces of
``block_size`` (the last one shorter); the tensor is the grid of the resulting blocks, each with
its own statistics and roots, so no factor is larger than ``block_size x block_size``.

*Grafting* (Agarwal et al., "Disentangling Adaptive Gradient Methods from Learning Rates",
2020): each block's Shampoo direction takes the norm of another method's step, which sets the
per-layer step size while Shampoo sets the direction::

    "adam":  A = M / (sqrt(v / (1 - b2^t)) + eps),  v <- b2 v + (1 - b2) g^2   (AdaGrad for b2 = 1)
    "sgd":   A = M
    D_block <- D_block ||A_block|| / ||D_block||          ("none": no rescaling)

Before ``start_preconditioning_step`` the step is ``A`` itself (``M`` with ``"none"``), so with
``grafting="adam"`` Shampoo starts as Adam. Vectors and 0-d tensors are preconditioned
diagonally: ``D = M / (sqrt(v / (1 - b2^t)) + eps)``, then grafted like the blocks.

*Under FSDP2* (DTensor parameters; see :mod:`optimlab._dist`) the numbers are those of one
process and the inverse roots are shared out: on a refresh step each matrix's roots (every
block, every dim) are computed by one rank of the mesh, round robin over the matrices, and
broadcast, so ``n`` matrices cost about ``n / world`` sets of eigendecompositions per rank. The
factors and the roots are split by rows over the ranks (``Shard(0)``: each rank holds
``1 / world`` of them, and ``torch.distributed.checkpoint`` saves them as sharded tensors).
Each step every rank gathers the whole gradient, filtered gradient, grafting step and roots of
a matrix, adds its own rows of the whole blocks' ``G_(i) G_(i)^T`` to its rows of the factors,
preconditions the whole matrix as one process does and keeps its shard of the result; the
owner of a refresh gathers the whole factors. Computing only its own rows of a Gram matrix or
a product would round differently from one process (the products' blocking depends on their
shapes); so each rank repeats the whole matrix products, and only the eigendecompositions --
the expensive, poorly parallel part -- are shared.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings

import torch
from torch import Tensor

from .. import _dist
from ..core import Transform

__all__ = ["scale_by_shampoo", "block_slices", "inverse_root"]

#: the grafting choices of :class:`scale_by_shampoo`
GRAFTINGS = ("adam", "sgd", "none")


def block_slices(shape, block_size: int) -> list[tuple[slice, ...]]:
    """The blocks of a tensor of ``shape``: every dim cut into pieces of at most ``block_size``,
    the blocks listed in row-major order of the grid."""
    per_dim = [[slice(a, min(a + block_size, n)) for a in range(0, n, block_size)] for n in shape]
    return list(itertools.product(*per_dim))


def inverse_root(matrix: Tensor, root: int, eps: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(matrix + eps I)^(-1/root)`` of a symmetric positive semi-definite matrix, by an
    eigendecomposition in ``dtype``; negative eigenvalues (rounding) are clamped to zero first.
    Returned in ``matrix``'s dtype."""
    evals, evecs = torch.linalg.eigh(matrix.to(dtype))
    scale = (evals.clamp_min(0.0) + eps).pow(-1.0 / root)
    return ((evecs * scale) @ evecs.T).to(matrix.dtype)


def _new_root(previous: Tensor, factor: Tensor, order: int, eps: float, dtype: torch.dtype) -> Tensor:
    """``inverse_root(factor)``; if the eigendecomposition fails (a factor with inf/NaN from a
    diverging run), the ``previous`` root, and a warning says why."""
    try:
        return inverse_root(factor, order, eps, dtype)
    except torch.linalg.LinAlgError as e:
        warnings.warn(f"Shampoo: inverse root of a {tuple(factor.shape)} factor failed ({e}); keeping the previous "
                      "one (non-finite statistics mean the run diverged: lower lr)", RuntimeWarning, stacklevel=2)
        return previous


def _gram(block: Tensor, dim: int) -> Tensor:
    """``G_(dim) G_(dim)^T``: the block contracted with itself over every dim but ``dim``."""
    others = [d for d in range(block.ndim) if d != dim]
    return torch.tensordot(block, block, dims=(others, others))


def _precondition(block: Tensor, roots: list[Tensor]) -> Tensor:
    """``block x_1 P_1 ... x_k P_k``: contracting dim 0 with each (symmetric) root in turn moves
    it to the back, so after ``k`` contractions the dims are back in order."""
    for r in roots:
        block = torch.tensordot(block, r, dims=([0], [0]))
    return block


def _graft(direction: Tensor, graft: Tensor) -> Tensor:
    """``direction`` rescaled to the norm of ``graft`` (zero if ``direction`` is zero)."""
    dn, gn = torch.linalg.vector_norm(direction), torch.linalg.vector_norm(graft)
    return direction * torch.where(dn > 0, gn / dn.clamp_min(torch.finfo(dn.dtype).tiny), 0.0)


@dataclasses.dataclass(frozen=True)
class scale_by_shampoo(Transform):
    """Shampoo's preconditioned, grafted direction (see the module docstring).

    State: ``exp_avg`` (like p, the filtered gradient), ``exp_avg_sq`` (like p; with
    ``grafting="adam"`` and for vectors), and for tensors with ndim >= 2 ``factors`` and
    ``inverse_roots``: one list per block (in :func:`block_slices` order) of one ``n_i x n_i``
    matrix per dim. ``block_size``, ``grafting`` and ``root_dtype`` are structure:
    ``block_size`` fixes the state's shapes when it is created. Runs eagerly (per-tensor
    shapes; the root refresh is a host-side decision).
    """

    grafting: str = "adam"
    block_size: int = 256
    root_dtype: torch.dtype = torch.float64
    hyperparameters = ("betas", "eps", "matrix_eps", "precondition_frequency", "start_preconditioning_step",
                       "grafting", "block_size", "root_dtype")
    elementwise = False
    moment_state = {"exp_avg": False, "exp_avg_sq": True}

    def init(self, p, group):
        st = {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format)}
        if self.grafting == "adam" or p.ndim < 2:
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if p.ndim >= 2:  # DTensors: split by rows, see the module docstring
            blocks = block_slices(p.shape, self.block_size)
            sizes = [[s.stop - s.start for s in b] for b in blocks]
            st["factors"] = [[_dist.new_matrix(p, n) for n in ns] for ns in sizes]
            st["inverse_roots"] = [[_dist.new_matrix(p, n) for n in ns] for ns in sizes]
        return st

    def scalars(self, group, step, host):
        b1, b2 = (float(b) for b in group["betas"])
        start, freq = group["start_preconditioning_step"], group["precondition_frequency"]
        bc2 = 1.0 - b2**step if b2 < 1.0 else 1.0  # sums (b2 = 1) need no correction
        return {
            "b1": b1, "1-b1": 1.0 - b1,
            "b2": b2, "add": 1.0 - b2 if b2 < 1.0 else 1.0,
            "1/bc1": 1.0 / (1.0 - b1**step),
            "1/bc2": 1.0 / bc2,
            "1/sqrt(bc2)": 1.0 / math.sqrt(bc2),
            "eps": group["eps"], "matrix_eps": group["matrix_eps"],
            "precondition": step >= start,
            "refresh": step >= start and (step - start) % freq == 0,
        }

    def update(self, u, s):
        m, g = u.state["exp_avg"], u.updates
        torch._foreach_mul_(m, s["b1"])
        torch._foreach_add_(m, g, alpha=s["1-b1"])
        filtered = torch._foreach_mul(m, s["1/bc1"])
        n = len(g)
        none = [None] * n
        v_all, factors, roots = (u.state.get(k) or none for k in ("exp_avg_sq", "factors", "inverse_roots"))
        mats = [i for i in range(n) if factors[i] is not None]
        for i in mats:
            self._accumulate(_dist.full(g[i]), factors[i], s)
        whole_roots = dict(zip(mats, self._roots([g[i] for i in mats], [factors[i] for i in mats],
                                                 [roots[i] for i in mats], s)))
        new = []
        for i in range(n):
            gi, mi, v = g[i], filtered[i], v_all[i]
            adam = None
            if v is not None:
                v.mul_(s["b2"]).addcmul_(gi, gi, value=s["add"])
                adam = mi / (v.sqrt().mul_(s["1/sqrt(bc2)"]).add_(s["eps"]))
            graft = {"adam": adam, "sgd": mi, "none": None}[self.grafting]
            if factors[i] is not None:
                new.append(self._direction(gi, mi, graft, whole_roots[i], s))
            elif not s["precondition"]:
                new.append(mi if graft is None else graft)
            else:  # a vector or a scalar: the diagonal preconditioner is Adam's (AdaGrad's)
                new.append(adam if graft is None else _graft(adam, graft))
        u.replace(new, fresh=True)

    def _accumulate(self, g: Tensor, factors, s) -> None:
        """``H_i <- b2 H_i + add G_(i) G_(i)^T`` for every block of the whole gradient ``g``
        (each rank updates its own rows of a split factor)."""
        for b, fs in zip(block_slices(g.shape, self.block_size), factors):
            gb = g[b]
            for dim, f in enumerate(fs):
                _dist.local(f).mul_(s["b2"]).add_(_dist.part(_gram(gb, dim), f), alpha=s["add"])

    def _roots(self, gs, factors, roots, s) -> list[list[Tensor] | None]:
        """Each matrix's inverse roots, whole, flat (block by block, dim by dim); refreshed first
        on a refresh step: computed once (for DTensors on the owner rank, see
        :func:`optimlab._dist.share_out`) and stored, each rank keeping its rows. None before
        preconditioning starts."""
        flat = [[x for xs in per_block for x in xs] for per_block in roots]
        if not s["precondition"]:
            return [None] * len(gs)
        if not s["refresh"]:
            return [[_dist.full(r) for r in rs] for rs in flat]

        def refreshed(order, *wholes):  # the whole factors, then the whole previous roots
            half = len(wholes) // 2
            return [_new_root(r, f * s["1/bc2"], order, s["matrix_eps"], self.root_dtype)
                    for f, r in zip(wholes[:half], wholes[half:])]

        jobs = [(g, [f for xs in fs for f in xs] + rs, functools.partial(refreshed, 2 * g.ndim), rs)
                for g, fs, rs in zip(gs, factors, flat)]
        wholes = _dist.share_out(jobs)
        for rs, ws in zip(flat, wholes):
            for r, w in zip(rs, ws):
                _dist.local(r).copy_(_dist.part(w, r))
        return wholes

    def _direction(self, g, filtered, graft, roots, s) -> Tensor:
        """One matrix's direction from its whole roots (flat, see :meth:`_roots`): each block
        of the whole filtered gradient preconditioned and grafted; sharded as ``g``."""
        if not s["precondition"]:
            return filtered if graft is None else graft
        filtered, graft = _dist.full(filtered), None if graft is None else _dist.full(graft)
        blocks = block_slices(g.shape, self.block_size)
        k = g.ndim
        out = filtered.new_empty(g.shape, dtype=g.dtype)
        for j, b in enumerate(blocks):
            d = _precondition(filtered[b], roots[j * k:(j + 1) * k])
            out[b] = d if graft is None else _graft(d, graft[b])
        return _dist.like(out, g)
