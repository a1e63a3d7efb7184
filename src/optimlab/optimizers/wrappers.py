"""Optimizers that wrap another optimizer: Lookahead, SAM and adaptive SAM.

Lookahead (Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step back",
NeurIPS 2019): the inner optimizer moves the (fast) weights ``w``; every ``k`` steps the slow
weights ``phi`` (starting at the initial weights) move towards them and the fast weights restart
from there::

    phi <- phi + alpha (w - phi),   w <- phi

SAM (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
ICLR 2021) and ASAM (Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
Learning of Deep Neural Networks", ICML 2021): the base optimizer steps with the gradient taken at
the worst point of a ball of radius ``rho`` around ``w``::

    e = rho T^2 g / ||T g||,   g' = grad L(w + e),   w <- base_step(w, g')
    T = 1 (SAM)   or   T = |w| + eta, elementwise (ASAM: the ball is scaled with the weights)

with ``||.||`` the norm over all parameters. ``step(closure)`` needs the closure: it is evaluated
at ``w`` (its loss is returned), then at ``w + e``; the weights are restored exactly before the
base step.

Each wrapper is a ``torch.optim.Optimizer`` sharing ``param_groups`` with the optimizer it wraps,
so LR schedulers, ``zero_grad`` and ``add_param_group`` act on the inner optimizer. Wrap an
instance, or give parameters and name the inner optimizer (``base``, a registry name or an
optimizer class) with its hyperparameters.

Example::

    >>> opt = optimlab.Lookahead(optimlab.Adam(model.parameters(), lr=1e-3), k=5, alpha=0.5)
    >>> opt = optimlab.create("lookahead", model.parameters(), base="sgd", lr=0.1, momentum=0.9)
    >>> opt = optimlab.SAM(model.parameters(), rho=0.05, base="sgd", lr=0.05, momentum=0.9)
    >>> loss = opt.step(closure)      # closure: zero_grad, forward, backward, return the loss
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import torch
from torch import Tensor

from .. import registry
from ..core import check_int, check_nonneg
from ..diagnostics import Diagnosable

__all__ = ["Lookahead", "SAM", "ASAM"]


def _inner(params, base, hyper: dict[str, Any], owner: str, base_defaults: dict[str, dict]) -> torch.optim.Optimizer:
    """The wrapped optimizer: ``params`` itself if it is one, else ``base`` built on ``params``."""
    hyper = {k: v for k, v in hyper.items() if v is not None}
    if isinstance(params, torch.optim.Optimizer):
        if hyper:
            raise TypeError(f"{owner} got an optimizer to wrap and hyperparameters {sorted(hyper)} for a base "
                            "optimizer; set them on the optimizer you pass instead")
        return params
    if isinstance(base, str):
        try:
            spec = registry._spec(base)
        except KeyError as e:
            raise ValueError(f"Invalid base: {base!r} ({e.args[0]})") from None
        return spec.cls(params, **{**base_defaults.get(spec.name, {}), **hyper})
    if isinstance(base, type) and issubclass(base, torch.optim.Optimizer):
        return base(params, **hyper)
    raise ValueError(f"Invalid base: {base!r} (expected a registry name such as 'adam' or an optimizer class)")


class _Wrapper(Diagnosable, torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` around ``self.optimizer``: the same ``param_groups`` and
    ``defaults`` (shared, not copied), its own ``state`` for what the wrapper keeps."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        # torch's own unpickling path sets up the hooks and the step patching without params
        torch.optim.Optimizer.__setstate__(
            self, {"optimizer": optimizer, "defaults": optimizer.defaults, "state": collections.defaultdict(dict)})

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups) -> None:
        self.optimizer.param_groups = groups

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def train(self) -> None:
        """The inner optimizer's ``train()`` (schedule-free optimizers), if it has one."""
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()

    def eval(self) -> None:
        """The inner optimizer's ``eval()``, if it has one."""
        if callable(getattr(self.optimizer, "eval", None)):
            self.optimizer.eval()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()}, {self.optimizer!r})"

    def _describe(self) -> str:  # pragma: no cover - overridden
        return ""

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]


