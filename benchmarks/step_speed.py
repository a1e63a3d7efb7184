"""Optimizer step speed and memory: optimlab against torch.optim, algorithm by algorithm.

How to run (from the repository root, inside the project's virtual environment)::

    python benchmarks/step_speed.py                        # every algorithm torch.optim also has
    python benchmarks/step_speed.py --algos adam,adamw     # some of them
    python benchmarks/step_speed.py --small                # quick check (~2 M parameters, 5 repeats)
    python benchmarks/step_speed.py --repeats 40 --layouts model --threads 1
    python benchmarks/step_speed.py --cold-cache           # compile times without Inductor's disk cache

What it measures. Every optimizer in ``optimlab.REGISTRY`` with a ``torch_name`` (and a class of
that name in the installed torch.optim) is stepped on two layouts of float32 parameters:

* ``model``: ~25 M parameters in ~200 tensors shaped like a small transformer (16 layers,
  d_model 320, vocabulary 16 000): embeddings, attention and MLP matrices, biases, norms;
* ``flat``: one tensor of the same total size.

Ours runs with ``compile=True`` (one compiled kernel over flat buffers where the chain is
elementwise, the eager path otherwise); torch's with ``foreach=False`` (the for-loop),
``foreach=True`` and ``fused=True``, each where torch supports it on this device. Muon only takes
matrices: it gets the 2-D tensors of ``model`` (both libraries) and skips ``flat``. Gradients are
fixed random tensors set once. Each repeat steps every implementation once, in rotating order,
so machine noise hits all of them alike; the table shows medians.

Columns: median step time of ours and of each torch implementation (ms); ``ratio`` = ours /
torch's fastest (target <= 1.00; for Adam and AdamW torch's fastest is its fused kernel);
``state B/p``: optimizer-state bytes per parameter (ours / torch's); ``alloc B/p``: bytes
allocated inside one step per parameter, i.e. temporaries (ours / torch's fastest; from the
profiler); ``first s``: our first step (flattening, tracing and compiling the kernel, with
Inductor's on-disk cache as it is unless ``--cold-cache``); ``path``: whether ours ran the
compiled flat kernel or the eager path. The compile time of each kernel is listed at the end.

The machine's load average is printed first: the timings are only as good as the machine is
quiet (a busy core stalls every OpenMP parallel region, which penalises implementations that
open many of them -- torch's per-tensor kernels -- and makes everything noisy).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import statistics
import tempfile
import time

import torch

import optimlab

# Hyperparameters for the run (both libraries); defaults otherwise. SGD gets momentum so that
# it has state and does more than an axpy.
BENCH_KWARGS = {
    "sgd": dict(lr=1e-3, momentum=0.9),
}
# Targets: ours / torch's fastest <= 1.0 for everything; for these, torch's fused kernel.
FUSED_TARGET = ("adam", "adamw")


def transformer_shapes(small: bool) -> list[tuple[int, ...]]:
    """Parameter shapes of a small GPT-style transformer."""
    d, layers, vocab, ctx = (128, 8, 4000, 256) if small else (320, 16, 16000, 1024)
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,),  # norm, attention
                   (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]  # norm, MLP
    return shapes + [(d,), (d,)]


def make_params(shapes, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g) * 0.02)
        p.grad = torch.randn(s, generator=g) * 1e-3
        params.append(p)
    return params


def state_bytes(opt) -> int:
    """Bytes of the tensors in the optimizer's state (each storage counted once)."""
    seen, total = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                key = v.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += v.untyped_storage().nbytes()
    return total


def step_alloc_bytes(opt) -> int:
    """Bytes allocated (and not freed within the same op) during one step, summed over ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    return sum(max(e.cpu_memory_usage, 0) for e in prof.events())


def torch_impls(torch_cls) -> dict[str, dict]:
    """torch's implementations of an algorithm that work here: name -> constructor flags."""
    sig = inspect.signature(torch_cls.__init__).parameters
    impls = {}
    if "foreach" in sig:
        impls["loop"] = dict(foreach=False)
        impls["foreach"] = dict(foreach=True)
    else:
        impls["plain"] = {}
    if "fused" in sig:
        impls["fused"] = dict(fused=True)
    working = {}
    for name, flags in impls.items():  # keep only what runs on this device
        try:
            p = torch.nn.Parameter(torch.zeros(4, 4))
            p.grad = torch.ones(4, 4)
            torch_cls([p], **flags).step()
            working[name] = flags
        except Exception:  # noqa: BLE001 - unsupported here
            pass
    return working


