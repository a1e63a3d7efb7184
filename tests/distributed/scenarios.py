"""Distributed scenarios: each trains a small MLP for a few steps under DDP, ZeroRedundancyOptimizer
or FSDP2 (2 gloo ranks on 127.0.0.1) and returns the full parameters, which
``test_distributed.py`` compares between the ranks (bit for bit) and with the same optimizer
run in one process on the full batch (:func:`reference`).

Run by hand (both ranks in one command, results printed)::

    python tests/distributed/scenarios.py [NAME ...]
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import socket
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist
from torch import nn

import optimlab

WORLD = 2
STEPS = 12
BATCH = 32
NAN_STEP = 5  # skip_nonfinite scenarios: an inf gradient on this step (every rank)
MASK = optimlab.Mask(exclude="bias")

# name -> how to run it: wrapper ("ddp", "zero", "fsdp"), optimizer class and keywords, and
# extras: zero (ZeroRedundancyOptimizer keywords), ddp (DistributedDataParallel keywords), groups (two param groups: the last layer's bias
# alone, so that under ZeRO one rank has an empty group), nan (the step on which to inject an
# inf), raises (the error every rank and one process must raise), resume ("dcp": a
# distributed checkpoint at half time; "torch": rank 0's state_dict through
# torch.load(weights_only=True)), partial (process_group= given through functools.partial),
# matrices (only the 2-D parameters, Muon's), halves (compared with reference(halves=True))
SCENARIOS: dict[str, dict] = {
    "ddp-adamw": dict(wrap="ddp", opt="AdamW", kw=dict(lr=1e-2)),
    "ddp-adamw-resume-weights-only": dict(wrap="ddp", opt="AdamW", kw=dict(lr=1e-2, decay_mask=MASK), resume="torch"),
    "zero-adamw": dict(wrap="zero", opt="AdamW", kw=dict(lr=1e-2)),
    "zero-adamw-bucket-view": dict(wrap="zero", opt="AdamW", kw=dict(lr=1e-2), zero=dict(parameters_as_bucket_view=True)),
    "zero-adamw-compile": dict(wrap="zero", opt="AdamW", kw=dict(lr=1e-2, compile=True, fused=False)),
    "zero-adamw-compile-bucket-view": dict(wrap="zero", opt="AdamW", kw=dict(lr=1e-2, compile=True, fused=False),
                                           zero=dict(parameters_as_bucket_view=True)),
    "ddp-lion-compile-grad-bucket-view": dict(wrap="ddp", opt="Lion", kw=dict(lr=1e-3, compile=True),
                                              ddp=dict(gradient_as_bucket_view=True)),
    "zero-adamw-empty-group": dict(wrap="zero", opt="AdamW", kw=dict(lr=1e-2), groups=True),
    "zero-clip": dict(wrap="zero", opt="AdamW", kw=dict(lr=1e-2, clip_grad_norm=0.05)),
    "zero-clip-bucket-view": dict(wrap="zero", opt="AdamW", kw=dict(lr=1e-2, clip_grad_norm=0.05),
                                  zero=dict(parameters_as_bucket_view=True)),
    "zero-clip-partial": dict(wrap="zero", opt="AdamW", kw=dict(lr=1e-2, clip_grad_norm=0.05), partial=True),
    "zero-skip-nonfinite": dict(wrap="zero", opt="AdamW", kw=dict(lr=1e-2, skip_nonfinite=True), nan=NAN_STEP),
    "zero-prodigy": dict(wrap="zero", opt="Prodigy", kw=dict(d0=1e-3)),
    "zero-dadapt": dict(wrap="zero", opt="DAdaptAdam", kw=dict(d0=1e-3)),
    "zero-sgd-accumulate": dict(wrap="zero", opt="SGD", kw=dict(lr=0.05, momentum=0.9, accumulate_steps=2)),
    "fsdp-adamw": dict(wrap="fsdp", opt="AdamW", kw=dict(lr=1e-2)),
    "fsdp-adamw-compile": dict(wrap="fsdp", opt="AdamW", kw=dict(lr=1e-2, compile=True, fused=False)),
    "fsdp-clip": dict(wrap="fsdp", opt="AdamW", kw=dict(lr=1e-2, clip_grad_norm=0.05)),
    "fsdp-clip-param": dict(wrap="fsdp", opt="AdamW", kw=dict(lr=1e-2, clip_param_grad_norm=0.02)),
    "fsdp-skip-nonfinite": dict(wrap="fsdp", opt="AdamW", kw=dict(lr=1e-2, skip_nonfinite=True), nan=NAN_STEP),
    "fsdp-mask": dict(wrap="fsdp", opt="AdamW", kw=dict(lr=1e-2, weight_decay=0.5, decay_mask=MASK)),
    "fsdp-lion": dict(wrap="fsdp", opt="Lion", kw=dict(lr=1e-3)),
    "fsdp-lamb": dict(wrap="fsdp", opt="LAMB", kw=dict(lr=1e-2, weight_decay=0.01)),
    "fsdp-lars": dict(wrap="fsdp", opt="LARS", kw=dict(lr=0.5)),
    "fsdp-novograd": dict(wrap="fsdp", opt="NovoGrad", kw=dict(lr=1e-2)),
    "fsdp-muon": dict(wrap="fsdp", opt="Muon", kw=dict(lr=1e-2), matrices=True),
    "fsdp-muon-adam": dict(wrap="fsdp", opt="MuonAdam", kw=dict(lr=1e-2)),
    # preconditioned from the second step on, where the statistics are nearly singular: a change
    # in the last bit of a gradient moves the result by 1e-2 (one process, full batch vs two
    # halves), so these compare with the gradients summed as DDP sums them (reference(halves=True))
    "ddp-shampoo": dict(wrap="ddp", opt="Shampoo", kw=dict(lr=1e-2, precondition_frequency=2, start_preconditioning_step=2),
                        halves=True),
    "zero-soap": dict(wrap="zero", opt="SOAP", kw=dict(lr=1e-2, precondition_frequency=2), halves=True),
    # well-conditioned statistics (matrix_eps): against the full-batch gradient, which rounds
    # differently from the sum of the halves
    "fsdp-shampoo": dict(wrap="fsdp", opt="Shampoo", kw=dict(lr=1e-2, precondition_frequency=2,
                                                              start_preconditioning_step=2, matrix_eps=1e-3)),
    # under FSDP2 the roots and eigenbases are computed whole, each once (on one rank) and
    # broadcast: with the gradients of the halves, the numbers of one process, nearly singular
    # statistics and blocks included
    "fsdp-shampoo-blocks": dict(wrap="fsdp", opt="Shampoo", kw=dict(lr=1e-2, precondition_frequency=2,
                                                                     start_preconditioning_step=2, block_size=5),
                                halves=True),
    "fsdp-soap": dict(wrap="fsdp", opt="SOAP", kw=dict(lr=1e-2, precondition_frequency=2), halves=True),
    # an inf gradient on the set-up step: the eigendecomposition fails on one rank (the owner), and
    # every rank raises its error (none is left waiting for the others)
    "fsdp-soap-nonfinite": dict(wrap="fsdp", opt="SOAP", kw=dict(lr=1e-2), nan=0, raises=FloatingPointError),
    "fsdp-adafactor": dict(wrap="fsdp", opt="Adafactor", kw=dict(lr=1e-2)),
    "fsdp-prodigy": dict(wrap="fsdp", opt="Prodigy", kw=dict(d0=1e-3)),
    "fsdp-adamw-resume-dcp": dict(wrap="fsdp", opt="AdamW", kw=dict(lr=1e-2, decay_mask=MASK), resume="dcp"),
    "fsdp-shampoo-resume-dcp": dict(wrap="fsdp", opt="Shampoo", kw=dict(lr=1e-2, precondition_frequency=2,
                                                                         start_preconditioning_step=2),
                                    halves=True, resume="dcp"),
    "fsdp-soap-resume-dcp": dict(wrap="fsdp", opt="SOAP", kw=dict(lr=1e-2, precondition_frequency=2, weight_decay=0.1),
                                 halves=True, resume="dcp"),
}


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)


def _groups(net: nn.Module, spec: dict):
    named = [(n, p) for n, p in net.named_parameters() if p.ndim == 2 or not spec.get("matrices")]
    if not spec.get("groups"):
        return named
    return [{"params": named[:-1]}, {"params": named[-1:], "lr": 3e-3}]


def _poison(net: nn.Module, step: int, at: int) -> None:
    """An inf in one gradient entry (the first layer's weight) on step ``at``."""
    if step == at:
        g = next(net.parameters()).grad
        if hasattr(g, "to_local"):  # FSDP2: the rank whose shard holds entry (0, 0)
            g = g.to_local() if dist.get_rank() == 0 else g.to_local()[:0]
        g.view(-1)[:1] = float("inf")


def reference(name: str, halves: bool = False) -> torch.Tensor:
    """The same optimizer in one process on the full batch: the parameters after STEPS steps.
    ``halves``: the gradient summed as DDP sums it, ``(g_0 + g_1) / 2`` over the two half-batch
    means (the same float32 numbers), for optimizers whose preconditioners amplify rounding."""
    spec = SCENARIOS[name]
    net = model()
    opt = getattr(optimlab, spec["opt"])(_groups(net, spec), **spec["kw"])
    x, y = data()
    for step in range(STEPS):
        if not halves:
            _train_step(net, opt, x, y, spec, step)
            continue
        for part in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH)):
            nn.functional.mse_loss(net(x[part]), y[part]).backward()
        for p in net.parameters():
            p.grad.div_(WORLD)
        opt.step()
        opt.zero_grad()
    return _flat(net)


