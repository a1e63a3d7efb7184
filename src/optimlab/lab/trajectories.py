"""Optimizer paths on the 2-D test functions (pure: returns arrays; plotting is in
:mod:`optimlab.plots`).

    >>> paths = trajectories("rosenbrock", ["sgd:lr=1e-3,momentum=0.9", "adam:lr=0.05"], steps=500)
"""

from __future__ import annotations

import numpy as np
import torch

from .. import registry
from .runner import parse_optimizer
from .tasks import TEST_FUNCTIONS

__all__ = ["trajectories", "DEFAULT_TRAJECTORY_OPTIMIZERS"]

DEFAULT_TRAJECTORY_OPTIMIZERS = ["sgd:lr=1e-3", "sgd:lr=1e-3,momentum=0.9", "adagrad:lr=0.5", "rmsprop:lr=1e-2",
                                 "adam:lr=5e-2"]


def _function(name: str):
    if name not in TEST_FUNCTIONS:
        raise KeyError(f"unknown test function {name!r} (known: {', '.join(TEST_FUNCTIONS)})")
    return TEST_FUNCTIONS[name]


def trajectories(function: str, optimizers: list[str], steps: int = 500,
                 start: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """For each optimizer string, the (steps + 1) x 2 array of iterates from the function's
    standard start; a path that diverges stops at its last finite point."""
    tf = _function(function)
    out = {}
    for text in optimizers:
        name, hyper = parse_optimizer(text)
        x = torch.nn.Parameter(torch.tensor(start or tf.start, dtype=torch.float64))
        opt = registry.create(name, [x], **hyper)
        path = [x.detach().clone()]

        def closure():
            opt.zero_grad()
            loss = tf.f(x)
            loss.backward()
            return loss

        for _ in range(steps):
            opt.step(closure)
            if not torch.isfinite(x).all() or x.abs().max() > 1e6:
                break
            path.append(x.detach().clone())
        out[text] = torch.stack(path).numpy()
    return out
