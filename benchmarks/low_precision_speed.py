"""Step time of AdamW with each low-precision option, eager and ``compile=True``, against torch's
fused AdamW on the same parameters in float32 (issue 12: the options "eager and compiled").

Parameters are shaped like ``step_speed.py``'s ``model`` layout (~25 M in ~200 tensors; with
``--small`` ~2 M), float32 or -- for ``param_rounding`` -- bfloat16, with fixed random
gradients. Each repeat steps every variant once, in rotating order (machine noise hits them
alike); the table shows medians and the ratio to torch's fused float32 step. A low-precision
step moves fewer bytes (bf16 moments: 4 instead of 8 per parameter read and written) but does
more maths per byte (casts; 8-bit: block absmax, the code search, a gather), so on a CPU it need
not be faster; the compiled kernel does it in one pass, the eager path in cache-sized pieces.

    python benchmarks/low_precision_speed.py                # 25 M parameters, 10 repeats
    python benchmarks/low_precision_speed.py --small --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import optimlab
from step_speed import make_params, transformer_shapes

VARIANTS = {  # label -> (parameter dtype, optimlab options)
    "fp32 state": (torch.float32, {}),
    "bf16 state": (torch.float32, {"state_dtype": torch.bfloat16}),
    "8-bit state": (torch.float32, {"state_bits": 8}),
    "bf16 params + stochastic": (torch.bfloat16, {"param_rounding": "stochastic"}),
    "bf16 params + kahan": (torch.bfloat16, {"param_rounding": "kahan"}),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="~2 M parameters")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = transformer_shapes(args.small)
    runs = {}  # label -> (params, optimizer)

    def add(label, dtype, make):
        params = [torch.nn.Parameter(p.to(dtype)) for p in make_params(shapes)]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = make(params)
        t0 = time.perf_counter()
        opt.step()
        runs[label] = (opt, time.perf_counter() - t0)

    add("torch AdamW fused (fp32)", torch.float32, lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 8-bit under compile=True: said, expected
        for label, (dtype, kw) in VARIANTS.items():
            for compile in (False, True):
                add(f"{label}, {'compile=True' if compile else 'eager'}", dtype,
                    lambda ps, kw=kw, c=compile: optimlab.AdamW(ps, lr=1e-4, compile=c, **kw))
    times = {label: [] for label in runs}
    labels = list(runs)
    for r in range(args.repeats):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            opt = runs[label][0]
            t0 = time.perf_counter()
            opt.step()
            times[label].append(time.perf_counter() - t0)
    n = sum(p.numel() for p in make_params(shapes))
    ref = statistics.median(times[labels[0]])
    print(f"AdamW step, {n / 1e6:.1f} M parameters in {len(shapes)} tensors, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}\n")
    print(f"{'variant':<42}{'ms':>9}{'/ fused':>9}{'first s':>9}")
    for label in labels:
        med = statistics.median(times[label])
        print(f"{label:<42}{med * 1e3:>9.2f}{med / ref:>9.2f}{runs[label][1]:>9.2f}")


if __name__ == "__main__":
    main()
