"""One registry of optimizers: name -> class, defaults and capabilities.

The CLI, the lab and the generic test table all read it.

    >>> optimlab.names()[:3]
    ['adadelta', 'adafactor', 'adagrad']
    >>> opt = optimlab.create("sgd", model.parameters(), lr=0.1, momentum=0.9)
    >>> optimlab.describe("adam")["defaults"]["betas"]
    (0.9, 0.999)
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from collections.abc import Callable
from typing import Any

__all__ = ["OptimizerSpec", "Dim", "REGISTRY", "register", "create", "names", "describe"]

# Constructor arguments that are implementation switches, not hyperparameters.
_IMPL_FLAGS = {"foreach", "fused", "capturable", "differentiable"}


@dataclasses.dataclass(frozen=True)
class Dim:
    """One dimension of a tuning search space: ``low``..``high`` on ``scale`` -- ``"log"``
    (log-uniform), ``"log1m"`` (``1 - x`` log-uniform: momenta and β1, dense near 1) or
    ``"linear"`` -- or one of ``choices``. :meth:`at` maps ``u`` in [0, 1) to a value."""

    low: float = 0.0
    high: float = 1.0
    scale: str = "log"
    choices: tuple = ()

    def __post_init__(self):
        if self.choices:
            return
        if self.scale not in ("log", "log1m", "linear"):
            raise ValueError(f"Invalid scale: {self.scale!r} (log, log1m or linear)")
        ok = {"log": 0 < self.low < self.high, "log1m": self.low < self.high < 1,
              "linear": self.low < self.high}[self.scale]
        if not ok:
            raise ValueError(f"Invalid range for a {self.scale} dimension: low={self.low}, high={self.high}")

    def at(self, u: float):
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        if self.scale == "log":
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        if self.scale == "log1m":
            a, b = math.log1p(-self.low), math.log1p(-self.high)
            return -math.expm1(a + u * (b - a))
        return self.low + u * (self.high - self.low)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What the registry knows about one optimizer. ``search_space`` (hyperparameter -> :class:`Dim`,
    ``None`` to drop one) adjusts the tuning space derived from the defaults (:meth:`space`)."""

    name: str
    cls: type
    needs_closure: bool = False
    second_order: bool = False
    sparse_gradients: bool = False
    torch_name: str | None = None  # the torch.optim class computing the same numbers, if any
    summary: str = ""
    search_space: dict[str, Dim | None] | None = None

    @property
    def default_lr(self) -> float | None:
        """The constructor's default ``lr`` where it is a positive number (None: no default, or
        a schedule/tensor the lab cannot scale)."""
        lr = self.defaults.get("lr")
        return lr if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 else None

    def space(self) -> dict[str, Dim]:
        """Where the lab's tuning searches (Choi et al. 2019 search spaces, in shape): ``lr``
        log-uniform from 1/100 to 100 times the default; ``momentum`` -- β1 for optimizers with
        ``betas`` -- with ``1 - x`` log-uniform in [0.001, 1]; ``weight_decay`` log-uniform in
        [1e-6, 1e-2]; ``eps`` log-uniform in [1e-10, 1e-3]; each where the optimizer has it,
        then adjusted by ``search_space``."""
        d = self.defaults
        out: dict[str, Dim | None] = {}
        lr = self.default_lr
        if lr is not None:
            out["lr"] = Dim(lr / 100, lr * 100)
        if "momentum" in d or "betas" in d:
            out["momentum"] = Dim(0.0, 0.999, "log1m")
        if "weight_decay" in d:
            out["weight_decay"] = Dim(1e-6, 1e-2)
        if "eps" in d:
            out["eps"] = Dim(1e-10, 1e-3)
        out.update(self.search_space or {})
        return {k: v for k, v in out.items() if v is not None}

    @property
    def defaults(self) -> dict[str, Any]:
        """Hyperparameters and their defaults, read from the constructor's signature."""
        sig = inspect.signature(self.cls.__init__)
        return {
            k: v.default
            for k, v in sig.parameters.items()
            if k not in ("self", "params") and k not in _IMPL_FLAGS
            and v.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        }

    @property
    def low_precision(self) -> tuple[str, ...]:
        """The low-precision options the optimizer honours (``state_dtype``, ``state_bits``,
        ``param_rounding``; see :mod:`optimlab.precision`), from its class."""
        return tuple(getattr(self.cls, "low_precision", ()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class": f"optimlab.{self.cls.__name__}",
            "defaults": self.defaults,
            "needs_closure": self.needs_closure,
            "second_order": self.second_order,
            "sparse_gradients": self.sparse_gradients,
            "torch_equivalent": f"torch.optim.{self.torch_name}" if self.torch_name else None,
            "summary": self.summary,
            "low_precision": self.low_precision,
            "search_space": {k: dataclasses.asdict(v) for k, v in self.space().items()},
        }


REGISTRY: dict[str, OptimizerSpec] = {}


def register(name: str, **capabilities: Any) -> Callable[[type], type]:
    """Class decorator: ``@register("adamw", torch_name="AdamW")``."""

    def deco(cls: type) -> type:
        if name in REGISTRY and REGISTRY[name].cls is not cls:
            raise ValueError(f"optimizer name {name!r} is already registered to {REGISTRY[name].cls}")
        summary = capabilities.pop("summary", None)
        if summary is None:
            summary = (inspect.getdoc(cls) or "").split("\n")[0]
        REGISTRY[name] = OptimizerSpec(name=name, cls=cls, summary=summary, **capabilities)
        return cls

    return deco


def _spec(name: str) -> OptimizerSpec:
    key = name.lower().replace("_", "-")
    if key in REGISTRY:
        return REGISTRY[key]
    close = difflib.get_close_matches(key, REGISTRY, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown optimizer {name!r}{hint} (known: {', '.join(sorted(REGISTRY))})")


def create(name: str, params, **hyperparameters: Any):
    """Build a registered optimizer by name: ``create("adam", model.parameters(), lr=1e-3)``."""
    return _spec(name).cls(params, **hyperparameters)


def names() -> list[str]:
    """All registered optimizer names, sorted."""
    return sorted(REGISTRY)


def describe(name: str | None = None):
    """One optimizer's spec as a dict, or the list of all of them."""
    if name is not None:
        return _spec(name).as_dict()
    return [REGISTRY[n].as_dict() for n in names()]
