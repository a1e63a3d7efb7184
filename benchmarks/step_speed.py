"""Optimizer step speed and memory: optimlab against torch.optim, algorithm by algorithm, and
the modern optimizers torch.optim lacks against the memory bus and pytorch_optimizer.

How to run (from the repository root, inside the project's virtual environment)::

    python benchmarks/step_speed.py                        # both tables, every algorithm
    python benchmarks/step_speed.py --suite torch          # only the algorithms torch.optim also has
    python benchmarks/step_speed.py --suite new            # only the modern ones (Lion, LAMB, Adan ...)
    python benchmarks/step_speed.py --algos adam,lion,adan # some of them
    python benchmarks/step_speed.py --small                # quick check (~2 M parameters, 5 repeats)
    python benchmarks/step_speed.py --repeats 40 --layouts model --threads 1
    python benchmarks/step_speed.py --cold-cache           # compile times without Inductor's disk cache

The second table compares with pytorch_optimizer (kozistr/pytorch_optimizer) where it has the
algorithm. It is not a dependency of optimlab: install it for the benchmark only, with
``pip install --no-deps pytorch_optimizer`` (without it that column stays empty).

What it measures. Every optimizer in ``optimlab.REGISTRY`` with a ``torch_name`` (and a class of
that name in the installed torch.optim) is stepped on two layouts of float32 parameters:

* ``model``: ~25 M parameters in ~200 tensors shaped like a small transformer (16 layers,
  d_model 320, vocabulary 16 000): embeddings, attention and MLP matrices, biases, norms;
* ``flat``: one tensor of the same total size;
* ``tiny``: a small MLP's 12 tensors, ~90 k parameters (64-256-128-128-128-64-10), where
  per-tensor Python overhead, not the memory bus, decides (the issue's "small model" row).

Ours runs with ``compile=True`` (one compiled kernel over flat buffers where the chain is
elementwise, the eager path otherwise); torch's with ``foreach=False`` (the for-loop),
``foreach=True`` and ``fused=True``, each where torch supports it on this device. Muon only takes
matrices: it gets the 2-D tensors of ``model`` (both libraries) and skips ``flat``. Gradients are
fixed random tensors set once. Each repeat steps every implementation once, in rotating order,
so machine noise hits all of them alike. Where a set of tensors lands in memory moves its step
time by up to ~15 % whatever steps it (the same fused kernel on the first of four sets
allocated in a row: 23.3 ms, on the others 19.8-20.6), so every implementation's tensors are
allocated ``--alloc-rounds`` times (default 2), in the listed order and then in reverse; the
table shows the mean over rounds of each round's median.

Columns: median step time of ours with no flags (``default``: what a user gets; plain Adam,
AdamW, SGD and Adagrad call torch's fused kernel, the others run the compiled kernel on buckets
of 4 M elements or more -- ``model`` and ``flat`` -- and the eager chain on smaller ones --
``tiny``), of ours with
``compile=True`` (``ours``) and of each torch implementation (ms); ``d/tdef`` = default / torch's
default (its for-loop on CPU); ``d/best`` = default / torch's fused kernel where it has one, else
its fastest (target <= 1.00 on the model layout; on ``tiny`` the target is ``d/tdef`` <= 1.00);
``first`` = the default's first step (s: flattening, tracing and compiling where it compiles;
the first algorithm of a run also pays for loading Inductor, and with ``--cold-cache`` for
Inductor's one-time set-up on a machine -- the cold first step, target <= 5 s);
``ratio`` = ours (compiled) / torch's fastest (target <= 1.00; for Adam and AdamW torch's fastest is its fused kernel);
``state B/p``: optimizer-state bytes per parameter (ours / torch's); ``alloc B/p``: bytes
allocated inside one step per parameter, i.e. temporaries (ours / torch's fastest; from the
profiler); ``first s``: the first step with ``compile=True`` (run after the default's: where
the default compiled the same kernel, only the flattening); ``path``: whether ours ran the
compiled flat kernel or the eager path. The compile time of each kernel is listed at the end.
With ``--control`` a second copy of torch's reference implementation (fused, else its default)
is timed with the others: ``torch / itself`` is how far apart two identical optimizers measure
in that run, the resolution of every ratio in it (a missed target names it next to the ratio).

Table 2, the modern optimizers (``--suite new``): each runs with ``compile=True`` and its
registry defaults, next to torch's fused Adam and pytorch_optimizer's implementation (its
faster of ``foreach=True`` / ``False``), in the same rotating order. ``B/p``: bytes the
algorithm must move per parameter per step -- each parameter, gradient and state array read
once and each updated array written once (Adam: 4 read + 3 written = 28 B in float32), counted
from the update rule in ``NEW_ALGOS``. ``GB/s``: those bytes over the median step time, ours and
fused Adam's. ``bus``: our rate as a fraction of fused Adam's (target >= 0.80 for the
elementwise ones, which run as one compiled kernel in one pass; the layer-wise LAMB, LARS and
NovoGrad run compiled too, but must finish the per-tensor norms before updating anything, so
they read their arrays twice and the one-pass target does not apply). ``vs po``:
pytorch_optimizer's median step time over ours (target >= 3). ``po/ideal``: pytorch_optimizer's
time over the *ideal* one, the algorithm's bytes moved at fused Adam's measured rate: no
implementation running at the memory bus can be more than this many times faster than
pytorch_optimizer here, so where it is below 3 the 3x target cannot be met on this machine
(pytorch_optimizer's per-tensor kernels keep small tensors in cache, and for light update rules
such as signSGD's that is already close to the bus).

The machine's load average is printed first: the timings are only as good as the machine is
quiet (a busy core stalls every OpenMP parallel region, which penalises implementations that
open many of them -- torch's per-tensor kernels -- and makes everything noisy).
"""

