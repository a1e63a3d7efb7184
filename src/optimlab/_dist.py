"""Sums over the whole model when an optimizer sees only a shard of it.

Three decisions depend on every parameter: the global gradient norm (``clip_grad_norm=``),
non-finite skipping (``skip_nonfinite=True``) and Prodigy's / D-Adaptation's sums. Each rank
computes its part; these helpers add the parts up across the ranks that hold the rest:

* **FSDP2** (``torch.distributed.fsdp.fully_shard``): parameters and gradients are DTensors, so
  this is detected per tensor -- a value is summed over the mesh dimensions where its tensor is
  sharded (``Shard``) or holds partial sums (``Partial``). Per-tensor quantities (LAMB's trust
  ratio, LARS, NovoGrad, ``clip_param_grad_norm``) run on the DTensors themselves, whose norms
  are those of the full tensor.
* **ZeroRedundancyOptimizer** hands each rank's optimizer plain local tensors: the optimizer
  sums over ``process_group``. optimlab finds the group itself when ZeRO constructs it (ZeRO's
  own ``process_group=`` keyword is not passed on); other wrappers that shard plain tensors
  pass it: ``functools.partial(optimlab.AdamW, process_group=group)``.
* **DDP** (and one process): every rank holds every gradient; nothing to sum.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_dtensor(t: Any) -> bool:
    return _distributed() and isinstance(t, torch.distributed.tensor.DTensor)


def local(t: Tensor) -> Tensor:
    """A DTensor's local part (its shard, or its partial value); other tensors as they are."""
    return t.to_local() if is_dtensor(t) else t


def full(t: Tensor) -> Tensor:
    """The whole tensor: a DTensor gathered from its shards (every rank gets it); others as they are."""
    return t.full_tensor() if is_dtensor(t) else t


def like(x: Tensor, t: Tensor) -> Tensor:
    """``x`` (a whole tensor, the same on every rank) sharded as the DTensor ``t`` is (each rank
    keeps its own part: no communication); ``x`` itself where ``t`` is a plain tensor."""
    if not is_dtensor(t):
        return x
    from torch.distributed.tensor import DTensor, Replicate

    mesh = t.device_mesh
    whole = DTensor.from_local(x, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return whole.redistribute(mesh, t.placements)


def map_whole(fn: Callable[[Tensor], Tensor], xs: list[Tensor]) -> list[Tensor]:
    """``[fn(whole x), sharded as x]`` for every tensor: ``fn`` maps a whole tensor to one of the
    same shape and dtype (Muon's orthogonalisation). DTensors sharded over a 1-D mesh (FSDP2)
    share the work out: each is gathered, ``fn`` runs on one rank of the mesh (round robin) and
    the result is broadcast, so ``n`` matrices cost ``n / world`` evaluations per rank instead
    of ``n``, with the numbers of one process. Other tensors: ``fn`` where they are."""
    wholes = [full(x) for x in xs]
    out, pending = [], []
    for i, (x, w) in enumerate(zip(xs, wholes)):
        if not is_dtensor(x) or x.device_mesh.ndim != 1:
            out.append(fn(w))
            continue
        owner = i % x.device_mesh.size()
        y = fn(w).contiguous() if x.device_mesh.get_local_rank() == owner else torch.empty_like(w)
        pending.append(torch.distributed.broadcast(y, group=x.device_mesh.get_group(0), group_src=owner,
                                                   async_op=True))
        out.append(y)
    for work in pending:
        work.wait()
    return [like(y, x) for y, x in zip(out, xs)]


def _groups(t: Tensor, process_group) -> tuple:
    """The process groups over which ``t``'s local values add up to the whole value."""
    if is_dtensor(t):
        mesh = t.device_mesh
        return tuple(mesh.get_group(i) for i, pl in enumerate(t.placements) if pl.is_shard() or pl.is_partial())
    return () if process_group is None else (process_group,)


def zero_constructing() -> tuple[Any, bool]:
    """``(process_group, parameters_as_bucket_view)`` of the ``ZeroRedundancyOptimizer`` that is
    constructing (or adding a param group to) the calling optimizer; ``(None, False)`` outside one."""
    if not _distributed() or "torch.distributed.optim.zero_redundancy_optimizer" not in sys.modules:
        return None, False
    zero = sys.modules["torch.distributed.optim.zero_redundancy_optimizer"].ZeroRedundancyOptimizer
    frame, found = sys._getframe(1), None
    for _ in range(12):  # ZeRO's constructor is a few frames above the optimizer's
        if frame is None:
            break
        me = frame.f_locals.get("self")
        if isinstance(me, zero):
            found = me
            if "parameters_as_bucket_view" in me.__dict__:  # add_param_group after construction
                return me.process_group, me.parameters_as_bucket_view
            if "parameters_as_bucket_view" in frame.f_locals:  # the constructor: still an argument
                return me.process_group, bool(frame.f_locals["parameters_as_bucket_view"])
        frame = frame.f_back
    return (None, False) if found is None else (found.process_group, False)


def total(values: list[Tensor], tensors: list[Tensor], process_group=None) -> Tensor:
    """``sum(values)`` over every rank that holds a part: ``values[i]`` (a 0-d tensor)
    is this rank's part of a quantity of ``tensors[i]`` (a DTensor: its local shard's share), or
    a DTensor with a ``Partial`` placement itself. In float64, on the values' device; one
    all-reduce per distinct group. With ``process_group`` every rank must call it, also with no
    values (a ZeRO rank without gradients this step)."""
    buckets: dict[tuple, list[Tensor]] = {}
    if process_group is not None:
        buckets[(process_group,)] = []
    for v, t in zip(values, tensors):
        buckets.setdefault(_groups(t, process_group), []).append(local(v).to(torch.float64))
    device = next((v.device for vs in buckets.values() for v in vs), None)
    if device is None:  # nothing here: a zero (for the collective: on CPU for gloo, the GPU for NCCL)
        nccl = process_group is not None and "nccl" in str(torch.distributed.get_backend(process_group))
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    out = torch.zeros((), dtype=torch.float64, device=device)
    for groups, vs in buckets.items():
        part = torch.stack([v.to(device) for v in vs]).sum() if vs else torch.zeros_like(out)
        for g in groups:
            torch.distributed.all_reduce(part, group=g)
        out += part
    return out
