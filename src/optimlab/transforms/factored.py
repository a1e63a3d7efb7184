"""Adafactor's pieces (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear
Memory Cost", ICML 2018), as torch.optim.Adafactor computes them.

* ``scale_by_factored_rms``: a second-moment estimate stored in factored form. With ``w_t =
  t^decay`` (``decay <= 0``; ``w_t = 1 - beta2_t`` is the weight of the new gradient) and ``G`` a
  gradient of ndim >= 2 (factored over its last two dims; leading dims are a batch)::

      R_t = (1 - w_t) R_{t-1} + w_t mean_cols(G^2)         row_var, shape (..., m, 1)
      C_t = (1 - w_t) C_{t-1} + w_t mean_rows(G^2)         col_var, shape (..., 1, n)
      V_t = R_t C_t / max(mean(R_t), eps1)

  and for a vector or a 0-d tensor ``V_t = (1 - w_t) V_{t-1} + w_t G^2`` (``variance``); then
  ``u = G / max(sqrt(V_t), eps1)``. ``eps1`` defaults to the dtype's machine epsilon.

* ``clip_by_block_rms``: ``u <- u / max(1, RMS(u) / d)`` per tensor (update clipping).

* ``scale_by_param_rms``: the relative step ``alpha_t = max(eps2, RMS(p)) rho_t`` with
  ``rho_t = min(lr, 1 / sqrt(t))``. It scales ``u`` by ``alpha_t / lr`` so that the engine's
  ``p <- p - lr u`` takes exactly the step ``alpha_t`` (``lr`` caps ``rho_t``; ``lr = 0`` moves
  nothing).

``eps`` is Adafactor's pair ``(eps1, eps2)``; ``RMS(x) = ||x||_2 / sqrt(numel(x))``.

All three are ``layerwise``: with ``compile=True`` the parameters whose state is shaped like
them (vectors, 0-d tensors: their second moment is not factored) run in one compiled kernel
that takes the per-tensor RMS from its row layout; matrices, whose factored moments are not,
stay on the eager path.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from ..core import PIECE, Transform

__all__ = ["scale_by_factored_rms", "clip_by_block_rms", "scale_by_param_rms"]


def _rms(xs: list) -> list:
    """``||x||_2 / sqrt(numel(x))`` of every tensor, as 0-d tensors."""
    return [n / math.sqrt(max(x.numel(), 1)) for n, x in zip(torch._foreach_norm(xs), xs)]


def _per_tensor(xs: list, fn) -> list:
    """``fn(rms)`` for every tensor of ``xs`` (``rms`` its ``||x||_2 / sqrt(numel(x))``), as 0-d
    tensors. Plain tensors of one dtype: the RMS of all of them as one vector, so ``fn`` costs a
    few small ops per step instead of a few per tensor (each ~3 us on a CPU)."""
    norms = torch._foreach_norm(xs)
    if len(norms) < 2 or any(type(n) is not torch.Tensor or n.dtype != norms[0].dtype for n in norms):
        return [fn(r) for r in _rms(xs)]  # (mixed dtypes, DTensors: one tensor at a time)
    sizes = _inv_sqrt(tuple(x.numel() for x in xs), norms[0].dtype, norms[0].device)
    return list(fn(torch.stack(norms) * sizes).unbind())


def _chunks(idx: list[int], xs: list) -> list[list[int]]:
    """``idx`` in consecutive runs of about ``PIECE`` entries of ``xs`` in all (at least one index each)."""
    out, run, size = [], [], 0
    for i in idx:
        if run and size + xs[i].numel() > PIECE:
            out.append(run)
            run, size = [], 0
        run.append(i)
        size += xs[i].numel()
    return out + [run] if run else out


def _means(xs: list, dim: int) -> list:
    """``x.mean(dim, keepdim=True)`` of every tensor: the sums, then one foreach division
    (what ``mean`` does in float32 / float64; 16-bit means accumulate in float32)."""
    if any(x.dtype not in (torch.float32, torch.float64) for x in xs):
        return [x.mean(dim, keepdim=True) for x in xs]
    sums = [x.sum(dim, keepdim=True) for x in xs]
    torch._foreach_div_(sums, [x.shape[dim] for x in xs])
    return sums


@functools.lru_cache(maxsize=256)
def _inv_sqrt(numels: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``1 / sqrt(numel)`` of each tensor of a bucket (read, never written)."""
    return torch.tensor([1.0 / math.sqrt(max(n, 1)) for n in numels], dtype=dtype, device=device)


