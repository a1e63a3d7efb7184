"""Second derivatives: Hessian-vector products, exact Hessians, Hutchinson's diagonal estimate.

Two ways to get ``H v`` for a scalar loss ``f(params)``:

* **double backward** (reverse-over-reverse): differentiate ``g(p) . v`` where ``g`` was built
  with ``create_graph=True`` -- works on any closure/model, and one gradient graph serves many
  products (:func:`hvp_from_grads`);
* **forward-over-reverse** with ``torch.func`` (``jvp`` of ``grad``): needs ``f`` as a pure
  function of the parameters and pushes a tangent through the gradient instead of a second
  backward (:func:`hvp` with ``method="forward"``). On CPU it measured ~1.4x slower than double
  backward for an MLP (``benchmarks/hvp_speed.py``), so ``"reverse"`` is the default; measure on
  your model and device.

The exact Hessian of ``n`` parameters is ``n`` products, batched with ``vmap``
(:func:`hessian_from_grads`, :func:`hessian`); it is only sensible for small models -- see
:func:`check_dense_cost`. Hutchinson's estimator ``diag(H) ~ E[z * (H z)]`` with Rademacher ``z``
costs one product per sample (Bekas, Kokiopoulou & Saad 2007; used by AdaHessian and Sophia-H).

Example::

    >>> f = lambda w: (w ** 4).sum()
    >>> w = torch.tensor([1.0, 2.0])
    >>> hvp(f, [w], [torch.ones(2)])          # [12 * w**2]
    [tensor([12., 48.])]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "hvp",
    "hvp_from_grads",
    "hessian",
    "hessian_from_grads",
    "hutchinson_diag",
    "dense_bytes",
    "check_dense_cost",
    "HessianTooLarge",
    "flatten",
    "unflatten",
    "real_view",
]


def real_view(t: Tensor) -> Tensor:
    """A complex tensor as real numbers (``torch.view_as_real``: a trailing dimension of 2), a
    real one as itself. The flat-vector methods, like torch.optim.LBFGS, treat a complex
    parameter as the pair of its real and imaginary parts; autograd's gradient of a real loss
    is then ``dL/d re + i dL/d im``, so gradients and Hessian-vector products follow suit."""
    return torch.view_as_real(t) if t.is_complex() else t


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """One real 1-D tensor from a list (a copy; complex tensors by their real view)."""
    return torch.cat([real_view(t).reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a real 1-D tensor into tensors shaped (and, for complex ``like``, typed) like
    ``like``: views of ``flat``, except complex pieces at an odd offset, which are copies."""
    out, i = [], 0
    for t in like:
        if t.is_complex():
            n = 2 * t.numel()
            piece = flat[i:i + n].view(*t.shape, 2)
            if piece.storage_offset() % 2:  # view_as_complex needs an even offset
                piece = piece.clone()
            out.append(torch.view_as_complex(piece))
        else:
            n = t.numel()
            out.append(flat[i:i + n].view_as(t))
        i += n
    return out


# -- products --------------------------------------------------------------------------------------
def hvp_from_grads(grads: Sequence[Tensor], params: Sequence[Tensor], vs: Sequence[Tensor],
                   retain_graph: bool = True) -> list[Tensor]:
    """``H v`` by double backward, from gradients built with ``create_graph=True``.

    Parameters that do not influence the gradient (a linear model's intercept in a quadratic
    part, say) get zero rows rather than None."""
    if not any(g.requires_grad for g in grads):
        raise RuntimeError(
            "Hessian-vector products need the gradient's graph: compute the gradient with "
            "torch.autograd.grad(loss, params, create_graph=True) or loss.backward(create_graph=True)"
        )
    hv = torch.autograd.grad(grads, params, grad_outputs=list(vs), retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)]


def hvp(f: Callable[..., Tensor], params: Sequence[Tensor], vs: Sequence[Tensor],
        method: str = "reverse") -> list[Tensor]:
    """``H v`` for a pure function ``f(*params) -> scalar`` at ``params``.

    ``method="reverse"`` (default): double backward through ``torch.autograd``;
    ``method="forward"``: forward-over-reverse with ``torch.func.jvp(torch.func.grad(f))``."""
    params = tuple(p.detach() for p in params)
    vs = tuple(vs)
    if method == "forward":
        argnums = tuple(range(len(params)))
        _, out = torch.func.jvp(torch.func.grad(f, argnums=argnums), params, vs)
        return list(out)
    if method == "reverse":
        with torch.enable_grad():
            ps = [p.requires_grad_(True) for p in (q.clone() for q in params)]
            grads = torch.autograd.grad(f(*ps), ps, create_graph=True)
            return hvp_from_grads(grads, ps, vs, retain_graph=False)
    raise ValueError(f"Invalid method: {method!r} (use 'forward' -- torch.func -- or 'reverse' -- double backward)")


