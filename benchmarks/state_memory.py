"""Optimizer state in bytes per parameter, for each low-precision option (issue 12).

Steps each optimizer once on a transformer-shaped float32 model (a few large matrices and some
small vectors, which stay unquantized under ``state_bits=8``) and counts the bytes of every
tensor in ``optimizer.state`` (step counts included), next to torchao's AdamW8bit and
torch-optimi's AdamW where installed (``pip install -e '.[bench]'``).

    python benchmarks/state_memory.py            # AdamW, Adam, SGD(momentum), Lion, RMSprop, Adagrad ...
    python benchmarks/state_memory.py --quick    # AdamW and SGD only
"""

from __future__ import annotations

import argparse
import importlib.util

import torch

import optimlab
from optimlab.precision import state_bytes

OPTIONS = {"fp32": {}, "bf16": {"state_dtype": torch.bfloat16}, "8-bit": {"state_bits": 8}}
OPTIMIZERS = {"adamw": {}, "adam": {}, "sgd": {"momentum": 0.9}, "lion": {}, "rmsprop": {}, "adagrad": {},
              "adafactor": {}, "lamb": {}, "adan": {}, "ademamix": {}, "muon-adam": {}}
QUICK = ("adamw", "sgd")


def model_params(width: int = 512, layers: int = 4) -> list[torch.nn.Parameter]:
    """Transformer-shaped: per layer a (3w, w) attention input, (w, w) output, (4w, w) and
    (w, 4w) MLP matrices, and their biases and norm vectors."""
    g = torch.Generator().manual_seed(0)
    shapes = []
    for _ in range(layers):
        shapes += [(3 * width, width), (3 * width,), (width, width), (width,), (4 * width, width), (4 * width,),
                   (width, 4 * width), (width,), (width,), (width,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]


def measure(make) -> float | None:
    params = model_params()
    try:
        opt = make(params)
    except Exception as exc:  # an option an optimizer refuses is reported, not fatal
        print(f"  ({type(exc).__name__}: {exc})")
        return None
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    return state_bytes(opt) / sum(p.numel() for p in params)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="AdamW and SGD only")
    args = ap.parse_args()
    names = QUICK if args.quick else tuple(OPTIMIZERS)
    n = sum(p.numel() for p in model_params())
    print(f"state bytes per parameter ({n / 1e6:.1f} M float32 parameters, {len(model_params())} tensors)\n")
    print(f"{'optimizer':<12}" + "".join(f"{k:>10}" for k in OPTIONS))
    for name in names:
        hyper = OPTIMIZERS[name]
        row = [measure(lambda ps, kw=kw: optimlab.create(name, ps, **hyper, **kw)) for kw in OPTIONS.values()]
        print(f"{name:<12}" + "".join(f"{'-' if v is None else f'{v:.3f}':>10}" for v in row))
    peers = []
    if importlib.util.find_spec("torchao"):
        from torchao.optim import AdamW8bit

        peers.append(("torchao AdamW8bit", lambda ps: AdamW8bit(ps, lr=1e-3)))
    if importlib.util.find_spec("optimi"):
        import optimi

        peers.append(("optimi AdamW", lambda ps: optimi.AdamW(ps, lr=1e-3)))
    if peers:
        print("\npeers (float32 parameters)")
        for label, make in peers:
            print(f"{label:<20}{measure(make):>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