@dataclasses.dataclass(frozen=True)
class scale_by_factored_rms(Transform):
    """Adafactor's preconditioner. State: ``row_var`` and ``col_var`` for tensors with ndim >= 2,
    ``variance`` (like p) otherwise. ``dtype_eps=True`` uses each tensor's machine epsilon for
    ``eps1`` (torch's ``eps=(None, eps2)``)."""

    dtype_eps: bool = False
    decay_key: str = "beta2_decay"
    eps_key: str = "eps"
    hyperparameters = ("beta2_decay", "eps")
    moment_state = {"variance": True}
    elementwise = False
    layerwise = True  # (only unfactored tensors reach the flat path: their code is elementwise)
    per_tensor = True

    def init(self, p, group):
        if p.ndim < 2:
            return {"variance": torch.zeros_like(p, memory_format=torch.preserve_format)}
        *batch, m, n = p.shape
        return {"row_var": p.new_zeros(*batch, m, 1), "col_var": p.new_zeros(*batch, 1, n)}

    def scalars(self, group, step, host):
        w = step ** group[self.decay_key]
        eps1 = group[self.eps_key][0]  # None (torch's default): the dtype's epsilon, see dtype_eps
        return {"w": w, "1-w": 1.0 - w, "eps1": 0.0 if eps1 is None else eps1}

    def update(self, u, s):
        none = [None] * len(u.params)
        rows, cols, variances = (u.state.get(k) or none for k in ("row_var", "col_var", "variance"))
        eps1 = [torch.finfo(g.dtype).eps if self.dtype_eps else s["eps1"] for g in u.updates]
        new = list(u.updates)
        # foreach ops over each kind (factored or not), torch's order: a per-tensor op with a
        # Python number costs ~3 us on a CPU, as much as the whole op on a small tensor. In
        # chunks of about PIECE entries, so that one chunk's passes find it in cache (a large
        # tensor is a chunk of its own: its passes follow one another, as torch's loop's do)
        for factored in (True, False):
            for idx in _chunks([i for i, r in enumerate(rows if factored else variances) if r is not None], u.updates):
                g, e = [u.updates[i] for i in idx], [eps1[i] for i in idx]
                sq = torch._foreach_mul(g, g)
                if factored:  # V = R C / mean(R); a mean is a sum over the count (as Tensor.mean)
                    row, col = [rows[i] for i in idx], [cols[i] for i in idx]
                    torch._foreach_lerp_(row, _means(sq, -1), s["w"])
                    torch._foreach_lerp_(col, _means(sq, -2), s["w"])
                    del sq
                    v = torch._foreach_mul(row, col)
                    mean = _means(row, -2)
                    torch._foreach_clamp_min_(mean, e)
                    torch._foreach_div_(v, mean)
                else:
                    variance = [variances[i] for i in idx]
                    torch._foreach_lerp_(variance, sq, s["w"])
                    del sq
                    if u.segments is None:
                        v = torch._foreach_clamp_min(variance, [x * x for x in e])
                    else:  # (one flat tensor: the op Inductor fuses, not a foreach call it runs as is)
                        v = [x.clamp_min(y * y) for x, y in zip(variance, e)]
                if factored:
                    torch._foreach_clamp_min_(v, [x * x for x in e])
                torch._foreach_rsqrt_(v)
                torch._foreach_mul_(v, g)
                for i, x in zip(idx, v):
                    new[i] = x
        u.replace(new)
        u._owned = True


@dataclasses.dataclass(frozen=True)
class clip_by_block_rms(Transform):
    """Update clipping: ``u <- u / max(1, RMS(u) / d)`` for each tensor."""

    key: str = "d"
    elementwise = False
    layerwise = True
    per_tensor = True

    @property
    def hyperparameters(self):
        return (self.key,)

    def scalars(self, group, step, host):
        return {"d": group[self.key]}

    def update(self, u, s):
        seg = u.segments
        if seg is not None:  # the flat compiled path: per-tensor RMS from the rows
            (x,) = u.updates
            rms = seg.rms(x)
            u.replace([x / seg.expand((rms / s["d"]).clamp_min(1.0))], fresh=True)
            return
        ups = u.mutable()
        torch._foreach_div_(ups, _per_tensor(ups, lambda r: (r / s["d"]).clamp_min(1.0)))


@dataclasses.dataclass(frozen=True)
class scale_by_param_rms(Transform):
    """Adafactor's relative step: ``u <- max(eps2, RMS(p)) * min(1, 1 / (lr sqrt(t))) * u``, so
    the applied step ``lr u`` is ``max(eps2, RMS(p)) min(lr, 1 / sqrt(t)) u``."""

    eps_key: str = "eps"
    lr_key: str = "lr"
    elementwise = False
    layerwise = True
    per_tensor = True

    @property
    def hyperparameters(self):
        return (self.eps_key, self.lr_key)

    def scalars(self, group, step, host):
        if isinstance(step, torch.Tensor):  # a traced step: min(1, 1 / (lr sqrt(t))) without a branch
            lr_sqrt_t = group[self.lr_key] * step.sqrt()
            return {"eps2": group[self.eps_key][1], "rho/lr": lr_sqrt_t.clamp_min(1.0).reciprocal()}
        lr_sqrt_t = float(group[self.lr_key]) * step**0.5
        return {"eps2": group[self.eps_key][1], "rho/lr": 1.0 if lr_sqrt_t <= 1.0 else 1.0 / lr_sqrt_t}

    def update(self, u, s):
        seg = u.segments
        if seg is not None:  # the flat compiled path: per-tensor RMS from the rows
            (x,), (p,) = u.updates, u.params
            rms = seg.rms(p)
            u.replace([x * seg.expand(rms.clamp_min(s["eps2"]) * s["rho/lr"])], fresh=True)
            return
        ups = u.mutable()
        torch._foreach_mul_(ups, _per_tensor(u.params, lambda r: r.clamp_min(s["eps2"]) * s["rho/lr"]))