def _train_step(net, opt, x, y, spec, step) -> None:
    loss = nn.functional.mse_loss(net(x), y)
    loss.backward()
    if spec.get("nan") is not None:
        _poison(net, step, spec["nan"])
    opt.step()
    opt.zero_grad()


def _flat(net: nn.Module) -> torch.Tensor:
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in net.parameters()]
    return torch.cat([p.detach().reshape(-1) for p in full])


# ---------------------------------------------------------------------------------------------
# One rank.
# ---------------------------------------------------------------------------------------------
def _build(spec: dict, rank: int):
    """The wrapped model and optimizer of a scenario on this rank."""
    net = model()
    cls = getattr(optimlab, spec["opt"])
    kw = dict(spec["kw"])
    if spec["wrap"] == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (WORLD,))
        for layer in net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(net, mesh=mesh)
        return net, net, cls(_groups(net, spec), **kw)
    ddp = nn.parallel.DistributedDataParallel(net, **spec.get("ddp", {}))
    if spec["wrap"] == "ddp":
        return net, ddp, cls(_groups(net, spec), **kw)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if spec.get("partial"):
        cls = functools.partial(cls, process_group=dist.group.WORLD)
    params = [g for g in _groups(net, spec)] if spec.get("groups") else [p for _, p in net.named_parameters()]
    if spec.get("groups"):  # ZeRO takes groups of plain tensors
        params = [{**g, "params": [p for _, p in g["params"]]} for g in params]
        kw.pop("decay_mask", None)
    return net, ddp, ZeroRedundancyOptimizer(params, cls, **spec.get("zero", {}), **kw)