def bench_one(name: str, spec, layout: str, shapes, repeats: int) -> dict | None:
    torch_cls = getattr(torch.optim, spec.torch_name, None)
    if torch_cls is None:
        return None
    if name == "muon":
        if layout == "flat":
            return None
        shapes = [s for s in shapes if len(s) == 2]
    kwargs = BENCH_KWARGS.get(name, {})
    impls = torch_impls(torch_cls)
    opts, numel = {}, sum(torch.Size(s).numel() for s in shapes)
    first = None
    for impl, flags in [("ours", None), *impls.items()]:
        params = make_params(shapes)
        if impl == "ours":
            opt = spec.cls(params, compile=True, **kwargs)
            t0 = time.perf_counter()
            opt.step()
            first = time.perf_counter() - t0
        else:
            opt = torch_cls(params, **kwargs, **flags)
            opt.step()
        opts[impl] = opt
    order = list(opts)
    times = {k: [] for k in order}
    for _ in range(2):  # warm-up
        for k in order:
            opts[k].step()
    for r in range(repeats):
        rot = order[r % len(order):] + order[: r % len(order)]
        for k in rot:
            t0 = time.perf_counter()
            opts[k].step()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    theirs = {k: v for k, v in med.items() if k != "ours"}
    fastest = min(theirs, key=theirs.get)
    out = dict(
        algo=name, layout=layout, tensors=len(shapes), numel=numel, ms=med, fastest=fastest,
        ratio=med["ours"] / theirs[fastest],
        state_ours=state_bytes(opts["ours"]) / numel, state_torch=state_bytes(opts[fastest]) / numel,
        alloc_ours=step_alloc_bytes(opts["ours"]) / numel, alloc_torch=step_alloc_bytes(opts[fastest]) / numel,
        first_s=first,
        flat=bool(opts["ours"]._engine and any(lay.buckets for lay in opts["ours"]._engine._layouts.values())),
    )
    del opts
    gc.collect()
    return out


COLUMNS = ("loop", "foreach", "fused", "plain")  # torch's implementations ("plain": no flags)


def header() -> str:
    head = f"{'algorithm':10s} {'ours':>8s} " + " ".join(f"{c:>8s}" for c in COLUMNS)
    head += f" {'ratio':>6s}  {'state B/p':>10s}  {'alloc B/p':>10s}  {'first s':>7s}  path"
    return head + "\n" + "-" * len(head)


def row_line(r: dict) -> str:
    line = f"{r['algo']:10s} {r['ms']['ours']:8.2f} "
    line += " ".join(f"{r['ms'][c]:8.2f}" if c in r["ms"] else f"{'-':>8s}" for c in COLUMNS)
    flag = "" if r["ratio"] <= 1.0 else " !"
    line += f" {r['ratio']:6.2f}{flag:2s}{r['state_ours']:5.1f}/{r['state_torch']:<5.1f}"
    line += f"  {r['alloc_ours']:5.1f}/{r['alloc_torch']:<5.1f} {r['first_s']:7.2f}  "
    return line + ("compiled" if r["flat"] else "eager")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", default="", help="comma-separated registry names (default: all with a torch twin)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per implementation (default 20, 5 with --small)")
    ap.add_argument("--small", action="store_true", help="a ~2 M-parameter model (8 layers, d_model 128): a quick run")
    ap.add_argument("--layouts", default="model,flat", help="comma-separated: model, flat")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--cold-cache", action="store_true", help="compile into a fresh Inductor cache directory")
    args = ap.parse_args(argv)
    if args.cold_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="optimlab-inductor-")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.small else 20)
    names = [n for n, s in sorted(optimlab.REGISTRY.items())
             if s.torch_name and not s.sparse_gradients and not s.needs_closure]
    if args.algos:
        wanted = [a.strip().lower() for a in args.algos.split(",") if a.strip()]
        unknown = [a for a in wanted if a not in optimlab.REGISTRY]
        if unknown:
            ap.error(f"unknown algorithm(s) {unknown}; known: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    shapes = transformer_shapes(args.small)
    total = sum(torch.Size(s).numel() for s in shapes)
    load = ", load average %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, optimlab {optimlab.__version__}, {torch.get_num_threads()} threads "
          f"({os.cpu_count()} CPUs{load}), float32, {repeats} repeats (median)")
    for layout in [x.strip() for x in args.layouts.split(",") if x.strip()]:
        lshapes = shapes if layout == "model" else [(total,)]
        print(f"\n== {layout}: {len(lshapes)} tensors, {total / 1e6:.1f} M parameters "
              f"(muon: the 2-D tensors only) ==")
        rows = []
        print(header(), flush=True)
        for n in names:
            r = bench_one(n, optimlab.REGISTRY[n], layout, lshapes, repeats)
            if r is None:
                why = "matrices only" if n == "muon" else f"no torch.optim.{optimlab.REGISTRY[n].torch_name} here"
                print(f"{n:10s} skipped ({why})", flush=True)
                continue
            rows.append(r)
            print(row_line(r), flush=True)
        if rows:
            slow = [r["algo"] for r in rows if r["ratio"] > 1.0]
            print(f"target ours <= torch's fastest ({', '.join(FUSED_TARGET)}: its fused kernel): "
                  + ("met by every algorithm" if not slow else f"MISSED by {', '.join(slow)}"))
    from optimlab._flat import compile_stats

    stats = compile_stats()
    if stats:
        print("\ncompiled kernels (first call: trace + compile + run):")
        for s in stats:
            status = f"{s['compile_s']:.2f} s" if s["compile_s"] is not None else f"FAILED ({s['failed']})"
            print(f"  {s['chain'] or '(plain SGD)':55s} {s['device']} {s['dtype']:14s} {status}")


if __name__ == "__main__":
    main()