def hessian_from_grads(grads: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """The dense ``n x n`` Hessian (``n`` = total number of real parameter entries; a complex
    entry counts two) from gradients built with ``create_graph=True``: ``n`` double-backward
    products, batched with vmap."""
    flat_g = flatten(grads)
    n = flat_g.numel()
    eye = torch.eye(n, dtype=flat_g.dtype, device=flat_g.device)
    try:
        rows = torch.autograd.grad(flat_g, params, grad_outputs=eye, retain_graph=True,
                                   is_grads_batched=True, allow_unused=True)
    except RuntimeError:  # an op without a batching rule: one product at a time
        cols = [flatten(hvp_from_grads(grads, params, unflatten(e, params))) for e in eye]
        return torch.stack(cols, 1)
    rows = [torch.zeros(n, real_view(p).numel(), dtype=flat_g.dtype, device=flat_g.device) if r is None
            else real_view(r).reshape(n, -1) for r, p in zip(rows, params)]
    h = torch.cat(rows, 1)
    return 0.5 * (h + h.T)  # symmetric to rounding


def hessian(f: Callable[..., Tensor], params: Sequence[Tensor]) -> Tensor:
    """The dense Hessian of ``f(*params)`` over the flattened parameters."""
    with torch.enable_grad():
        ps = [p.detach().clone().requires_grad_(True) for p in params]
        grads = torch.autograd.grad(f(*ps), ps, create_graph=True)
        return hessian_from_grads(grads, ps)


def hutchinson_diag(grads: Sequence[Tensor] | None, params: Sequence[Tensor], samples: int = 1,
                    generator: torch.Generator | None = None,
                    hvp: Callable[[list[Tensor]], list[Tensor]] | None = None) -> list[Tensor]:
    """Unbiased estimate of ``diag(H)``: the mean over ``samples`` Rademacher vectors ``z`` of
    ``z * (H z)``. ``generator`` (on the parameters' device) makes it reproducible. The products
    are double backward through ``grads`` (built with ``create_graph=True``), or ``hvp(zs)``
    when given (``grads`` is then unused: a finite-difference product, say)."""
    est = [torch.zeros_like(p) for p in params]
    for _ in range(samples):
        zs = [torch.randint(0, 2, p.shape, generator=generator, device=p.device).to(p.dtype).mul_(2).sub_(1)
              for p in params]
        hz = hvp(zs) if hvp is not None else hvp_from_grads(grads, params, zs, retain_graph=True)
        torch._foreach_add_(est, torch._foreach_mul(zs, hz))
    if samples > 1:
        torch._foreach_div_(est, float(samples))
    return est


# -- the cost guard ------------------------------------------------------------------------------------
class HessianTooLarge(MemoryError):
    """A dense n x n matrix would not fit; the message says how much and what to use instead."""


def dense_bytes(n: int, dtype: torch.dtype) -> int:
    return n * n * torch.empty((), dtype=dtype).element_size()


def _fmt(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # pragma: no cover


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_dense_cost(what: str, n: int, dtype: torch.dtype, device: torch.device, copies: int,
                     max_bytes: int | None, alternatives: str) -> None:
    """Refuse an ``n x n`` dense matrix method whose ``copies`` matrices would need more than
    ``max_bytes`` (default: half of the memory available on the device now)."""
    need = copies * dense_bytes(n, dtype)
    limit = max_bytes
    if limit is None:
        avail = _available_bytes(torch.device(device))
        limit = None if avail is None else avail // 2
    if limit is not None and need > limit:
        raise HessianTooLarge(
            f"{what} needs {copies} dense {n} x {n} matrices ({_fmt(need)} in {str(dtype).replace('torch.', '')}) "
            f"for this model's {n:,} parameters, more than the {_fmt(limit)} allowed "
            f"({'max_memory' if max_bytes is not None else 'half the free memory'}). Use {alternatives}; "
            f"or pass max_memory=<bytes> / force=True to try anyway."
        )
