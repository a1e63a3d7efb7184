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

Whole-matrix work under FSDP2 (Muon's orthogonalisation, Shampoo's inverse roots, SOAP's
eigenbases) needs whole matrices, not shards. :func:`share_out` gathers the inputs, runs each
job on one rank of the mesh (round robin over the jobs, :func:`owners`) and broadcasts the
results, so ``n`` matrices cost ``n / world`` evaluations per rank instead of ``n``, with the
numbers of one process. Matrix state that such work reads (Kronecker factors, roots,
eigenbases) is created by :func:`new_matrix`: split by rows over the ranks where the parameter
is split (``Shard(0)``), so each rank holds ``1 / world`` of it at rest, as FSDP2 holds the
parameters, and ``torch.distributed.checkpoint`` saves and loads it as any sharded tensor;
whole matrices are gathered for the step that reads them and each rank keeps its own rows of
what comes back (:func:`part`). Nothing in the state belongs to an owner: ownership is a
choice made afresh on each call, and a resumed run may share the work out differently.
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


def part(x: Tensor, t: Tensor) -> Tensor:
    """This rank's part of ``x`` (a whole tensor, the same on every rank) where ``t`` is a DTensor
    split as ``x`` is to be (its local tensor: no communication); ``x`` itself where ``t`` is plain."""
    return local(like(x, t))


def new_matrix(p: Tensor, n: int) -> Tensor:
    """A zero ``n x n`` matrix of ``p``'s dtype and device, for ``p``'s optimizer state: a plain
    tensor for a plain ``p``; for a DTensor ``p`` a DTensor on its mesh, split by rows
    (``Shard(0)``) over the mesh dims where ``p`` is sharded and whole (``Replicate``) over the
    others -- each rank holds its share of it, as it does of ``p``."""
    if not is_dtensor(p):
        return p.new_zeros(n, n)
    from torch.distributed.tensor import Replicate, Shard, zeros

    placements = [Shard(0) if pl.is_shard() else Replicate() for pl in p.placements]
    return zeros(n, n, dtype=p.dtype, device_mesh=p.device_mesh, placements=placements)


def owners(xs: list[Tensor]) -> list[int | None]:
    """The rank (of its mesh) that does the whole-matrix work of each of ``xs``: the DTensors on a
    1-D mesh take the mesh's ranks in turn (round robin in list order, so every rank that holds
    the same list agrees); None for the others (plain tensors, n-D meshes): every rank does it."""
    out, k = [], 0
    for x in xs:
        if is_dtensor(x) and x.device_mesh.ndim == 1:
            out.append(k % x.device_mesh.size())
            k += 1
        else:
            out.append(None)
    return out


def _mine(owner: int | None, x: Tensor) -> bool:
    return owner is None or x.device_mesh.get_local_rank() == owner


def share_out(jobs: list[tuple[Tensor, list[Tensor], Callable[..., list[Tensor]], list[Tensor]]],
              may_fail: bool = True) -> list[list[Tensor]]:
    """``fn(*wholes)`` for every job ``(x, inputs, fn, outs)``, each computed once: ``wholes``
    are the ``inputs`` whole (DTensors gathered: every rank takes part), ``fn`` returns whole
    tensors with the shapes and dtypes of ``outs`` (tensors or DTensors: their global shapes).
    Where ``x`` is a DTensor on a 1-D mesh, ``fn`` runs on its owner (:func:`owners`) and the
    results are broadcast over the mesh; elsewhere on every rank. Every input is gathered before
    any ``fn`` runs and every broadcast is posted before any is waited on, so the owners work at
    the same time. With ``may_fail`` an owner's exception is raised on every rank of the mesh
    (a flag goes with each job's results, read once on the host: a sync); without it ``fn``
    must not raise (an owner that does leaves the other ranks waiting)."""
    own = owners([x for x, *_ in jobs])
    wholes = []
    for (x, inputs, _, _), o in zip(jobs, own):
        w = [full(t) for t in inputs]
        wholes.append(w if _mine(o, x) else None)  # only the owner keeps what it gathered
    results, pending, flags, errors = [], [], [], {}
    for k, ((x, _, fn, outs), o) in enumerate(zip(jobs, own)):
        w, wholes[k] = wholes[k], None
        if o is None:
            results.append(fn(*w))
            continue
        ys = None
        if w is not None:
            try:
                ys = [y.contiguous() for y in fn(*w)]
            except Exception as e:  # raised on every rank below, once the broadcasts are done
                if not may_fail:
                    raise
                errors[k] = e
        ys = ys or [torch.empty(t.shape, dtype=t.dtype, device=local(t).device) for t in outs]
        sent = ys
        if may_fail:
            flags.append((k, torch.tensor(k in errors, device=ys[0].device)))
            sent = [*ys, flags[-1][1]]
        group = x.device_mesh.get_group(0)
        pending += [torch.distributed.broadcast(y, group=group, group_src=o, async_op=True) for y in sent]
        results.append(ys)
    for work in pending:
        work.wait()
    if flags and torch.stack([f for _, f in flags]).any():
        k = next(k for k, f in flags if f)
        error = [errors.get(k)]
        torch.distributed.broadcast_object_list(error, group=jobs[k][0].device_mesh.get_group(0), group_src=own[k])
        raise error[0]
    return results


def map_whole(fn: Callable[[Tensor], Tensor], xs: list[Tensor]) -> list[Tensor]:
    """``[fn(whole x), sharded as x]`` for every tensor: ``fn`` maps a whole tensor to one of the
    same shape and dtype (Muon's orthogonalisation). DTensors sharded over a 1-D mesh (FSDP2)
    share the work out (:func:`share_out`): each is gathered, ``fn`` runs on one rank of the
    mesh (round robin) and the result is broadcast, so ``n`` matrices cost ``n / world``
    evaluations per rank instead of ``n``, with the numbers of one process. Other tensors:
    ``fn`` where they are."""
    if not _distributed():  # (one process: every tensor is whole; ~20 us a step on 6 matrices)
        return [fn(x) for x in xs]
    # Newton-Schulz cannot fail on any values: no flags (and no host sync) each step
    wholes = share_out([(x, [x], lambda w: [fn(w)], [x]) for x in xs], may_fail=False)
    return [like(y, x) for (y,), x in zip(wholes, xs)]


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