@registry.register("lookahead")
class Lookahead(_Wrapper):
    """Lookahead around any optimizer: every ``k`` steps the slow weights move a fraction
    ``alpha`` towards the fast ones, and the fast weights restart from them.

    ``params``: an optimizer to wrap, or parameters for a new ``base`` optimizer (a registry name
    or a class; default Adam) built with ``lr`` and ``**base_hyperparameters``. The slow weights
    live in ``state[p]["slow_param"]``; ``state_dict()`` is the inner optimizer's plus a
    ``"lookahead"`` entry (``k``, ``alpha``, the step count and the slow weights).
    Example: ``optimlab.Lookahead(optimlab.Adam(model.parameters()), k=5, alpha=0.5)``.
    """

    def __init__(self, params, k=5, alpha=0.5, *, base="adam", lr=None, **base_hyperparameters):
        check_int("k", k, minimum=1)
        _check_alpha(alpha)
        super().__init__(_inner(params, base, dict(base_hyperparameters, lr=lr), "Lookahead", {}))
        self.k, self.alpha = k, float(alpha)
        self.lookahead_steps = 0  # calls to step() so far

    def _describe(self) -> str:
        return f"k={self.k}, alpha={self.alpha}"

    @torch.no_grad()
    def step(self, closure=None):
        """One inner step; every ``k``-th one, the slow weights' update and the sync."""
        for p in self._params():  # slow weights start where the fast ones are before their first step
            if "slow_param" not in self.state[p]:
                self.state[p]["slow_param"] = p.detach().clone()
        loss = self.optimizer.step(closure)
        self.lookahead_steps += 1
        if self.lookahead_steps % self.k == 0:
            fast = self._params()
            slow = [self.state[p]["slow_param"] for p in fast]
            torch._foreach_lerp_(slow, fast, self.alpha)  # phi <- phi + alpha (w - phi)
            torch._foreach_copy_(fast, slow)
        return loss

    def state_dict(self) -> dict[str, Any]:
        sd = self.optimizer.state_dict()
        slow = {i: self.state[p]["slow_param"] for i, p in enumerate(self._params()) if p in self.state}
        return {**sd, "lookahead": {"k": self.k, "alpha": self.alpha, "steps": self.lookahead_steps,
                                    "slow_params": slow}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "lookahead" not in state_dict:
            raise ValueError("this state_dict has no 'lookahead' entry: it was not saved by Lookahead.state_dict() "
                             "(load an inner optimizer's state_dict into opt.optimizer instead)")
        ours = state_dict["lookahead"]
        self.optimizer.load_state_dict({k: v for k, v in state_dict.items() if k != "lookahead"})
        params = self._params()
        self.state = collections.defaultdict(dict)
        for i, slow in ours["slow_params"].items():
            p = params[int(i)]
            self.state[p]["slow_param"] = slow.detach().to(device=p.device, dtype=p.dtype, copy=True)
        self.k, self.alpha, self.lookahead_steps = ours["k"], float(ours["alpha"]), ours["steps"]


def _check_alpha(alpha) -> None:
    check_nonneg("alpha", alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"Invalid alpha: {alpha} (must be in (0, 1]: the slow weights' step towards the fast ones)")


@registry.register("sam", needs_closure=True)
class SAM(_Wrapper):
    """Sharpness-aware minimisation (``adaptive=True``: ASAM) around any optimizer.

    ``rho``: the radius of the ball the ascent step explores; ``adaptive``: scale it per weight
    by ``|w| + eta``. ``params``: an optimizer to wrap, or parameters for a new ``base``
    optimizer (default SGD with momentum 0.9 and lr 0.05) built with ``lr`` and
    ``**base_hyperparameters``. ``step(closure)`` requires the closure (it zeroes the gradients,
    computes the loss, calls backward and returns the loss) and returns the loss at ``w``.
    Example: ``optimlab.SAM(model.parameters(), rho=0.05, base="sgd", lr=0.05, momentum=0.9)``.
    """

    _base_defaults = {"sgd": {"lr": 0.05, "momentum": 0.9}}

    def __init__(self, params, rho=0.05, adaptive=False, eta=0.01, *, base="sgd", lr=None, **base_hyperparameters):
        check_nonneg("rho", rho)
        check_nonneg("eta", eta)
        if not isinstance(adaptive, bool):
            raise ValueError(f"Invalid adaptive: {adaptive!r} (expected True or False)")
        super().__init__(_inner(params, base, dict(base_hyperparameters, lr=lr), type(self).__name__,
                                self._base_defaults))
        self.rho, self.adaptive, self.eta = float(rho), adaptive, float(eta)

    def _describe(self) -> str:
        return f"rho={self.rho}, adaptive={self.adaptive}" + (f", eta={self.eta}" if self.adaptive else "")

    @torch.no_grad()
    def step(self, closure=None):
        """Ascent to ``w + e``, the gradient there, back to ``w``, then the base step."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step() needs a closure that zeroes the gradients, computes "
                             "the loss, calls backward() and returns the loss: it evaluates it twice per step "
                             "(at w and at the perturbed w + e)")
        closure = torch.enable_grad()(closure)
        loss = closure()
        params = [p for p in self._params() if p.grad is not None]
        if params:
            e = self._ascent(params)
            saved = [p.detach().clone() for p in params]
            torch._foreach_add_(params, e)
            try:
                closure()  # the gradients at w + e
            finally:
                torch._foreach_copy_(params, saved)  # back to w, exactly
        self.optimizer.step()
        return loss

    def _ascent(self, params: list[Tensor]) -> list[Tensor]:
        """``e = rho T^2 g / ||T g||`` (``T = 1``, or ``|w| + eta`` when adaptive)."""
        grads = [p.grad for p in params]
        scale = torch._foreach_add(torch._foreach_abs(params), self.eta) if self.adaptive else None
        tg = torch._foreach_mul(grads, scale) if self.adaptive else grads
        device, dtype = grads[0].device, functools.reduce(torch.promote_types, (g.dtype for g in grads))
        norm = torch.linalg.vector_norm(torch.stack([n.to(device, dtype) for n in torch._foreach_norm(tg)]))
        factor = self.rho / (norm + 1e-12)
        e = torch._foreach_mul(tg, scale) if self.adaptive else torch._foreach_mul(grads, 1.0)
        torch._foreach_mul_(e, [factor.to(x.device, x.dtype) for x in e])
        return e

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)


class ASAM(SAM):
    """Adaptive SAM (Kwon et al. 2021): ``SAM(adaptive=True)`` with the paper's ``rho=0.5``,
    ``eta=0.01``. Example: ``optimlab.ASAM(model.parameters(), rho=0.5, base="sgd", lr=0.05)``."""

    def __init__(self, params, rho=0.5, eta=0.01, *, base="sgd", lr=None, **base_hyperparameters):
        super().__init__(params, rho, True, eta, base=base, lr=lr, **base_hyperparameters)