from __future__ import annotations

import argparse
import functools
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


def tiny_shapes() -> list[tuple[int, ...]]:
    """A small MLP: 12 tensors, ~100 k parameters (the issue's small layout)."""
    widths = [64, 256, 128, 128, 128, 64, 10]
    shapes = []
    for a, b in zip(widths[:-1], widths[1:]):
        shapes += [(b, a), (b,)]
    return shapes


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


def timed_rounds(build, impls: list[str], repeats: int, rounds: int) -> tuple[dict, dict]:
    """Median step time (ms) of each implementation, and the optimizers of the last round.

    ``build(impl)`` allocates a fresh set of parameters and gradients and returns the
    implementation's optimizer after its first step. Where a set of tensors lands in memory
    changes its step time by up to ~15 %, whatever steps it: torch's fused Adam measured 23.3
    ms on the first of four sets allocated one after the other and 19.8-20.6 ms on the others
    (the allocator's placement, not the code). So the sets are made ``rounds`` times, in the
    listed order and then in the reverse order (and so on, rotated), every implementation is
    timed in each round -- each repeat steps all of them once, in rotating order, so machine
    noise hits them alike -- and its time is the mean of its per-round medians. The first
    round's order is the listed one: an implementation whose first step is reported comes
    first where that matters (a cold compile)."""
    per_round: dict[str, list[float]] = {k: [] for k in impls}
    opts: dict = {}
    for rnd in range(rounds):
        opts = {}
        gc.collect()
        order = impls if rnd % 2 == 0 else impls[::-1]
        shift = (rnd // 2) % len(impls)
        for impl in order[shift:] + order[:shift]:
            opts[impl] = build(impl)
        times = {k: [] for k in opts}
        for _ in range(2):  # warm-up
            for k in opts:
                opts[k].step()
        keys = list(opts)
        for r in range(repeats):
            for k in keys[r % len(keys):] + keys[: r % len(keys)]:
                t0 = time.perf_counter()
                opts[k].step()
                times[k].append(time.perf_counter() - t0)
        for k, v in times.items():
            per_round[k].append(statistics.median(v) * 1e3)
    return {k: statistics.fmean(v) for k, v in per_round.items()}, opts


def bench_one(name: str, spec, layout: str, shapes, repeats: int, rounds: int = 2, control: bool = False) -> dict | None:
    torch_cls = getattr(torch.optim, spec.torch_name, None)
    if torch_cls is None:
        return None
    if name == "muon":
        if layout == "flat":
            return None
        shapes = [s for s in shapes if len(s) == 2]
    kwargs = BENCH_KWARGS.get(name, {})
    impls = torch_impls(torch_cls)
    numel = sum(torch.Size(s).numel() for s in shapes)
    firsts = {}
    # the noise control: torch's reference implementation (fused where it has one, else its
    # default) timed a second time, as a separate optimizer on its own tensors
    reference = "fused" if "fused" in impls else "loop" if "loop" in impls else "plain"

    def build(impl: str):
        params = make_params(shapes)
        if impl in ("default", "ours"):  # ours with no flags / with compile=True
            opt = spec.cls(params, **kwargs) if impl == "default" else spec.cls(params, compile=True, **kwargs)
            t0 = time.perf_counter()
            opt.step()
            firsts.setdefault(impl, time.perf_counter() - t0)  # (the first round's)
        else:
            opt = torch_cls(params, **kwargs, **impls[reference if impl == "control" else impl])
            opt.step()
        return opt

    # the default first: where it compiles, its first step is the one a user waits for (the
    # kernel is then cached for compile=True, whose first step is only the flattening)
    med, opts = timed_rounds(build, ["default", "ours", *impls, *(["control"] if control else [])], repeats, rounds)
    first, first_default = firsts["ours"], firsts["default"]
    theirs = {k: v for k, v in med.items() if k not in ("ours", "default", "control")}
    fastest = min(theirs, key=theirs.get)
    torch_default = "loop" if "loop" in theirs else "plain"  # torch's default on CPU: the for-loop
    best = "fused" if "fused" in theirs else fastest  # the issue's target: fused where torch has one
    out = dict(
        algo=name, layout=layout, tensors=len(shapes), numel=numel, ms=med, fastest=fastest,
        ratio=med["ours"] / theirs[fastest],
        default_vs_torch_default=med["default"] / theirs[torch_default],
        default_vs_best=med["default"] / theirs[best], first_default_s=first_default,
        state_ours=state_bytes(opts["ours"]) / numel, state_torch=state_bytes(opts[fastest]) / numel,
        alloc_ours=step_alloc_bytes(opts["ours"]) / numel, alloc_torch=step_alloc_bytes(opts[fastest]) / numel,
        first_s=first, control=med["control"] / med[reference] if control else None, reference=reference,
        flat=bool(opts["ours"]._engine and any(lay.buckets for lay in opts["ours"]._engine._layouts.values())),
    )
    del opts
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------
# Table 2: the modern optimizers, against the memory bus (torch's fused Adam) and pytorch_optimizer.
# ---------------------------------------------------------------------------------------------
# registry name -> (arrays read, arrays written per step, pytorch_optimizer class, its kwargs).
# Read: the parameter, the gradient, every state array; written: the parameter and every state
# array the step updates (Adam: p, g, m, v read; p, m, v written).
NEW_ALGOS = {
    "lion": (3, 2, "Lion", {}),                              # p g m -> p m
    "signsgd": (2, 1, "SignSGD", dict(momentum=0.0)),        # p g -> p
    "signum": (3, 2, "SignSGD", dict(momentum=0.9)),         # p g m -> p m
    "adabelief": (4, 3, "AdaBelief", {}),                    # p g m s -> p m s
    "yogi": (4, 3, "Yogi", {}),                              # p g m v -> p m v
    "adan": (6, 5, "Adan", {}),                              # p g m v n g_prev -> p m v n g_prev
    "adopt": (4, 3, "ADOPT", {}),                            # p g m v -> p m v
    "ademamix": (5, 4, "AdEMAMix", {}),                      # p g m1 m2 v -> p m1 m2 v
    "madgrad": (5, 3, "MADGRAD", {}),                        # p g G s x0 -> p G s
    "lamb": (4, 3, "Lamb", {}),                              # layer-wise (per-tensor norms)
    "lars": (3, 2, "LARS", {}),
    "novograd": (3, 2, "NovoGrad", {}),                      # (+ one scalar per tensor)
    "schedule-free-sgd": (3, 2, "ScheduleFreeSGD", {}),      # p(=y) g z -> p z
    "schedule-free-adamw": (4, 3, "ScheduleFreeAdamW", {}),  # p(=y) g z v -> p z v
    "prodigy": (6, 4, "Prodigy", {}),                        # p g m v s p0 -> p m v s (+ 2 sums)
    "dadapt-adam": (5, 4, "DAdaptAdam", {}),                 # p g m v s -> p m v s (+ 2 sums)
}
ADAM_ARRAYS = 7
BUS_TARGET, PO_TARGET = 0.80, 3.0


def po_impls(name: str) -> dict[str, object]:
    """pytorch_optimizer's implementations of an algorithm that work here: label -> factory."""
    try:
        import pytorch_optimizer
    except ImportError:
        return {}
    cls = getattr(pytorch_optimizer, NEW_ALGOS[name][2], None)
    if cls is None:
        return {}
    out = {}
    for flag in (True, False):
        factory = functools.partial(cls, **NEW_ALGOS[name][3], foreach=flag)
        try:
            p = torch.nn.Parameter(torch.zeros(4, 4))
            p.grad = torch.ones(4, 4)
            factory([p]).step()
            out[f"po-{'foreach' if flag else 'loop'}"] = factory
        except Exception:  # noqa: BLE001 - that flag is unsupported here
            pass
    return out


def bench_new(name: str, layout: str, shapes, repeats: int, rounds: int = 2) -> dict:
    spec = optimlab.REGISTRY[name]
    numel = sum(torch.Size(s).numel() for s in shapes)
    factories = {"ours": functools.partial(spec.cls, compile=True),
                 "adam": functools.partial(torch.optim.Adam, fused=True), **po_impls(name)}
    firsts = {}

    def build(impl: str):
        opt = factories[impl](make_params(shapes))
        t0 = time.perf_counter()
        opt.step()
        firsts.setdefault(impl, time.perf_counter() - t0)  # (the first round's)
        return opt

    med, opts = timed_rounds(build, list(factories), repeats, rounds)
    first = firsts["ours"]
    reads, writes = NEW_ALGOS[name][:2]
    bytes_ours = (reads + writes) * 4 * numel  # float32
    rate_ours = bytes_ours / (med["ours"] * 1e-3)
    rate_adam = ADAM_ARRAYS * 4 * numel / (med["adam"] * 1e-3)
    po = {k: v for k, v in med.items() if k.startswith("po-")}
    po_best = min(po.values()) if po else None
    ideal_ms = bytes_ours / rate_adam * 1e3  # our bytes at fused Adam's rate
    out = dict(
        algo=name, layout=layout, numel=numel, ms=med, bytes_per_param=(reads + writes) * 4,
        gbs_ours=rate_ours / 1e9, gbs_adam=rate_adam / 1e9, bus=rate_ours / rate_adam,
        po_ms=po_best, vs_po=(po_best / med["ours"]) if po_best else None, first_s=first,
        po_bound=(po_best / ideal_ms) if po_best else None,
        elementwise=all(t.elementwise for t in opts["ours"].build(opts["ours"].param_groups[0])),
        flat=bool(opts["ours"]._engine and any(lay.buckets for lay in opts["ours"]._engine._layouts.values())),
    )
    del opts
    gc.collect()
    return out


def new_header() -> str:
    head = (f"{'algorithm':19s} {'ours':>8s} {'adam':>8s} {'po':>8s} {'B/p':>4s} {'GB/s':>6s} {'adam':>6s} "
            f"{'bus':>5s}   {'vs po':>6s}   {'po/ideal':>8s}  {'first s':>7s}  path")
    return head + "\n" + "-" * len(head)


def new_row(r: dict) -> str:
    po = f"{r['po_ms']:8.2f}" if r["po_ms"] is not None else f"{'-':>8s}"
    bus_flag = " !" if r["elementwise"] and r["bus"] < BUS_TARGET else "  "
    vs = f"{r['vs_po']:6.2f}" if r["vs_po"] is not None else f"{'-':>6s}"
    vs_flag = " !" if r["vs_po"] is not None and r["vs_po"] < PO_TARGET else "  "
    bound = f"{r['po_bound']:8.2f}" if r["po_bound"] is not None else f"{'-':>8s}"
    path = ("compiled" if r["flat"] else "eager") + ("" if r["elementwise"] else " (layer-wise)")
    return (f"{r['algo']:19s} {r['ms']['ours']:8.2f} {r['ms']['adam']:8.2f} {po} {r['bytes_per_param']:4d} "
            f"{r['gbs_ours']:6.1f} {r['gbs_adam']:6.1f} {r['bus']:5.2f}{bus_flag} {vs}{vs_flag} {bound}  "
            f"{r['first_s']:7.2f}  {path}")


COLUMNS = ("loop", "foreach", "fused", "plain")  # torch's implementations ("plain": no flags)


def header() -> str:
    head = f"{'algorithm':10s} {'default':>8s} {'ours':>8s} " + " ".join(f"{c:>8s}" for c in COLUMNS)
    head += (f" {'d/tdef':>6s} {'d/best':>6s} {'first':>5s}  {'ratio':>6s}  {'state B/p':>10s}  {'alloc B/p':>10s}"
             f"  {'first s':>7s}  path")
    return head + "\n" + "-" * len(head)


def row_line(r: dict) -> str:
    line = f"{r['algo']:10s} {r['ms']['default']:8.2f} {r['ms']['ours']:8.2f} "
    line += " ".join(f"{r['ms'][c]:8.2f}" if c in r["ms"] else f"{'-':>8s}" for c in COLUMNS)
    flag = "" if r["ratio"] <= 1.0 else " !"
    line += f" {r['default_vs_torch_default']:6.2f} {r['default_vs_best']:6.2f} {r['first_default_s']:5.2f}"
    line += f"  {r['ratio']:6.2f}{flag:2s}{r['state_ours']:5.1f}/{r['state_torch']:<5.1f}"
    line += f"  {r['alloc_ours']:5.1f}/{r['alloc_torch']:<5.1f} {r['first_s']:7.2f}  "
    line += "compiled" if r["flat"] else "eager"
    if r["control"] is not None:
        line += f"  (control: torch {r['reference']} / itself {r['control']:.3f})"
    return line


def missed(rows: list[dict], key: str) -> str:
    """The algorithms over 1.0 in ``key``; with a noise control, each with its ratio and how far
    a second copy of torch's reference implementation measured from the first."""
    out = []
    for r in rows:
        if r[key] > 1.0:
            out.append(r["algo"] if r["control"] is None
                       else f"{r['algo']} ({r[key]:.3f}; torch vs itself {r['control']:.3f})")
    return ("MISSED by " + ", ".join(out)) if out else ""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", default="", help="comma-separated registry names (default: all of the suite)")
    ap.add_argument("--suite", choices=["all", "torch", "new"], default="all",
                    help="torch: algorithms torch.optim also has; new: the modern ones (default: both)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per implementation (default 20, 5 with --small)")
    ap.add_argument("--small", action="store_true", help="a ~2 M-parameter model (8 layers, d_model 128): a quick run")
    ap.add_argument("--layouts", default="model,flat", help="comma-separated: model, flat, tiny")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--alloc-rounds", type=int, default=2,
                    help="times each implementation's tensors are allocated afresh, in alternating order "
                         "(placement in memory moves a step time by up to ~15 %%; default 2)")
    ap.add_argument("--cold-cache", action="store_true", help="compile into a fresh Inductor cache directory")
    ap.add_argument("--control", action="store_true",
                    help="also time a second copy of torch's reference implementation (fused, else its "
                         "default) on its own tensors: how far apart two identical optimizers measure here")
    args = ap.parse_args(argv)
    if args.cold_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="optimlab-inductor-")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.small else 20)
    names = [n for n, s in sorted(optimlab.REGISTRY.items())
             if s.torch_name and not s.sparse_gradients and not s.needs_closure] if args.suite != "new" else []
    new_names = [n for n in NEW_ALGOS if n in optimlab.REGISTRY] if args.suite != "torch" else []
    if args.algos:
        wanted = [a.strip().lower() for a in args.algos.split(",") if a.strip()]
        unknown = [a for a in wanted if a not in names and a not in new_names]
        if unknown:
            ap.error(f"unknown algorithm(s) {unknown}; known: {', '.join(names + new_names)}")
        names = [n for n in names if n in wanted]
        new_names = [n for n in new_names if n in wanted]
    shapes = transformer_shapes(args.small)
    total = sum(torch.Size(s).numel() for s in shapes)
    load = ", load average %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, optimlab {optimlab.__version__}, {torch.get_num_threads()} threads "
          f"({os.cpu_count()} CPUs{load}), float32, {repeats} repeats (median) in each of "
          f"{args.alloc_rounds} allocation rounds (mean)")
    if new_names and not po_impls("lion"):
        print("(pytorch_optimizer is not installed: `pip install --no-deps pytorch_optimizer` fills the po column)")
    for layout in [x.strip() for x in args.layouts.split(",") if x.strip()]:
        lshapes = {"model": shapes, "tiny": tiny_shapes()}.get(layout, [(total,)])
        if names:
            ltotal = sum(torch.Size(x).numel() for x in lshapes)
            print(f"\n== {layout}: {len(lshapes)} tensors, {ltotal / 1e6:.2f} M parameters "
                  f"(muon: the 2-D tensors only) ==")
            rows = []
            print(header(), flush=True)
            for n in names:
                r = bench_one(n, optimlab.REGISTRY[n], layout, lshapes, repeats, args.alloc_rounds, args.control)
                if r is None:
                    why = "matrices only" if n == "muon" else f"no torch.optim.{optimlab.REGISTRY[n].torch_name} here"
                    print(f"{n:10s} skipped ({why})", flush=True)
                    continue
                rows.append(r)
                print(row_line(r), flush=True)
            if rows:
                if layout == "tiny":
                    slow_default = missed(rows, "default_vs_torch_default")
                    what = "torch's default"
                else:
                    slow_default = missed(rows, "default_vs_best")
                    what = "torch's fused where it has one, else its fastest"
                print(f"target with no flags (default), ours <= {what}: " + (slow_default or "met by every algorithm"))
                cold = [r["algo"] for r in rows if r["first_default_s"] > 5.0]
                print("target first step with no flags <= 5 s: "
                      + ("met by every algorithm" if not cold else f"MISSED by {', '.join(cold)}"))
                print(f"target ours <= torch's fastest ({', '.join(FUSED_TARGET)}: its fused kernel): "
                      + (missed(rows, "ratio") or "met by every algorithm"))
        if new_names:
            ltotal = sum(torch.Size(x).numel() for x in lshapes)
            print(f"\n== {layout}, modern optimizers: {len(lshapes)} tensors, {ltotal / 1e6:.2f} M parameters; "
                  f"ours vs torch's fused Adam (adam) and pytorch_optimizer (po), ms per step ==")
            print(new_header(), flush=True)
            rows = []
            for n in new_names:
                rows.append(bench_new(n, layout, lshapes, repeats, args.alloc_rounds))
                print(new_row(rows[-1]), flush=True)
            slow = [r["algo"] for r in rows if r["elementwise"] and r["bus"] < BUS_TARGET]
            behind = [r["algo"] for r in rows if r["vs_po"] is not None and r["vs_po"] < PO_TARGET]
            print(f"target bus >= {BUS_TARGET:.2f} of fused Adam's bytes rate (elementwise ones): "
                  + ("met by every one" if not slow else f"MISSED by {', '.join(slow)}"))
            out_of_reach = [r["algo"] for r in rows if r["po_bound"] is not None and r["po_bound"] < PO_TARGET]
            print(f"target >= {PO_TARGET:g}x faster than pytorch_optimizer: "
                  + ("met by every one" if not behind else f"MISSED by {', '.join(behind)}")
                  + (f" (out of reach at the bus here, po/ideal < {PO_TARGET:g}: {', '.join(out_of_reach)})"
                     if out_of_reach else ""))
    from optimlab._flat import compile_stats

    stats = compile_stats()
    if stats:
        print("\ncompiled kernels (first call: trace + compile + run):")
        for s in stats:
            status = f"{s['compile_s']:.2f} s" if s["compile_s"] is not None else f"FAILED ({s['failed']})"
            print(f"  {s['chain'] or '(plain SGD)':55s} {s['device']} {s['dtype']:14s} {status}")


if __name__ == "__main__":
    main()
