"""The flat-buffer engine: one compiled kernel per bucket instead of a chain of foreach ops.

``ChainOptimizer(..., compile=True)`` (or torch's flag ``fused=True`` on a param group) runs
each *bucket* -- the parameters of one param group on one device, of one dtype, at one step
count -- as a single ``torch.compile``'d call over flat buffers:

* **Flat buffers.** On first use the bucket's parameters are copied into one contiguous buffer
  and each ``p.data`` is rebound to a view of it (offsets aligned to 64 bytes). The tensor
  state entries (``exp_avg`` ...) become views of one flat buffer per key, so ``state[p]`` and
  ``state_dict()`` look exactly as before, and the gradients get a flat buffer too, with
  ``p.grad`` rebound to views of it. The chain (:func:`optimlab.core.run_chain`) then runs on
  ``Updates`` whose lists each hold one flat tensor, and Inductor fuses the whole step into one
  pass over memory without parameter-sized temporaries.
* **One compiled function per chain.** It is cached (process-wide) by the chain -- transforms
  are frozen dataclasses, so the tuple is the structure -- plus the state keys, the scalar
  names, ``maximize``, device type and dtype. Every number reaches it as a 0-d tensor (the
  step, ``lr``, every transform's ``scalars``, rounded to the parameters' dtype as eager's
  kernels round them, float32 for 16-bit types; one host-to-device copy per bucket on a GPU), so changing ``lr``, ``betas`` ... or the step count never recompiles; sizes are dynamic.
  Each cache entry gets its own code object, so Dynamo's per-function recompile limit is never
  shared between chains. Before Inductor sees the graph, foreach calls given a 0-d tensor as
  their Scalar argument are rewritten into per-tensor ops (see ``_backend``): torch 2.13 would
  otherwise bake the first value into the kernel.
* **Which chains.** Chains whose transforms are all ``elementwise`` or ``layerwise``, and carry
  a mask only where the transform selects on the flat path (``masks_on_flat``: the mask is
  evaluated per tensor when the layout is built and reaches the kernel as a bool vector, so a
  masked chain gets the row layout below). Others, and parameters that cannot be flattened
  (non-contiguous, complex, sparse, tensor subclasses, state not shaped like the parameter),
  take the eager path, as does everything when compilation is unavailable: the first failure warns once
  and that device type (or that chain, if only its tracing failed) stays eager for the rest of
  the process.
* **When.** ``compile=None`` (the default) turns it on for buckets of at least
  ``AUTO_MIN_NUMEL`` (4 M) elements only: there the compiled step is 2-4x faster than the eager
  chain and than torch's foreach code (25 M parameters, 2 CPU threads: RMSprop 37 -> 12 ms,
  NAdam 70 -> 18 ms), and a first step of seconds is paid back within a few hundred steps;
  smaller buckets, where per-tensor overhead rather than the memory bus decides, stay eager
  and step at once. With low-precision options (:mod:`optimlab.precision`) the threshold is
  ``AUTO_MIN_NUMEL_LOWP`` (64 k): the eager path converts, dequantizes and requantizes piece by
  piece in some 15-30 passes, the kernel in its one (Adam on a 163 k-parameter GRU, 2 CPU
  threads: 8-bit state 4.4 -> 1.6 ms a step, bfloat16 state 0.87 -> 0.45 ms; 2.1 M parameters:
  27 -> 13 ms and 8.8 -> 3.2 ms), so a first step of seconds pays for itself within a few
  thousand steps. ``compile=True`` compiles every bucket, ``compile=False`` none. On CPUs
  Inductor is told to trust the CPU's own list of vector instruction sets
  (``cpp.vec_isa_ok``) rather than build and load a test library per set the first time it
  runs on a machine: that cut a cold first step (empty Inductor cache) from 13 s to 5 s
  (25 M parameters, 2 CPU threads); a compiler that cannot build for a listed set fails the
  kernel's build, and the chain steps eagerly with a warning, as for any failure.
* **Layer-wise chains** (LAMB's trust ratio, LARS, NovoGrad, the cautious rescale) need sums per
  tensor. Their bucket is laid out in rows of ``ROW`` (64) entries, each tensor on whole rows,
  and the kernel gets the buffers as ``(rows, ROW)`` tensors plus the row bookkeeping
  (:class:`optimlab.core.Segments`): a sum per row, masked to the tensor's entries, then
  ``segment_reduce`` over each tensor's consecutive rows; per-tensor values reach the entries by
  indexing with the row's tensor. Per-tensor state (``Transform.per_tensor_state``, 0-d per
  parameter) becomes one vector per key. Inductor is told to recompute pointwise values rather
  than store them (``_backend_recompute``), so the step is two passes over memory: one that
  reads to reduce, one that updates.
* **Collectors.** A transform may put a dict of lists among its scalars, for per-step results
  the optimizer needs on the host (Prodigy's and D-Adapt's partial sums): the kernel fills a
  fresh dict with the same keys and returns it, and the engine appends its items to the
  original, as the eager path would have.
* **Validation.** Each step checks, per parameter, that ``p.data`` still points into the flat
  buffer and that ``state[p]`` still holds the flat views; anything else (``model.to()``,
  ``p.data = ...``, a parameter whose first gradient just arrived, step counts that diverged
  because some parameters had no gradient on some step) rebuilds the group's layout, copying
  the current values in. ``load_state_dict`` drops the engine altogether.

Gradients, ``zero_grad`` and the trade-off
-----------------------------------------
The kernel reads the gradients from the bucket's flat grad buffer, and autograd cannot be made
to write there: with ``p.grad`` None it hands over (steals) the tensor the backward op
allocated, with ``p.grad`` defined it adds into it. So one of two costs is unavoidable:

* **copy (chosen).** ``zero_grad()`` is torch's (``set_to_none=True``: ``p.grad`` becomes None,
  so "no gradient -> parameter skipped" holds exactly). A post-accumulate-grad hook on each
  flattened parameter copies the stolen gradient into its slot as it arrives -- while it is
  still in cache -- and rebinds ``p.grad`` to the view, freeing the stolen tensor at once
  (later backward passes then accumulate into the view: gradient accumulation works as in
  torch). Gradients that arrive another way (assigned by the user, ``accumulate_steps``) are
  copied in by ``step()``. Extra work: one read and one write of the gradients per step.
* **in place (rejected).** Zero the flat buffer in ``zero_grad`` and let backward accumulate
  into it, with hooks marking which parameters got a gradient: a zero-fill plus a
  read-add-write instead of a steal, i.e. about twice the traffic of the copy, and ``p.grad``
  shows zeros instead of None. Measured (25 M parameters in 196 tensors, a memory-bound toy
  model, 1 thread; zero_grad + forward + backward + step, median): torch fused 95 ms, copy
  107 ms, in place 119 ms; the step alone: torch fused 38 ms, ours 37 ms. With real models
  forward and backward dominate and the copy is a few percent at most.

``zero_grad(set_to_none=False)`` still works (it zeroes each flat grad buffer in one call and
leaves None gradients None).

Where the flat grad buffer lives. On accelerators it is held as torch holds gradients: made
when the first gradient of a backward pass arrives, dropped by ``zero_grad()`` (set to None),
so the forward pass has that memory back (the caching allocator hands it out again). On CPUs
it is kept between steps (``TRANSIENT_GRADS_ON_CPU``): a fresh 100 MB buffer page-faults on
every step -- measured, 25 M float32 gradients, 2 threads: a copy into a kept buffer 7.5 ms,
into a fresh one 18 ms with transparent huge pages, 27 ms without -- so on a CPU the engine
holds one parameter-sized buffer more than torch during the forward pass.

Gradients that are views of a larger buffer that is not ours -- ``DistributedDataParallel(
gradient_as_bucket_view=True)``'s bucket, which DDP rebinds ``p.grad`` to after every backward
-- are left where they are: ``p.grad`` is never rebound (DDP would copy our view into its
bucket and rebind it back on every step, and both buffers would be held), and the step copies
them into the flat buffer, on accelerators one that exists only during the step.

Other costs: parameters become views (``p.storage_offset() != 0``; code that assumes a
parameter owns its storage will see that). Rebuilding a layout copies the group once. In float16/bfloat16 Inductor computes the fused step in float32, so the numbers are
slightly more accurate than, and not bitwise equal to, the eager path's. ``Updates.step`` is a
0-d tensor inside the compiled function (use ``scalars`` for numbers). On CPU, Inductor's
kernel always opens an OpenMP parallel region; on a machine whose cores are busy with other
work that costs more than torch's per-tensor kernels, which stay serial for small tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
import threading
import time
import warnings
import weakref
from typing import Any

import torch
from torch import Tensor

from . import _dist
from .core import _ENGINE_KEYS, Segments, Updates, host_float, pack_counts, run_chain, store_host
from .precision import _SCALE, BLOCK, KAHAN, _dequantize_blocks, _quantize_blocks, quant_tables, stochastic_round

__all__ = ["FlatEngine", "AUTO_MIN_NUMEL", "AUTO_MIN_NUMEL_LOWP", "compile_stats"]

_log = logging.getLogger("optimlab")

#: with ``compile=None`` a bucket is flattened and compiled only from this many elements on
AUTO_MIN_NUMEL = 1 << 22
#: ... and with low-precision options (state_dtype, state_bits, param_rounding)
AUTO_MIN_NUMEL_LOWP = 1 << 16
#: with ``compile=True``, a bucket smaller than this (entries) stays on the eager path where
#: part of its group steps eagerly anyway (Adafactor's factored matrices, parameters that
#: cannot be flattened): there its tensors only lengthen the eager path's foreach lists, while
#: a compiled call of its own costs ~50-90 us on a CPU (Dynamo's guards, AOT's wrappers, the
#: kernel's parallel regions). Measured, 2 CPU threads, six vectors next to five eager
#: matrices, step with the vectors compiled / eager: 768 entries 1.08-1.17 (Adafactor, NAdam,
#: RMSprop, Adam), 24 k 1.03-1.14, 96 k 0.95-1.06
SPLIT_MIN_NUMEL = 1 << 15
#: a group whose layout had to be rebuilt this often stays eager (see FlatEngine._build)
MAX_REBUILDS = 32
_ALIGN_BYTES = 64
#: row width (entries) of the flat buffers of chains with layer-wise transforms (see Segments)
ROW = 64
#: per-tensor sums of a layer-wise chain gather the row sums into a (tensors, most rows) table
#: when it has at most twice the rows plus this many entries (else: segment_reduce)
GATHER_EXTRA = 4096
#: where the gradients are not ours to rebind (DDP's bucket views, ``accumulate_steps > 1``,
#: torch's ``fused=True``), each step copies them into a flat buffer: on accelerators one made
#: for the step and freed after it (the caching allocator hands the memory to the next forward
#: pass), on CPUs one kept between steps -- a fresh 100 MB buffer there costs page faults each
#: step: measured, 25 M float32 gradients, 2 threads: copy into a kept buffer 7.5 ms, into a
#: fresh one 18 ms (huge pages) to 27 ms (without)
TRANSIENT_GRADS_ON_CPU = False
#: back large CPU flat buffers by transparent huge pages (Linux, THP mode "madvise" or "always")
HUGE_PAGES = sys.platform == "linux"

# Process-wide caches: compiled kernels by spec, chains judged flat-able, failures.
_KERNELS: dict[tuple, "_Kernel"] = {}
_CHAIN_OK: dict[tuple, bool] = {}
_BROKEN_DEVICES: dict[str, str] = {}  # device type -> why compilation is unavailable there
_FAILED_CHAINS: set[tuple] = set()  # (chain, device type, dtype) that could not be compiled
_SCALAR_DTYPES = (torch.float32, torch.float64)


def compile_stats() -> list[dict[str, Any]]:
    """One entry per compiled kernel of this process: the chain, device, dtype and the seconds
    its first call took (tracing + compilation + one run)."""
    return [
        {"chain": " -> ".join(type(t).__name__ for t in k.spec[0]), "device": k.spec[-2],
         "dtype": str(k.spec[-1]), "compile_s": k.compile_s, "failed": k.failed}
        for k in _KERNELS.values()
    ]


# ---------------------------------------------------------------------------------------------
# The compiled kernels.
# ---------------------------------------------------------------------------------------------
def auto_min_numel(opt) -> int:
    """The smallest bucket ``compile=None`` compiles for the optimizer ``opt``."""
    return AUTO_MIN_NUMEL if opt._precision is None else AUTO_MIN_NUMEL_LOWP


def _chain_ok(chain: tuple) -> bool:
    """Whether a chain can run on flat buffers: every transform elementwise or layer-wise, and
    masked only where the transform handles masks there (``masks_on_flat``)."""
    try:
        ok = _CHAIN_OK.get(chain)
    except TypeError:  # an unhashable field: it cannot be a cache key either
        return False
    if ok is None:
        ok = all(_transform_ok(t) for t in chain)
        _CHAIN_OK[chain] = ok
    return ok


def _transform_ok(t) -> bool:
    """Whether one transform can run on flat buffers (see :func:`_chain_ok`)."""
    return (t.elementwise or t.layerwise) and not any(
        callable(getattr(t, f.name)) and not (f.name == "mask" and t.masks_on_flat) for f in dataclasses.fields(t))


def _masks(chain) -> list:
    """The masks of a chain's masked transforms, in chain order."""
    return [t.mask for t in chain if getattr(t, "mask", None) is not None]


