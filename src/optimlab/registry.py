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
from collections.abc import Callable
from typing import Any

__all__ = ["OptimizerSpec", "REGISTRY", "register", "create", "names", "describe"]

# Constructor arguments that are implementation switches, not hyperparameters.
_IMPL_FLAGS = {"foreach", "fused", "capturable", "differentiable"}


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What the registry knows about one optimizer."""

    name: str
    cls: type
    needs_closure: bool = False
    second_order: bool = False
    sparse_gradients: bool = False
    torch_name: str | None = None  # the torch.optim class computing the same numbers, if any
    summary: str = ""

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