def run(name: str, rank: int, tmp: str):
    """Train scenario ``name`` on this rank (its half of the batch); the full parameters and the
    optimizer."""
    spec = SCENARIOS[name]
    net, wrapped, opt = _build(spec, rank)
    x, y = data()
    half = BATCH // WORLD
    xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
    for step in range(STEPS):
        if step == STEPS // 2 and spec.get("resume"):
            net, wrapped, opt = _resume(spec, net, opt, rank, tmp, name)
        if spec.get("nan") is None:
            _train_step(wrapped, opt, xs, ys, spec, step)
        else:
            _nan_step(net, wrapped, opt, xs, ys, spec, step)
    return _flat(net), opt


#: the optimizer state entries that hold matrices (Shampoo's, SOAP's), nested lists per parameter
MATRIX_STATE = ("factors", "inverse_roots", "eigenbases")


def grads_in_flat_buffers(opt) -> tuple[int, int]:
    """(parameters whose ``.grad`` is a view of the compiled engine's flat gradient buffers,
    flat buckets that keep such a buffer between steps)."""
    engine = getattr(opt, "_engine", None)
    buckets = [b for lay in engine._layouts.values() for b in lay.buckets] if engine else []
    flat = {b.flat_grad.untyped_storage().data_ptr() for b in buckets if b.flat_grad is not None}
    params = [p for g in opt.param_groups for p in g["params"]]
    return sum(p.grad is not None and p.grad.untyped_storage().data_ptr() in flat for p in params), len(flat)


def matrix_state(opt) -> dict[str, tuple[int, int]]:
    """``{key: (entries of the whole matrices, entries this rank holds)}`` over every parameter's
    MATRIX_STATE entries (DTensors: their global and local sizes)."""
    def tensors(x):
        if isinstance(x, (list, tuple)):
            return [t for v in x for t in tensors(v)]
        return [] if x is None else [x]

    out = {}
    for st in opt.state.values():
        for key in MATRIX_STATE:
            for t in tensors(st.get(key)):
                whole, mine = out.get(key, (0, 0))
                here = t.to_local() if hasattr(t, "to_local") else t
                out[key] = (whole + t.numel(), mine + here.numel())
    return out


def _nan_step(net, wrapped, opt, xs, ys, spec, step) -> None:
    nn.functional.mse_loss(wrapped(xs), ys).backward()
    _poison(net, step, spec["nan"])
    opt.step()
    opt.zero_grad()