def _layerwise(chain) -> bool:
    """Whether a (flat-able) chain needs per-tensor values -- reductions or masks: its buffers
    are then laid out in rows (:class:`optimlab.core.Segments`)."""
    return not all(t.elementwise for t in chain) or bool(_masks(chain))


def _make_step(chain, keys, names, lr_index, maximize, rounding=None):
    """The function compiled for one spec: the chain on one-element lists of flat tensors
    (shaped ``(rows, ROW)`` with the row bookkeeping in ``seg`` for a layer-wise chain).

    ``rounding`` (the optimizer has low-precision options, :mod:`optimlab.precision`): the
    kernel does what the eager path's ``Precision.piece`` does, in the same single pass -- the
    maths in float32 on working copies of 16-bit parameters (plus their Kahan compensation),
    gradients and parameter-shaped state held in another dtype (``state_dtype``), written back
    rounded to nearest (state), or as ``rounding`` says (parameters: ``"nearest"``,
    ``"stochastic"``, ``"kahan"``)."""

    masked = [j for j, t in enumerate(chain) if getattr(t, "mask", None) is not None]
    per_tensor = frozenset(k for t in chain for k in t.per_tensor_state)
    kahan = keys.index(KAHAN) if rounding is not None and KAHAN in keys else None
    # quantized moments (state_bits=8): the codes' index -> their block scales' index
    scales = {j: keys.index(k + _SCALE) for j, k in enumerate(keys) if k + _SCALE in keys}

    def flat_step(param: Tensor, grad: Tensor, states: list[Tensor], vec: list[Tensor], seg: tuple,
                  quant: tuple) -> None:
        segments = Segments(*seg[:4], width=ROW, table=seg[5]) if seg else None
        work_param, held, coded = param, [], []
        if rounding is not None:
            work = torch.promote_types(param.dtype, torch.float32)
            if param.dtype != work:
                work_param = param.to(work)
                if kahan is not None:
                    work_param = work_param + states[kahan].to(work)
            if grad.dtype != work:
                grad = grad.to(work)
            state = {}
            for j, (k, t) in enumerate(zip(keys, states)):
                if j == kahan or k.endswith(_SCALE):
                    continue
                if j in scales:  # 8-bit codes: the moment's values for the step, as precision.piece
                    absmax = states[scales[j]]
                    x = _dequantize_blocks(t.reshape(-1, BLOCK), absmax, quant[1 if t.dtype == torch.int8 else 2])
                    coded.append((t, absmax, x.view(t.shape).to(work)))
                    t = coded[-1][2]
                elif k not in per_tensor and t.dtype != work and t.is_floating_point():
                    held.append((t, t.to(work)))
                    t = held[-1][1]
                state[k] = [t]
        else:
            state = {k: [t] for k, t in zip(keys, states)}
        u = Updates([work_param], [grad], state, [None], vec[0], segments=segments)
        if maximize:
            u.replace(torch._foreach_neg([grad]))
            u._owned = True
        # a number is a 0-d input; a collector (a dict of lists, see _run_bucket) starts empty
        scalars = [{n: vec[i] if isinstance(i, int) else {k: [] for k in i} for n, i in tn} for tn in names]
        for j, selected in zip(masked, seg[4] if seg else ()):
            scalars[j]["selected"] = selected  # the mask's verdict per tensor
        run_chain(chain, u, scalars, None if lr_index is None else vec[lr_index])
        for t, x in held:
            t.copy_(x)
        for codes, absmax, x in coded:  # requantized block by block, each tensor's padding zero
            signed = codes.dtype == torch.int8
            blocks = torch.where(torch.arange(BLOCK, device=x.device) < quant[0].unsqueeze(1),
                                 x.reshape(-1, BLOCK).to(torch.float32), 0.0)
            new_codes, new_absmax = _quantize_blocks(blocks, signed, *(quant[3:5] if signed else quant[5:7]))
            codes.copy_(new_codes.view(codes.shape))
            absmax.copy_(new_absmax)
        if work_param is not param:
            if kahan is not None:  # to nearest, the rounding error kept for the next step
                param.copy_(work_param)
                states[kahan].copy_(work_param - param.to(work_param.dtype))
            elif rounding == "stochastic":
                param.copy_(stochastic_round(work_param, param.dtype))
            else:
                param.copy_(work_param)
        return [s[n] for s, tn in zip(scalars, names) for n, i in tn if not isinstance(i, int)]

    # Dynamo keeps one cache (and one recompile budget) per code object: give every spec its own.
    flat_step.__code__ = flat_step.__code__.replace(co_name=f"flat_step_{len(_KERNELS)}")
    return flat_step


