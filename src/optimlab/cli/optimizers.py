"""``optimlab optimizers``: list the registry (names, defaults, capabilities)."""

from __future__ import annotations

import json
import math

from .. import registry


def add_parser(sub) -> None:
    p = sub.add_parser("optimizers", help="list the optimizers with their defaults and capabilities",
                       description="Every optimizer by name, with its hyperparameters' defaults, what it needs "
                                   "(a closure, second-order information) and the torch.optim class it matches. "
                                   "Use the names in --optimizers, e.g. 'adam:lr=1e-3,betas=(0.9,0.99)'.")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _fmt(v) -> str:
    return repr(v) if not isinstance(v, float) else f"{v:g}"


def _strict(v):
    """Strict JSON has no Infinity/NaN: write non-finite defaults (growth_rate=inf) as strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    return v


def run(args) -> int:
    rows = registry.describe()
    if args.json:
        print(json.dumps(_strict(rows), indent=2, default=repr, allow_nan=False))
        return 0
    for r in rows:
        caps = [c for c in ("needs_closure", "second_order", "sparse_gradients") if r[c]]
        same = f"  = {r['torch_equivalent']}" if r["torch_equivalent"] else ""
        print(f"{r['name']:<12} {r['class']}{same}{'  [' + ', '.join(caps) + ']' if caps else ''}")
        print("             " + ", ".join(f"{k}={_fmt(v)}" for k, v in r["defaults"].items()))
    return 0