def _resume(spec, net, opt, rank, tmp, name):
    """Save the optimizer (and model), build both afresh, load, and carry on."""
    if spec["resume"] == "torch":
        path = os.path.join(tmp, f"{name}.pt")
        if rank == 0:
            torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, path)
        dist.barrier()
        ckpt = torch.load(path, weights_only=True)
        new_net, new_wrapped, new_opt = _build(spec, rank)
        new_net.load_state_dict(ckpt["model"])
        new_opt.load_state_dict(ckpt["opt"])
        return new_net, new_wrapped, new_opt
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = os.path.join(tmp, name)
    msd, osd = get_state_dict(net, opt)
    dcp.save({"model": msd, "opt": osd}, checkpoint_id=path)
    new_net, new_wrapped, new_opt = _build(spec, rank)
    msd, osd = get_state_dict(new_net, new_opt)
    state = {"model": msd, "opt": osd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(new_net, new_opt, model_state_dict=state["model"], optim_state_dict=state["opt"])
    return new_net, new_wrapped, new_opt


#: the whole-matrix computations that FSDP2 shares out over the ranks, counted per rank:
#: name -> (module of optimlab.transforms, function)
COUNTED = {
    "newton_schulz": ("orthogonal", "newton_schulz"),  # Muon
    "inverse_root": ("shampoo", "inverse_root"),  # Shampoo, one per factor and refresh
    "eigenbasis": ("soap", "eigenbasis"),  # SOAP's set-up, one per factor
    "refresh_eigenbasis": ("soap", "refresh_eigenbasis"),  # SOAP's refresh, one per factor
}


@contextlib.contextmanager
def _counting():
    """Count this rank's calls of each function of COUNTED (``{name: calls}``)."""
    import importlib

    calls, originals = dict.fromkeys(COUNTED, 0), {}
    for name, (mod, fn) in COUNTED.items():
        module = importlib.import_module(f"optimlab.transforms.{mod}")
        originals[name] = (module, getattr(module, fn))

        def counted(*args, _name=name, **kwargs):
            calls[_name] += 1
            return originals[_name][1](*args, **kwargs)

        setattr(module, fn, counted)
    try:
        yield calls
    finally:
        for name, (module, original) in originals.items():
            setattr(module, COUNTED[name][1], original)


def worker(rank: int, port: int, names: list[str], out: str) -> None:
    """One rank: every scenario in turn; ``{name: params or error text}`` saved to ``out``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as own:
        tmp = dist.get_rank() == 0 and own
        shared = [tmp]
        dist.broadcast_object_list(shared, src=0)
        for name in names:
            try:
                with _counting() as calls:
                    results[name], opt = run(name, rank, shared[0])
                results.update({f"{name}:{fn}_calls": n for fn, n in calls.items()})
                results[f"{name}:matrix_state"] = matrix_state(opt)
                results[f"{name}:grads_in_flat_buffers"] = grads_in_flat_buffers(opt)
            except Exception:  # reported by the test of that scenario
                results[name] = traceback.format_exc()
            dist.barrier()
        dist.destroy_process_group()
    torch.save(results, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(names: list[str], folder: str) -> list[dict]:
    """Both ranks (spawned processes) over ``names``; their results, rank by rank."""
    import torch.multiprocessing as mp

    port = free_port()
    outs = [os.path.join(folder, f"rank{r}.pt") for r in range(WORLD)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(r, port, names, outs[r])) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        if p.is_alive():
            p.kill()
    return [torch.load(o, weights_only=False) if os.path.exists(o) else {} for o in outs]


if __name__ == "__main__":
    torch.set_num_threads(1)
    chosen = sys.argv[1:] or list(SCENARIOS)
    with tempfile.TemporaryDirectory() as d:
        ranks = run_all(chosen, d)
    for n in chosen:
        got = [r.get(n) for r in ranks]
        if any(not isinstance(g, torch.Tensor) for g in got):
            print(f"{n}: ERROR\n{next(g for g in got if not isinstance(g, torch.Tensor))}")
            continue
        ref = reference(n, halves=SCENARIOS[n].get("halves", False))
        calls = {fn: [r.get(f"{n}:{fn}_calls") for r in ranks] for fn in COUNTED}
        print(f"{n}: ranks differ by {(got[0] - got[1]).abs().max().item():.3g}, "
              f"from one process by {(got[0] - ref).abs().max().item():.3g}; calls per rank "
              + ", ".join(f"{fn} {c}" for fn, c in calls.items() if any(c)))