# torch 2.13 turns a 0-d tensor given to a foreach op's Scalar argument (``_foreach_add_(xs,
# s["eps"])``, ``clamp_min``, ``maximum``, ``pow``, ``alpha=``, ``value=`` ...) into ``.item()``,
# and Inductor then bakes the value of the first call into the kernel: a recompile per new
# value at best, a stale constant (wrong numbers) when the FX graph cache serves the kernel.
# So before Inductor sees the graph, every foreach call with a 0-d tensor argument is rewritten
# into per-tensor ops, whose Tensor overloads read the scalar at run time.
def _per_tensor(name: str):
    """The per-tensor equivalent of ``torch._foreach_<name>``, taking scalars as 0-d tensors."""
    inplace = name.endswith("_")
    base = name.rstrip("_")
    op = getattr(torch, base)

    def run(*args, **kwargs):
        args = list(args)
        value = alpha = None
        if base in ("addcmul", "addcdiv"):
            value = kwargs.pop("value", args.pop(3) if len(args) > 3 else None)
        elif "alpha" in kwargs:
            alpha = kwargs.pop("alpha")
        n = next(len(x) for x in args if isinstance(x, (list, tuple)))
        outs = []
        for i in range(n):
            a = [x[i] if isinstance(x, (list, tuple)) else x for x in args]
            if value is not None:  # self + value * t1 (* or /) t2, in eager's order
                scaled = a[1] * value
                out = a[0] + (scaled * a[2] if base == "addcmul" else scaled / a[2])
            else:
                if alpha is not None:
                    a[1] = a[1] * alpha
                out = op(*a, **kwargs)
            if inplace:
                a[0].copy_(out)
            outs.append(out)
        return None if inplace else outs

    run.__name__ = run.__qualname__ = f"per_tensor_{name}"
    return run


_PER_TENSOR: dict[str, Any] = {}


def _is_0d(a) -> bool:
    v = a.meta.get("example_value") if isinstance(a, torch.fx.Node) else None
    return isinstance(v, Tensor) and v.dim() == 0


def _backend(gm: torch.fx.GraphModule, example_inputs, joint_passes: bool = False):
    """Inductor, after routing foreach ops with 0-d tensor scalars to per-tensor ops.

    ``joint_passes``: run Inductor's joint-graph passes. They rewrite patterns of training
    graphs -- matrix products to pad, attention to fuse, random ops to Inductor's generator,
    views to fold -- none of which a full-precision step has (measured: the C++ Inductor
    generates for every registry optimizer's full-precision kernel, compile=True, is the same
    without them), and their one-time set-up (the pattern tables) is 0.25-0.8 s of a cold
    first step. Kernels with low-precision options keep them (:func:`_with_exact_casts`):
    8-bit state's block indexing is simpler with them, and the stochastic rounding's seed draw
    becomes Inductor's own."""
    for node in gm.graph.nodes:
        name = getattr(node.target, "__name__", "")
        if node.op != "call_function" or not name.startswith("_foreach_"):
            continue  # (Dynamo itself turns alpha=/value= 0-d tensors of tensor methods into fma)
        if any(_is_0d(a) for a in (*node.args, *node.kwargs.values())):
            name = name[len("_foreach_"):]
            if name not in _PER_TENSOR:
                _PER_TENSOR[name] = _per_tensor(name)
            node.target = _PER_TENSOR[name]
    gm.recompile()
    inductor = torch._dynamo.lookup_backend("inductor")
    with _joint_passes(joint_passes):
        if any(isinstance(x, Tensor) and x.device.type == "cpu" for x in example_inputs):
            _prepare_inductor(torch.device("cpu"), joint_passes)  # while the probe thread waits on the C++ compiler
            _ISA_PROBE.wait()  # Inductor's code generation needs the ISA list (and the thread's settings are undone)
            with _cpu_compile():
                return inductor(gm, example_inputs)
        return inductor(gm, example_inputs)


def _joint_passes(on: bool):
    """Inductor's settings with its joint-graph passes on (as they are) or off."""
    import torch._inductor.config as inductor_config

    return contextlib.nullcontext() if on else inductor_config.patch(use_joint_graph_passes=False)


def _prepare_inductor(device: torch.device, joint_passes: bool) -> None:
    """Inductor's one-time set-up of a process that does not need the ISA probes' results --
    importing its compiler (~0.9 s) and, for a kernel that runs the joint-graph passes,
    building their pattern tables (0.25-0.7 s) -- done here, while
    the probe thread waits on the C++ compiler, instead of after it (both are cached by
    Inductor, which then finds them done). Only a head start: a failure is Inductor's to
    report when it does the same."""
    try:
        import torch._inductor.compile_fx  # noqa: F401

        if joint_passes:
            from torch._inductor.fx_passes.joint_graph import lazy_init

            lazy_init(device)  # (positional, as Inductor calls it: the cache is keyed on it)
    except Exception:  # noqa: BLE001
        pass


@contextlib.contextmanager
def _cpu_compile():
    """Inductor's settings while our CPU kernels compile (module docstring, "When"): trust the
    CPU's list of vector instruction sets (``cpp.vec_isa_ok``) and build in this process,
    without waiting for a pool of compile workers to start (one or two kernels; cold: ~0.3 s
    of 5 s)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.vec_isa_ok": True, "compile_threads": 1}):
        yield


class _IsaProbe:
    """Inductor's probes of the CPU's extensions (AVX512-BF16, VNNI, AMX: a test library
    built and loaded for each, ~2 s with an empty Inductor cache), run in a thread from the
    first flat layout on a CPU on -- while the group is flattened and Dynamo traces the step --
    instead of after the tracing. The probes are Inductor's own (``valid_vec_isa_list``, cached
    for the process); the thread mostly waits on the compiler, so it overlaps the work on
    another core. Waited for before Inductor runs; not a daemon, so a process that ends early
    leaves no half-written test library in Inductor's cache. Measured (25 M parameters, 2
    threads, empty cache, first step without -> with the thread, runs alternating in one
    window): RMSprop 4.15-4.32 -> 3.98-4.01 s, NAdam 4.76-4.85 -> 4.19-4.20 s (in a slower
    window: RMSprop 6.3-6.5 -> 5.1-5.2 s)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return

        def probe() -> None:
            try:
                from torch._inductor.cpu_vec_isa import valid_vec_isa_list

                _lower_priority()  # (after the import: the GIL is not left with a thread that waits for a core)
                with _cpu_compile():
                    valid_vec_isa_list()
            except Exception:  # noqa: BLE001 - only a head start: Inductor probes again if this failed
                pass

        self._thread = threading.Thread(target=probe, name="optimlab-isa-probe")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()


_ISA_PROBE = _IsaProbe()


def _lower_priority() -> None:
    """Give the calling thread, and the processes it starts, the lowest CPU priority (Linux,
    where a nice value is a thread's own): the ISA probes have slack, and at normal priority
    their three compiler runs take a core from whatever else runs -- the flattening, or the
    user's first forward and backward pass. Measured (RMSprop, 25 M parameters, 2 threads,
    cold cache, stepping right after the constructor): the flattening 0.46-0.53 s with the
    probes at normal priority, 0.15-0.19 s at nice 19; the whole first step within the noise
    of each other (3.3-3.7 s), the probes waited for 0.1-0.4 s at nice 19."""
    if sys.platform == "linux":
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError):
            pass


def _with_exact_casts(backend, gm: torch.fx.GraphModule, example_inputs):
    """``backend`` for kernels with low-precision options, with Inductor told to round at
    every cast to a 16-bit dtype as eager does. By default it keeps such values in float32
    within a kernel, and the Kahan compensation ``x - round(x)`` would be 0, the stochastic
    rounding's distance to its neighbours wrong."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(emulate_precision_casts=True):
        return backend(gm, example_inputs, joint_passes=True)


def _backend_recompute(gm: torch.fx.GraphModule, example_inputs, joint_passes: bool = False):
    """:func:`_backend` for layer-wise chains, with Inductor told to recompute pointwise values
    rather than store them. Such a step reads everything twice -- once to reduce (the norms),
    once to update -- and by default Inductor would write the update direction (LAMB's Adam
    step) to a parameter-sized buffer in the first pass and read it back in the second. Measured
    (LAMB, 25 M parameters, 2 threads): 75 ms per step with the buffer, 39 ms recomputing."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(realize_reads_threshold=1 << 20, realize_opcount_threshold=1 << 20):
        return _backend(gm, example_inputs, joint_passes)


class _Kernel:
    __slots__ = ("spec", "fn", "compile_s", "failed", "ran")

    def __init__(self, spec):
        self.spec = spec
        self.fn = None  # the torch.compile'd step, made on the first run
        self.compile_s: float | None = None
        self.failed: str | None = None
        self.ran = False


def _warn(msg: str) -> None:
    warnings.warn(f"optimlab: {msg}; running the eager path instead", RuntimeWarning, stacklevel=3)


def _run_kernel(kernel: _Kernel, args) -> list | None:
    """Run a kernel and return what its collectors gathered; None (after warning once) if it
    cannot be compiled."""
    device_type = kernel.spec[-2]
    if kernel.ran:
        try:
            return kernel.fn(*args)
        except torch._dynamo.exc.BackendCompilerFailed as e:  # (Inductor's errors included)
            # a recompile (new sizes) failed: nothing ran; this chain stays eager from now on
            kernel.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            _FAILED_CHAINS.add((kernel.spec[0], device_type, kernel.spec[-1]))
            _warn(f"could not recompile the chain {kernel.spec[0]} for new sizes ({kernel.failed})")
            return None
    t0 = time.perf_counter()
    try:
        chain, keys, names, lr_index, maximize, rounding = kernel.spec[:6]
        backend = _backend_recompute if _layerwise(chain) else _backend
        if rounding is not None:
            backend = functools.partial(_with_exact_casts, backend)
        kernel.fn = torch.compile(_make_step(chain, keys, names, lr_index, maximize, rounding), backend=backend,
                                  dynamic=True, fullgraph=True)
        out = kernel.fn(*args)
    except Exception as e:  # noqa: BLE001 - any compilation failure means: stay eager
        inner = getattr(e, "inner_exception", None) or e
        text = str(inner).strip()
        reason = f"{type(inner).__name__}: {text.splitlines()[0] if text else ''}"
        kernel.failed = reason
        words = ("compiler", "cxx", "c++", "gcc", "clang", "not supported")
        if kernel.fn is None or isinstance(inner, OSError) or any(w in reason.lower() for w in words):
            # torch.compile or the C++/GPU toolchain is missing: nothing compiles on this device
            _BROKEN_DEVICES[device_type] = reason
            _warn(f"torch.compile is unavailable on {device_type} ({reason})")
        else:
            _FAILED_CHAINS.add((kernel.spec[0], device_type, kernel.spec[-1]))
            _warn(f"could not compile the chain {kernel.spec[0]} ({reason})")
        return None
    kernel.compile_s = time.perf_counter() - t0
    kernel.ran = True
    # said once per kernel (process-wide cache): a first step that takes seconds is explained
    _log.info("compiled the step %s for %s %s in %.1f s (tracing, Inductor, first run)",
              " -> ".join(type(t).__name__ for t in kernel.spec[0]), device_type, kernel.spec[-1],
              kernel.compile_s)
    return out


# ---------------------------------------------------------------------------------------------
# Buckets: flat buffers and their views.
# ---------------------------------------------------------------------------------------------
def _offsets(numels: list[int], itemsize: int, row: int = 1) -> tuple[list[int], int]:
    """Offsets aligned to 64 bytes and to ``row`` entries (a power of two), and the total."""
    align = max(1, _ALIGN_BYTES // itemsize, row)
    offs, total = [], 0
    for n in numels:
        offs.append(total)
        total += -(-n // align) * align
    return offs, total


_HUGE_PAGE = 2 << 20
_madvise: Any = None  # libc's madvise, False where unavailable


def _zeros(total: int, dtype, device) -> Tensor:
    """A zeroed flat buffer; on Linux CPUs marked for transparent huge pages (THP mode
    ``madvise``) once zeroed: the kernel's ``khugepaged`` then collapses it into 2 MiB pages in
    the background (the step streams through whole buffers; 2 MiB pages spare it TLB misses).
    Marked before the first touch instead, the faults themselves are huge pages, and on a
    virtual machine that can cost five times more on the first step for little in return --
    measured here (2 threads), first touch of 100 MB: 128-171 ms with huge pages vs 24-34 ms
    with 4 KiB ones; the compiled step on 25 M parameters with huge pages vs without:
    RMSprop 10.68 vs 10.74 and 11.29 vs 11.43 ms, NAdam 10.89 vs 11.03 ms (~1 %);
    ``khugepaged`` here collapses 16 MB every 10 s (its defaults)."""
    global _madvise
    flat = torch.empty(total, dtype=dtype, device=device).zero_()
    if HUGE_PAGES and flat.device.type == "cpu" and flat.nbytes >= 2 * _HUGE_PAGE:
        if _madvise is None:
            try:
                import ctypes

                _madvise = ctypes.CDLL(None, use_errno=True).madvise
                _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            except (OSError, AttributeError):
                _madvise = False
        if _madvise:
            start = -(-flat.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
            end = (flat.data_ptr() + flat.nbytes) // _HUGE_PAGE * _HUGE_PAGE
            _madvise(start, end - start, 14)  # MADV_HUGEPAGE; failure is harmless
    return flat


def _flatten(tensors: list[Tensor], offs: list[int], total: int, like: Tensor) -> tuple[Tensor, list[Tensor]]:
    """A zero-padded flat copy of ``tensors`` and the views of it shaped like them."""
    flat = _zeros(total, like.dtype, like.device)
    views = []
    for t, off in zip(tensors, offs):
        v = flat[off: off + t.numel()].view(t.shape)
        if t is not None:
            v.copy_(t)
        views.append(v)
    return flat, views


def _grad_arrived(bucket_ref, i: int, p: Tensor) -> None:
    """Post-accumulate-grad hook: move a freshly allocated gradient into its flat slot."""
    b = bucket_ref()
    if b is None:
        return
    _, ptr, _, gv, _ = b.rows[i]
    g = p.grad
    if g is gv or g is None or g.requires_grad or g.is_sparse or p.data_ptr() != ptr:
        return  # already in place, part of a graph, or a stale layout (step() sorts it out)
    if gv is None:  # the first gradient since zero_grad() dropped a transient buffer
        b.alloc_grads()
        gv = b.grad_views[i]
    gv.copy_(g)
    p.grad = gv


def _remove_hooks(handles) -> None:
    for h in handles:
        h.remove()


class _Bucket:
    """One group x device x dtype x step: params, grads and tensor state as views of flat buffers."""

    __slots__ = ("params", "names", "states", "step", "keys", "flat_param", "flat_grad", "flat_state",
                 "grad_views", "own_grads", "transient", "offs", "layerwise", "rows", "numel", "device", "dtype",
                 "kernel_args", "counters", "check_keys", "countable", "__weakref__")

    def __init__(self, params, names, states, keys, own_grads: bool, layerwise: bool = False,
                 per_tensor: frozenset = frozenset(), masks: list = (), step: int = 0, transient: bool = False,
                 counted: tuple = ()):
        """``own_grads``: ``p.grad`` may become a view of the flat grad buffer (not with
        ``accumulate_steps > 1``: there the kernel's gradient is the accumulated mean, which
        must not show up in ``p.grad``; nor with torch's ``fused=True``, which leaves ``p.grad``
        alone; nor where the gradients are views of another buffer, DDP's with
        ``gradient_as_bucket_view=True``: each step then copies the gradients in).
        ``transient``: the flat gradient buffer is not kept between steps. With ``own_grads`` it
        is made when the first gradient arrives and dropped by ``zero_grad()`` (as torch's
        gradients are); without, it is made for the step's copy and freed after the step. ``layerwise``: lay the tensors out in rows of ``ROW``
        entries for a chain with per-tensor reductions. ``per_tensor``: the state keys that hold
        one number per tensor (0-d); each becomes a vector with one entry per tensor (plus the
        empty one of :meth:`_rows`), and ``st[k]`` a 0-d view of its entry. ``masks``: those of
        the chain's masked transforms, evaluated here once per tensor. ``counted``: state keys
        written with one value for the whole bucket every step (the step count, NAdam's
        ``mu_product``, ASGD's ``eta`` and ``mu``); where every parameter holds a 0-d CPU tensor
        there (host state is a Python float until the first step writes it: then, see
        :meth:`store_host`), they become 0-d views of one vector per key (:attr:`counters`), so a
        step writes each with one ``fill_`` (twelve tensors: ~10 us of separate writes a key),
        and :meth:`check` sees a rebound one."""
        p0 = params[0]
        self.params, self.names, self.states, self.keys = params, names, states, keys
        self.step = step
        self.own_grads = own_grads
        self.transient = transient
        self.layerwise = layerwise
        self.device, self.dtype = p0.device, p0.dtype
        numels = [p.numel() for p in params]
        # quantized moments: every tensor starts on a block, so the flat codes' blocks are the
        # tensors' own (their scales one flat vector too, views shaped like each tensor's)
        quantized = any(k.endswith(_SCALE) for k in keys)
        offs, total = _offsets(numels, p0.element_size(), max(ROW if layerwise else 1, BLOCK if quantized else 1))
        self.numel, self.offs = total, offs
        self.flat_param, pviews = _flatten([p.detach() for p in params], offs, total, p0)
        for p, v in zip(params, pviews):
            p.data = v
        self.flat_state, state_views = [], []
        for k in keys:
            first = states[0][k]
            like = torch.empty((), dtype=first.dtype, device=self.device)
            if k in per_tensor:
                n = len(states)
                flat, views = _flatten([st[k] for st in states], list(range(n)), n + 1, like)
            elif k.endswith(_SCALE):
                flat, views = _flatten([st[k] for st in states], [o // BLOCK for o in offs], total // BLOCK, like)
            else:
                flat, views = _flatten([st[k] for st in states], offs, total, like)
            for st, v in zip(states, views):
                st[k] = v
            self.flat_state.append(flat)
            state_views.append(views)
        self.counters: dict[str, Tensor] = {}
        counters = tuple(k for k in counted if _counter(states, k))
        self.countable = frozenset(counted) - set(counters)  # (not yet: see store_host)
        counter_views = [self._count(k) for k in counters]
        self.check_keys = (*keys, *counters)
        state_views = [*state_views, *counter_views]
        self.flat_grad = None if self.transient and not own_grads else _zeros(total, p0.dtype, self.device)
        self.grad_views = self._grad_views()
        for p, gv in zip(params, self.grad_views):
            if own_grads and p.grad is not None and not p.grad.requires_grad and not p.grad.is_sparse:
                gv.copy_(p.grad)
                p.grad = gv
        # what check() compares, per parameter
        self.rows = list(zip(params, [p.data_ptr() for p in params], states, self.grad_views,
                             zip(*state_views) if state_views else [()] * len(params)))
        self.kernel_args = (self.flat_param, self.flat_grad, self.flat_state, ())
        if layerwise:
            self.kernel_args = self._rows(numels, offs, per_tensor, masks)
        quant = ()
        if quantized:  # entries per block that are a tensor's (the rest is padding, held as 0)
            valid = torch.full((total // BLOCK,), BLOCK, dtype=torch.int32)
            for n, o in zip(numels, offs):
                if n % BLOCK:
                    valid[(o + n) // BLOCK] = n % BLOCK
            quant = (valid.to(self.device), *quant_tables(self.device))
        self.kernel_args = (*self.kernel_args, quant)
        if self.transient and own_grads and not any(p.grad is gv for p, gv in zip(params, self.grad_views)):
            self.drop_grads()  # (no gradient yet; the first to arrive makes the buffer)
        # gradients that autograd allocates afresh (after zero_grad() set them to None) are
        # copied into their slot as they arrive, while still in cache; removed with the bucket
        me = weakref.ref(self)
        handles = [p.register_post_accumulate_grad_hook(functools.partial(_grad_arrived, me, i))
                   for i, p in enumerate(params) if p.requires_grad and own_grads]
        weakref.finalize(self, _remove_hooks, handles)

    def _grad_views(self) -> list:
        if self.flat_grad is None:
            return [None] * len(self.params)
        return [self.flat_grad[o: o + p.numel()].view(p.shape) for p, o in zip(self.params, self.offs)]

    def _as_rows(self, x: Tensor | None) -> Tensor | None:
        """A flat buffer as the kernel of a layer-wise chain takes it: ``(rows, ROW)``, the row
        width static for the compiler."""
        if x is None or not self.layerwise:
            return x
        v = x.view(-1, ROW)
        torch._dynamo.mark_static(v, 1)
        return v

    def _rows(self, numels: list[int], offs: list[int], per_tensor: frozenset, masks: list) -> tuple:
        """The kernel's arguments for a layer-wise chain: the flat buffers as ``(rows, ROW)``
        views and the rows' bookkeeping (Segments)."""
        views = [self._as_rows(x) for x in (self.flat_param, self.flat_grad)]
        views += [x if k in per_tensor or k.endswith(_SCALE) else self._as_rows(x)
                  for k, x in zip(self.keys, self.flat_state)]
        # offsets are multiples of ROW, so tensor i owns the rows up to the next tensor's: its
        # ceil(n_i / ROW) rows of entries, then (8-bit state: tensors start on whole blocks)
        # rows of padding only
        n = torch.tensor(numels, dtype=torch.int64)
        count = torch.tensor([(b - a) // ROW for a, b in zip(offs, [*offs[1:], self.numel])], dtype=torch.int64)
        assert int(count.sum()) * ROW == self.numel and all(o % ROW == 0 for o in offs)
        tensor_of = torch.repeat_interleave(torch.arange(len(numels)), count)
        within = torch.arange(self.numel // ROW) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        length = (n[tensor_of] - within * ROW).clamp(0, ROW).to(torch.int32)
        selected = tuple(torch.tensor([bool(m(name, p)) for name, p in zip(self.names, self.params)] + [False],
                                      device=self.device) for m in masks)
        # one empty tensor more: a per-tensor vector then never has length 1, which Dynamo would
        # specialise (a second compilation for one-tensor buckets)
        rows = torch.cat([count, count.new_zeros(1)])
        # per-tensor sums: a gather table where it is small (its sum fuses into the kernel; a
        # segment_reduce call costs more than the sums on a small model), else segment_reduce
        table, most = None, int(rows.max())
        if len(rows) * most <= 2 * len(tensor_of) + GATHER_EXTRA:
            first = torch.cumsum(rows, 0) - rows
            r = torch.arange(most)
            table = torch.where(r < rows.unsqueeze(1), first.unsqueeze(1) + r, len(tensor_of)).to(self.device)
        seg = (tensor_of.to(self.device), length.to(self.device), rows.to(self.device),
               torch.tensor([*numels, 0], dtype=torch.float32, device=self.device), selected, table)
        return views[0], views[1], views[2:], seg

    def alloc_grads(self) -> None:
        """A transient bucket makes its flat gradient buffer (zeroed: the padding too)."""
        self._set_grads(_zeros(self.numel, self.dtype, self.device))

    def drop_grads(self) -> None:
        """A transient bucket drops its flat gradient buffer (to the allocator's cache)."""
        if self.transient and self.flat_grad is not None:
            self._set_grads(None)

    def release_grads(self) -> None:
        """After a step: the buffer the step's gradients were copied into (not ``p.grad``) goes."""
        if not self.own_grads:
            self.drop_grads()

    def _set_grads(self, flat: Tensor | None) -> None:
        self.flat_grad = flat
        self.grad_views = self._grad_views()
        self.rows = [(p, ptr, st, gv, views) for (p, ptr, st, _, views), gv in zip(self.rows, self.grad_views)]
        self.kernel_args = (self.kernel_args[0], self._as_rows(flat), *self.kernel_args[2:])

    def check(self, opt) -> tuple[bool, list[int], list[int]]:
        """Still valid? Plus which parameters have no gradient, and which gradients (not our
        views) need copying in. Runs every step: keep it lean."""
        step = opt._step_of(self.params[0], self.states[0])
        if step != self.step:  # the eager path stepped this bucket (all of it: see step_group)
            if any(opt._step_of(p, st) != step for p, st in zip(self.params, self.states)):
                return False, [], []
            self.step = step
        grad_of = None if opt.accumulate_steps == 1 else opt._grad
        keys = self.check_keys
        missing, fresh = [], []
        for i, (p, ptr, st, gv, views) in enumerate(self.rows):
            if p.data_ptr() != ptr:
                return False, missing, fresh
            for k, v in zip(keys, views):
                if st.get(k) is not v:
                    return False, missing, fresh
            g = p.grad if grad_of is None else grad_of(p)
            if g is None:
                missing.append(i)
            elif g is not gv:
                fresh.append(i)
        return True, missing, fresh

    def _count(self, key: str) -> list:
        """Make ``key``'s values a vector (:attr:`counters`); the states hold its 0-d views."""
        self.counters[key], views = pack_counts(self.states, key)
        return views

    def set_steps(self, opt, step: int) -> None:
        """Every parameter's step count to ``step``: one write where the counts are a vector."""
        flat = self.counters.get("step")
        if flat is None:
            opt._set_steps(self.params, self.states, step)
        else:
            flat.fill_(step)

    def store_host(self, states: list[dict], key: str, value) -> None:
        """:func:`optimlab.core.store_host` for this bucket's states: one write where the key's
        values are a vector."""
        flat = self.counters.get(key)
        if flat is not None and not isinstance(value, Tensor):
            flat.fill_(value)
            return
        store_host(states, key, value)
        if key in self.countable and states is self.states and not isinstance(value, Tensor) and _counter(states, key):
            self.countable -= {key}
            views = self._count(key)
            self.check_keys = (*self.check_keys, key)
            self.rows = [(*row[:4], (*row[4], v)) for row, v in zip(self.rows, views)]

    def take_grads(self, opt, fresh: list[int]) -> None:
        """Copy gradients that are not our views into their slots; rebind ``p.grad`` to them.
        A transient bucket makes the step's buffer here (:meth:`release_grads` frees it)."""
        use_grad_attr = opt.accumulate_steps == 1
        grads = [self.params[i].grad if use_grad_attr else opt._grad(self.params[i]) for i in fresh]
        if any(g.is_sparse for g in grads):
            raise RuntimeError("sparse gradient")  # caught by the caller: eager path raises properly
        if self.flat_grad is None:
            self.alloc_grads()
        torch._foreach_copy_([self.grad_views[i] for i in fresh], grads)
        if use_grad_attr and self.own_grads:
            for i, g in zip(fresh, grads):
                if not g.requires_grad:
                    self.params[i].grad = self.grad_views[i]


@dataclasses.dataclass
class _Layout:
    group: dict
    chain: tuple  # the chain it was built for (a new chain may need new state: rebuild)
    state: dict  # opt.state when built (load_state_dict replaces it)
    param_ids: list[int]  # id() of group["params"] when built
    buckets: list[_Bucket]
    outside: list[int]  # indices of parameters not in a bucket (stepped eagerly)
    stateless: list[int]  # ... of which these had no state yet (a first gradient rebuilds)
    dirty: bool = False  # some bucket was stepped in part (its step counts now differ)
    sub: tuple | None = None  # (indices, dict): the sub-group last handed to the eager path


# ---------------------------------------------------------------------------------------------
# The engine.
# ---------------------------------------------------------------------------------------------
def _flattenable(p: Tensor, st: dict, keys: tuple, per_tensor: frozenset) -> bool:
    if not (type(p.data) is Tensor and p.layout == torch.strided and p.is_contiguous()):
        return False
    if p.is_complex() or not p.is_floating_point():
        return False
    def shape(k: str) -> tuple:
        if k in per_tensor:
            return ()
        if k.endswith(_SCALE):  # the block scales of quantized codes (state_bits=8)
            return (-(-p.numel() // BLOCK),) if k[: -len(_SCALE)] in keys else None
        return p.shape

    return all(st[k].shape == shape(k) and st[k].device == p.device
               and st[k].layout == torch.strided and not st[k].is_complex() for k in keys)


def _counter(states: list[dict], key: str) -> bool:
    """Whether ``key`` holds a 0-d CPU tensor of one dtype, off the autograd graph, in every
    state (see ``_Bucket``'s ``counters``)."""
    first = states[0].get(key)
    return isinstance(first, Tensor) and all(
        type(v) is type(first) and v.dim() == 0 and v.is_cpu and not v.requires_grad and v.dtype == first.dtype
        for v in (st.get(key) for st in states))


def _kept_storage(p: Tensor, ours: set[int], in_buffers: bool) -> str | None:
    """Why ``p``'s storage must stay where it is (flattening rebinds ``p.data``), or None.
    ``in_buffers``: the optimizer's wrapper keeps the parameters as views of its own buffers."""
    if _dist.is_dtensor(p):
        return ("DTensor parameters (FSDP2) live in storage that FSDP owns (it all-gathers from it), "
                "so they are not flattened")
    storage = p.untyped_storage()
    if in_buffers or (storage.nbytes() > p.numel() * p.element_size() and storage.data_ptr() not in ours):
        return ("a parameter shares its storage with other tensors (ZeroRedundancyOptimizer("
                "parameters_as_bucket_view=True) or views of one buffer), which flattening would break")
    return None


def _foreign_view(g: Tensor | None, ours: set[int]) -> bool:
    """Whether a gradient is a view into a larger buffer that is not one of ours: DDP's bucket
    with ``gradient_as_bucket_view=True``, which DDP rebinds ``p.grad`` to after every backward
    (made our view instead, it would be copied into DDP's bucket and back on every step, and
    both buffers would be held)."""
    if g is None or g.is_sparse or g.layout != torch.strided:
        return False
    storage = g.untyped_storage()
    return storage.nbytes() > g.numel() * g.element_size() and storage.data_ptr() not in ours


class FlatEngine:
    """Per optimizer: the flat layouts of its param groups, and the step over them."""

    def __init__(self) -> None:
        self.warned: set[str] = set()  # why parameters stayed eager, said once per optimizer
        self._layouts: dict[int, _Layout] = {}
        self._rebuilds: dict[int, int] = {}  # per group (by id)
        self.rebuilds = 0  # how many times a layout was (re)built (for tests and diagnostics)

    # -- the step ------------------------------------------------------------------------------
    def step_group(self, opt, group: dict) -> dict | None:
        """Step what can run flat; return the group (or a sub-group) for the eager path, or
        None when nothing is left."""
        chain = opt._chain(group)
        if not _chain_ok(chain):
            if opt.compile is True and "chain" not in self.warned:
                self.warned.add("chain")
                _log.info("%s(compile=True): a param group steps eagerly, nothing of it compiled: flat "
                          "buffers hold elementwise and layer-wise transforms only, not %s", type(opt).__name__,
                          ", ".join(type(t).__name__ for t in chain if not _transform_ok(t)) or "this chain")
            return group
        if self._rebuilds.get(id(group), 0) > MAX_REBUILDS:
            return group
        lay = self._layouts.get(id(group))
        checks = None
        if lay is not None and lay.group is group and lay.chain == chain and self._still_valid(opt, lay):
            checks = [b.check(opt) for b in lay.buckets]
        if checks is None or not all(ok for ok, _, _ in checks):
            lay = self._build(opt, group, chain)
            if lay is None:  # given up on this group
                return group
            checks = [b.check(opt) for b in lay.buckets]
            if not all(ok for ok, _, _ in checks):  # pragma: no cover - just built
                return group

        eager: list[int] = list(lay.outside)  # indices into group["params"] for the eager path
        index = None
        for b, (_, missing, fresh) in zip(lay.buckets, checks):
            if len(missing) == len(b.params):
                continue  # no gradients at all: torch skips these parameters
            if missing or not self._run_bucket(opt, group, chain, b, fresh):
                lay.dirty = lay.dirty or bool(missing)
                if index is None:
                    index = {id(p): i for i, p in enumerate(group["params"])}
                skip = set(missing)
                eager.extend(index[id(p)] for j, p in enumerate(b.params) if j not in skip)
        if not eager:
            return None
        if len(eager) == len(group["params"]):
            return group
        eager.sort()
        if lay.sub is not None and lay.sub[0] == eager:
            # the same sub-group object as last step (its hyperparameters refreshed), so the
            # eager path's remembered bucket (ChainOptimizer._planned) serves it
            sub = lay.sub[1]
            for k, v in group.items():
                if k != "params" and k != "param_names" and sub.get(k) is not v:
                    sub[k] = v
            return sub
        sub = {**group, "params": [group["params"][i] for i in eager]}
        if group.get("param_names"):
            sub["param_names"] = [group["param_names"][i] for i in eager]
        lay.sub = (eager, sub)
        return sub

    def holds(self, group: dict) -> bool:
        """Whether ``group`` is a sub-group this engine hands to the eager path every step."""
        return any(lay.sub is not None and lay.sub[1] is group for lay in self._layouts.values())

    def _run_bucket(self, opt, group, chain, b: _Bucket, fresh: list[int]) -> bool:
        """Step the bucket in its kernel; False: it was not stepped (the eager path will)."""
        try:
            return self._step_bucket(opt, group, chain, b, fresh)
        finally:
            b.release_grads()

    def _step_bucket(self, opt, group, chain, b: _Bucket, fresh: list[int]) -> bool:
        maximize = bool(group.get("maximize", False))
        lr = opt._lr(group)
        if b.device.type in _BROKEN_DEVICES or (chain, b.device.type, b.dtype) in _FAILED_CHAINS:
            return False
        if fresh:
            try:
                b.take_grads(opt, fresh)
            except RuntimeError:
                return False
        step = b.step + 1
        b.set_steps(opt, step)
        # host-side scalar state (NAdam's mu_product ...) advances in _scalars: keep it to undo
        # (one value per key: a bucket's parameters share their host history, see _build)
        host = [(k, host_float(b.states[0].get(k))) for t in chain for k in t.host_keys]
        scalars = opt._scalars(chain, group, step, b.states, b.store_host)
        names, values, i = [], [float(step)], 1
        if lr is not None:
            values.append(float(lr))
            i = 2
        collectors = []  # a transform's dict of lists for per-step results (Prodigy's sums)
        for s in scalars:
            tn = []
            for n, v in s.items():
                if isinstance(v, dict):  # the kernel fills a fresh one; appended to v below
                    tn.append((n, tuple(v)))
                    collectors.append(v)
                    continue
                tn.append((n, i))
                values.append(float(v))
                i += 1
            names.append(tuple(tn))
        lowp = opt._precision
        rounding = None if lowp is None else lowp.param_rounding or "nearest"
        spec = (chain, b.keys, tuple(names), 1 if lr is not None else None, maximize, rounding,
                b.device.type, b.dtype)
        kernel = _KERNELS.get(spec)
        if kernel is None:
            kernel = _KERNELS[spec] = _Kernel(spec)
        if kernel.failed is None:
            # scalars in the parameters' dtype: the value eager's kernels use (a Python float
            # rounded once), and ~4% faster than float64 for float32 on CPU (no per-element cast)
            vec = torch.tensor(values, dtype=b.dtype if b.dtype in _SCALAR_DTYPES else torch.float32)
            if b.device.type != "cpu":
                vec = vec.to(b.device, non_blocking=True)
            # separate 0-d inputs: a 0-d slice of one dynamic-size input trips up foreach ops
            vec = vec.unbind()
            out = _run_kernel(kernel, (*b.kernel_args[:3], vec, *b.kernel_args[3:]))
            if out is not None:
                for host_dict, got in zip(collectors, out):
                    for k, items in got.items():
                        host_dict[k].extend(items)
                b.step = step
                return True
        # not compiled: undo this step's bookkeeping, the eager path redoes it
        b.set_steps(opt, step - 1)
        for k, v in host:
            if v is not None:
                b.store_host(b.states, k, v)
        return False

    # -- layouts -------------------------------------------------------------------------------
    def _still_valid(self, opt, lay: _Layout) -> bool:
        if lay.dirty or lay.state is not opt.state:
            return False
        params = lay.group["params"]
        if list(map(id, params)) != lay.param_ids:
            return False
        state = opt.state
        return not any(opt._step_of(params[i], state.get(params[i], {})) is not None for i in lay.stateless)

    def _build(self, opt, group: dict, chain) -> _Layout | None:
        """(Re)build the group's flat layout from the current parameters and state."""
        n = self._rebuilds[id(group)] = self._rebuilds.get(id(group), 0) + 1
        if n > MAX_REBUILDS:
            self._layouts.pop(id(group), None)
            warnings.warn(
                f"optimlab: the flat layout of a param group was rebuilt {n - 1} times (the set of "
                "parameters with a gradient keeps changing, or parameters keep being replaced); "
                "that group stays on the eager path from now on", RuntimeWarning, stacklevel=5)
            return None
        self.rebuilds += 1
        if any(p.device.type == "cpu" for p in group["params"]):
            _ISA_PROBE.start()  # (a head start for a kernel compiled for these: see _IsaProbe)
        opt._gather(group)  # initialises the state of parameters that just got their first gradient
        names = group.get("param_names")
        per_tensor = frozenset(k for t in chain for k in t.per_tensor_state)
        host_keys = frozenset(k for t in chain for k in t.host_keys)
        keyed: dict[tuple, list[int]] = {}
        outside, stateless = [], []
        ours = {b.flat_param.untyped_storage().data_ptr() for lay in self._layouts.values() for b in lay.buckets}
        ours_grad = {b.flat_grad.untyped_storage().data_ptr() for lay in self._layouts.values() for b in lay.buckets
                     if b.flat_grad is not None}
        for i, p in enumerate(group["params"]):
            st = opt.state.get(p, {})
            step = opt._step_of(p, st)
            if step is None:
                outside.append(i)
                stateless.append(i)
                continue
            why = _kept_storage(p, ours, getattr(opt, "params_in_buffers", False))
            if why:
                outside.append(i)
                if opt.compile is True and why not in self.warned:
                    self.warned.add(why)
                    warnings.warn(f"optimlab: compile=True: {why}; those parameters step on the eager path",
                                  RuntimeWarning, stacklevel=5)
                continue
            keys = tuple(k for k, v in st.items()
                         if isinstance(v, Tensor) and k not in _ENGINE_KEYS and k not in host_keys)
            if not _flattenable(p, st, keys, per_tensor):
                outside.append(i)
                continue
            if p.device.type in _BROKEN_DEVICES:
                outside.append(i)
                continue
            # as the eager path buckets: same step count and host-side history (NAdam's product)
            host = tuple(host_float(st.get(k)) for t in chain for k in t.host_keys)
            key = (p.device, p.dtype, step, host, keys, tuple(st[k].dtype for k in keys))
            keyed.setdefault(key, []).append(i)
        # compile=None compiles large buckets only; otherwise, where part of the group steps
        # eagerly every step, a small bucket joins that part (see SPLIT_MIN_NUMEL)
        auto = opt.compile is None and not group.get("fused")
        split = not auto and len(outside) > len(stateless)
        minimum = auto_min_numel(opt) if auto else SPLIT_MIN_NUMEL if split else 0
        moved = [i for key in [key for key, idx in keyed.items()
                               if sum(group["params"][i].numel() for i in idx) < minimum]
                 for i in keyed.pop(key)]
        if moved:
            if split and "small-remainder" not in self.warned:
                self.warned.add("small-remainder")
                _log.info("%s(compile=True): %d tensors (%d entries) of a param group step on the eager "
                          "path with the rest of it (%d tensors the flat buffers cannot hold): a compiled "
                          "call costs more than it saves on fewer than %d entries",
                          type(opt).__name__, len(moved), sum(group["params"][i].numel() for i in moved),
                          len(outside) - len(stateless), SPLIT_MIN_NUMEL)
            outside.extend(moved)
            outside.sort()
        buckets = []
        counted = (("step",) if opt.state_step else ()) + tuple(dict.fromkeys(k for t in chain for k in t.host_keys))
        for (_, _, step, _, keys, _), idx in keyed.items():
            params = [group["params"][i] for i in idx]
            states = [opt.state.get(p, {}) for p in params]
            own = (opt.accumulate_steps == 1 and not (group.get("fused") and opt.compile is False)
                   and not any(_foreign_view(p.grad, ours_grad) for p in params))
            buckets.append(_Bucket(params, [names[i] if names else None for i in idx], states, keys, own,
                                   layerwise=_layerwise(chain), per_tensor=per_tensor, masks=_masks(chain),
                                   step=step, transient=params[0].device.type != "cpu" or TRANSIENT_GRADS_ON_CPU,
                                   counted=counted))
        lay = _Layout(group, chain, opt.state, list(map(id, group["params"])), buckets, outside, stateless)
        self._layouts[id(group)] = lay
        return lay

    # -- zero_grad -----------------------------------------------------------------------------
    def zero_grad(self, opt, set_to_none: bool) -> None:
        """``set_to_none=False``: zero each flat grad buffer in one call and point every
        ``p.grad`` that is not None at its (zeroed) view; other parameters get torch's treatment."""
        if set_to_none:
            torch.optim.Optimizer.zero_grad(opt, True)
            for lay in self._layouts.values():
                for b in lay.buckets:
                    b.drop_grads()  # (transient ones: no gradient refers to it now)
            return
        done = set()
        for lay in self._layouts.values():
            for b in lay.buckets:
                if not b.own_grads or b.flat_grad is None or any(p.data_ptr() != ptr for p, ptr, *_ in b.rows):
                    continue  # fused=True (p.grad stays the user's) or a stale layout: the generic loop
                b.flat_grad.zero_()
                for p, gv in zip(b.params, b.grad_views):
                    g = p.grad
                    if g is None or g.requires_grad:
                        continue  # None stays None (torch); a grad in a graph: the generic loop
                    if g is not gv:
                        p.grad = gv
                    done.add(id(p))
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) in done or p.grad is None:
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()
