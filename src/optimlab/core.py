"""The core: the transform protocol, ``chain``, and the adapter that makes any chain a
``torch.optim.Optimizer``.

A *transform* turns a list of update tensors into the next one (optax's ``init``/``update``
pair, in PyTorch form):

* ``init(p, group) -> dict[str, Tensor]`` creates the transform's per-parameter state. It is
  stored in the optimizer's ``state[p]`` under torch.optim's own key names (``exp_avg``,
  ``momentum_buffer`` ...), so ``state_dict()`` / ``load_state_dict()`` just work.
* ``scalars(group, step, host) -> dict[str, float]`` does the host-side scalar maths of one
  step (bias corrections, step sizes) from the group's hyperparameters. ``host`` is the
  per-parameter state dict of the bucket's first parameter: a transform whose scalars carry
  history (NAdam's momentum product, ASGD's eta) keeps it there as Python floats under the
  names in ``host_keys``; the engine copies those entries to every parameter of the bucket.
* ``update(u, s)`` transforms ``u.updates`` (a list of tensors, one per parameter) with
  multi-tensor ops. Numbers are read **only** from ``s`` -- they are Python floats on the eager
  path and 0-d tensors on the compiled path, so changing a hyperparameter never recompiles.
  Structure (booleans, key names, masks) lives in the transform's own dataclass fields.
* ``after(u, s)`` (optional) acts on the parameters once the update has been applied (proximal
  L1, iterate averaging).

The descent step ``p <- p - lr * u`` is applied in exactly one place, :meth:`Updates.apply`
(:func:`apply_updates`, or one ``addcdiv`` for a quotient left unevaluated).

Example::

    >>> import torch, optimlab
    >>> from optimlab.transforms import scale_by_adam, add_decayed_weights
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = optimlab.ChainOptimizer([w], [scale_by_adam(), add_decayed_weights()],
    ...                               dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01))
    >>> w.sum().backward(); opt.step()
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import operator
import re
import struct
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from .precision import Precision, hold_state, is_aux, is_held

__all__ = [
    "Transform",
    "Updates",
    "Segments",
    "ChainOptimizer",
    "Mask",
    "apply_updates",
    "stored_like_torch",
    "axpy",
    "axpy_",
    "scale_",
    "check_nonneg",
    "invalid",
    "check_positive",
    "check_beta",
    "check_betas",
    "check_int",
]

_log = logging.getLogger("optimlab")

Scalar = float | Tensor  # a Python float (eager path) or a 0-d tensor (compiled path)


# ---------------------------------------------------------------------------------------------
# Small multi-tensor helpers that accept a float or a 0-d tensor as the scalar.
# ---------------------------------------------------------------------------------------------
def axpy_(ys: list[Tensor], a: Scalar, xs: list[Tensor]) -> None:
    """``y <- y + a * x`` for every pair, in place."""
    if not ys:
        return
    if isinstance(a, Tensor):
        torch._foreach_add_(ys, torch._foreach_mul(xs, a))
    else:
        torch._foreach_add_(ys, xs, alpha=a)


def axpy(ys: list[Tensor], a: Scalar, xs: list[Tensor]) -> list[Tensor]:
    """``y + a * x`` for every pair, as new tensors."""
    if isinstance(a, Tensor):
        return torch._foreach_add(ys, torch._foreach_mul(xs, a))
    return torch._foreach_add(ys, xs, alpha=a)


def scale_(xs: list[Tensor], a: Scalar) -> None:
    """``x <- a * x`` for every tensor, in place."""
    if xs:
        torch._foreach_mul_(xs, a)


def stored_like_torch(x: float) -> float:
    """``x`` rounded as torch.optim rounds the scalar state it keeps in 0-d tensors (NAdam's
    ``mu_product``, ASGD's ``eta`` and ``mu``): to float32 unless the default dtype is float64.
    Host-side scalar state rounded this way keeps trajectories identical to torch's."""
    if torch.get_default_dtype() == torch.float64:
        return float(x)
    return struct.unpack("f", struct.pack("f", x))[0]


def step_dtype() -> torch.dtype:
    """The dtype of torch.optim's ``state["step"]`` tensors: float32, or float64 when that is
    the default dtype."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _as_update(x: Tensor, like: Tensor, factor: float) -> Tensor:
    """A deferred update ``x`` (a new tensor) times ``factor``, in the gradient's dtype."""
    if x.dtype != like.dtype:
        x = x.to(like.dtype)
    return x if factor == 1.0 else x.mul_(factor)


def apply_updates(params: list[Tensor], updates: list[Tensor], lr: Scalar | None) -> None:
    """The one place the sign flip happens: ``p <- p - lr * u`` (``p <- p - u`` if ``lr`` is None)."""
    if lr is None:
        torch._foreach_sub_(params, updates)
    else:
        axpy_(params, -lr, updates)


# ---------------------------------------------------------------------------------------------
# Masks: which parameters a regulariser applies to.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Mask:
    """Selects parameters by name pattern and/or shape.

    ``Mask(exclude=r"bias|norm")`` skips parameters whose name matches the regex;
    ``Mask(min_ndim=2)`` keeps only matrices (skips biases and norm weights by shape).
    ``Mask.no_bias_norm()`` is the usual "no decay on biases and norms" choice.
    A callable ``(name, param) -> bool`` may be given instead of a ``Mask`` anywhere a mask is
    accepted.
    """

    include: str | None = None
    exclude: str | None = None
    min_ndim: int = 0

    @classmethod
    def no_bias_norm(cls) -> "Mask":
        return cls(min_ndim=2)

    def __call__(self, name: str | None, p: Tensor) -> bool:
        if p.ndim < self.min_ndim:
            return False
        if (self.include or self.exclude) and name is None:
            raise ValueError(
                f"mask {self} selects parameters by name, but the optimizer got unnamed "
                "parameters; pass model.named_parameters() instead of model.parameters()"
            )
        if self.include is not None and not re.search(self.include, name):
            return False
        if self.exclude is not None and re.search(self.exclude, name):
            return False
        return True


def as_mask(mask: Any) -> Callable[[str | None, Tensor], bool] | None:
    """Normalise a user-given mask: None, a Mask, a callable, a regex of names to *exclude*,
    or the string ``"no_bias_norm"``."""
    if mask is None or isinstance(mask, Mask):
        return mask
    if isinstance(mask, dict) and set(mask) <= {f.name for f in dataclasses.fields(Mask)}:
        return Mask(**mask)  # a Mask as a state_dict stores it
    if mask == "no_bias_norm":
        return Mask.no_bias_norm()
    if isinstance(mask, str):
        return Mask(exclude=mask)
    if callable(mask):
        return mask
    raise TypeError(
        f"mask must be None, an optimlab.Mask, a callable (name, param) -> bool, a regex of "
        f"parameter names to exclude, or 'no_bias_norm'; got {mask!r}"
    )


# ---------------------------------------------------------------------------------------------
# The update context and the transform protocol.
# ---------------------------------------------------------------------------------------------
class Segments:
    """Per-tensor reductions on the flat compiled path, for ``layerwise`` transforms.

    There a bucket's tensors live in one flat buffer, which the kernel sees as rows of ``width``
    entries (shape ``(rows, width)``): every tensor starts on a row boundary, so each row
    belongs to one tensor. ``row_tensor[r]`` is that tensor's index, ``row_len[r]`` how many
    entries of row r are the tensor's (the rest is padding, which never enters a sum), and
    ``rows[i]`` how many rows tensor i has. Per-tensor values are vectors with one entry per
    tensor of the bucket (plus possibly trailing entries for empty tensors).
    """

    __slots__ = ("row_tensor", "row_len", "rows", "numel", "width", "table")

    def __init__(self, row_tensor: Tensor, row_len: Tensor, rows: Tensor, numel: Tensor, width: int,
                 table: Tensor | None = None):
        self.row_tensor = row_tensor  # (rows,) int64
        self.row_len = row_len  # (rows,) int32
        self.rows = rows  # (tensors,) int64
        self.numel = numel  # (tensors,) float32: entries per tensor
        self.width = width
        # (tensors, most rows of one tensor) int64, or None: row r of table i is the index of
        # tensor i's r-th row, padded with the index one past the last row (a zero)
        self.table = table

    def _entries(self, x: Tensor) -> Tensor:
        """``x`` with the padding zeroed."""
        return torch.where(torch.arange(self.width, device=x.device) < self.row_len.unsqueeze(1), x, 0)

    def sum(self, x: Tensor) -> Tensor:
        """Per-tensor sums of ``x`` (shaped like the rows), in float32 at least."""
        row_sums = self._entries(x).sum(1, dtype=torch.promote_types(x.dtype, torch.float32))
        # a tensor's rows are consecutive: a segmented sum, without atomics (a scatter-add
        # into few entries from many threads contends: 60 ms instead of 39 for LAMB on one tensor)
        if self.table is not None:  # few rows: gathered into a table and summed in the same kernel
            return torch.cat([row_sums, row_sums.new_zeros(1)])[self.table].sum(1)
        return torch.segment_reduce(row_sums, "sum", lengths=self.rows)

    def total(self, x: Tensor) -> Tensor:
        """The sum of ``x`` over every tensor's entries (a 0-d tensor, float32 at least): one
        reduction that the compiler can fuse into the pass that updates the same entries."""
        return self._entries(x).sum(dtype=torch.promote_types(x.dtype, torch.float32))

    def norm(self, x: Tensor) -> Tensor:
        """Per-tensor Euclidean norms."""
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        return self.sum(x * x).sqrt()

    def rms(self, x: Tensor) -> Tensor:
        """Per-tensor root mean squares ``||x|| / sqrt(numel)`` (0 for empty tensors)."""
        norm = self.norm(x)
        return norm / self.numel.to(norm.dtype).clamp_min(1).sqrt()

    def expand(self, values: Tensor) -> Tensor:
        """Per-tensor values broadcast to the rows, shape ``(rows, 1)``."""
        return values[self.row_tensor].unsqueeze(1)


class Updates:
    """What a transform sees: the parameters of one bucket (same step count), their gradients,
    the current updates, and their state as lists keyed by state name.

    ``updates`` starts out as the gradients themselves; a transform that wants to modify it in
    place calls :meth:`mutable` first (the user's ``.grad`` is never written to).
    ``segments`` is None on the eager path; on the flat compiled path each list holds one flat
    tensor and ``segments`` (a :class:`Segments`) gives per-tensor reductions to the chains
    that need them.

    A transform whose update is a quotient ``num / den * scale`` (Adam, AdaGrad, RMSProp ...)
    may hand it over unevaluated (:meth:`replace_ratio`): the division happens when a later
    transform reads ``updates``, or not at all when nothing does -- the descent step then
    divides as it writes, ``p <- p - lr * scale * num / den`` in one ``addcdiv`` pass (torch's
    own last line for these algorithms), instead of a division, a scaling and an axpy, each a
    pass over memory and the first two a parameter-sized temporary. A scaled update ``num *
    scale`` (ASGD's ``eta``) is handed over the same way. A transform that maps each tensor
    separately and expensively (Muon's Newton-Schulz) may hand over a per-tensor function
    instead (:meth:`defer`): the step then makes and applies one tensor's update at a time.
    """

    __slots__ = ("params", "grads", "_updates", "_ratio", "_lazy", "_keep", "state", "names", "step", "_owned",
                 "segments")

    def __init__(self, params, grads, state, names, step, updates=None, owned=False, segments=None):
        self.params: list[Tensor] = params
        self.grads: list[Tensor] = grads
        self._updates: list[Tensor] = grads if updates is None else updates
        self._ratio: tuple | None = None
        self._lazy: tuple | None = None  # (fn, factors) handed over by defer
        self._keep: float | None = None  # a decay of the parameters left to apply (scale_params)
        self.state: dict[str, list[Tensor]] = state
        self.names: list[str | None] = names
        self.step: int = step
        self._owned = owned
        self.segments: Segments | None = segments

    @property
    def updates(self) -> list[Tensor]:
        if self._lazy is not None:  # evaluate the per-tensor updates handed over by defer
            fn, factors = self._lazy
            self._lazy = None
            self._updates = [_as_update(fn(i), g, 1.0 if factors is None else factors[i])
                             for i, g in enumerate(self.grads)]
        if self._ratio is not None:  # evaluate a quotient handed over by replace_ratio
            num, den, scale = self._ratio
            self._ratio = None
            if den is None:
                self._updates = torch._foreach_mul(num, scale)
            else:
                self._updates = torch._foreach_div(num, den)
                if scale is not None:
                    scale_(self._updates, scale)
        return self._updates

    @updates.setter
    def updates(self, new: list[Tensor]) -> None:
        self._updates, self._ratio, self._lazy = new, None, None

    def mutable(self) -> list[Tensor]:
        """The updates, copied once if they are still the caller's gradients."""
        if not self._owned:
            self.updates = torch._foreach_mul(self.updates, 1.0) if self.updates else []
            self._owned = True
        return self.updates

    def replace(self, new: list[Tensor], fresh: bool = False) -> None:
        """Make ``new`` the current updates. ``fresh=True``: they are new tensors aliasing no
        state, so later transforms may write to them in place; otherwise (state buffers) the
        next in-place writer copies them first."""
        self.updates = new
        self._owned = fresh

    def replace_ratio(self, num: list[Tensor], den: list[Tensor] | None, scale: Scalar | None = None) -> None:
        """Make ``num / den * scale`` (``num * scale`` for ``den`` None) the current updates,
        evaluated only if it is read (see the class docstring). ``num`` and ``den`` must not
        change before the step is applied."""
        if den is None and scale is None:
            raise ValueError("replace_ratio needs a denominator or a scale")
        self._ratio, self._lazy, self._owned = (num, den, scale), None, True

    def defer(self, fn: Callable[[int], Tensor], factors: list[float] | None = None) -> None:
        """Make ``fn(i) * factors[i]`` the update of the ``i``-th tensor, computed one tensor
        at a time when the step is applied -- ``p.add_(fn(i), alpha=-lr * factors[i])``, so
        each tensor's temporaries are freed (and their memory reused, still in cache) before
        the next one's are made -- or all at once if a later transform reads ``updates``.
        ``fn(i)`` returns a new tensor (of any floating dtype: Muon's bfloat16 matrices are
        applied as they are, as torch's Muon applies them) and may read the current updates,
        gradients and state, which must not change before the step is applied (see
        :meth:`deferred` to compose with it)."""
        self._lazy, self._ratio, self._owned = (fn, factors), None, True

    def scale_params(self, keep: Scalar) -> None:
        """``p <- keep * p`` for every parameter, before the update is applied. Where the update
        is deferred (:meth:`defer`) and no transform follows, each parameter is scaled right
        before its own update is added -- torch's Muon's order, both passes over a parameter
        while it is in cache (a large model's parameters are otherwise read twice from memory:
        once here, once after its Newton-Schulz products have evicted them). The same numbers
        either way; :func:`run_chain` scales every parameter at once before a next transform."""
        if self._lazy is not None and self._keep is None and not isinstance(keep, Tensor):
            self._keep = keep
            return
        self._scale_now()
        scale_(self.params, keep)

    def _scale_now(self) -> None:
        """Apply a decay left by :meth:`scale_params` to every parameter now."""
        if self._keep is not None:
            keep, self._keep = self._keep, None
            scale_(self.params, keep)

    def deferred(self) -> Callable[[int], Tensor] | None:
        """The per-tensor update function handed over by :meth:`defer` (its factors taken as
        1; None if there is none): a transform that maps each tensor's update separately
        composes with it and defers again, keeping the step one tensor at a time."""
        if self._lazy is None:
            return None
        fn, factors = self._lazy
        return fn if factors is None else (lambda i: _as_update(fn(i), self.grads[i], factors[i]))

    def apply(self, lr: Scalar | None) -> None:
        """``p <- p - lr * u`` (see :func:`apply_updates`), dividing as it writes where the
        update is a quotient not yet evaluated and the factor a Python number."""
        if self._ratio is not None and not isinstance(lr, Tensor) and not isinstance(self._ratio[2], Tensor):
            num, den, scale = self._ratio
            value = -(1.0 if lr is None else lr) * (1.0 if scale is None else scale)
            if self.params and den is None:
                torch._foreach_add_(self.params, num, alpha=value)
            elif self.params:
                torch._foreach_addcdiv_(self.params, num, den, value=value)
            return
        if self._lazy is not None and not isinstance(lr, Tensor):
            fn, factors = self._lazy
            keep, self._lazy, self._keep = self._keep, None, None
            value = -(1.0 if lr is None else lr)
            for i, p in enumerate(self.params):
                d = fn(i)  # (made before the decay, as the chain made it: from the undecayed p)
                if keep is not None:  # both passes over p back to back, while it is in cache
                    p.mul_(keep)
                p.add_(d, alpha=value if factors is None else value * factors[i])
                del d  # (freed before the next tensor's update is made)
            return
        self._scale_now()
        apply_updates(self.params, self.updates, lr)

    def select(self, mask) -> list[int]:
        """Indices of the parameters a mask keeps (all of them for ``mask=None``)."""
        if mask is None:
            return list(range(len(self.params)))
        return [i for i, (n, p) in enumerate(zip(self.names, self.params)) if mask(n, p)]


@dataclasses.dataclass(frozen=True)
class Transform:
    """Base of all gradient transforms. Subclasses are frozen dataclasses whose fields hold the
    transform's *structure* (flags, hyperparameter key names, masks); numbers come from the
    param group through :meth:`scalars`.

    ``hyperparameters`` names the group keys the transform reads (used for documentation,
    validation of unknown keys, and the registry).
    """

    hyperparameters = ()  # type: tuple[str, ...]
    #: per-parameter state entries that are host-side Python numbers (see ``scalars``)
    host_keys = ()  # type: tuple[str, ...]
    #: True when ``scalars`` also takes the host entries as the state's own 0-d tensors and
    #: updates them in place with tensor maths (see :func:`traced_host`): ``torch.compile(opt.step)``
    #: then traces the step whole; otherwise the group steps eagerly there (a graph break)
    traces_host = False

    def init(self, p: Tensor, group: dict) -> dict[str, Any]:
        return {}

    def scalars(self, group: dict, step: int, host: dict) -> dict[str, float]:
        return {}

    def update(self, u: Updates, s: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def after(self, u: Updates, s: dict) -> None:
        pass

    #: False for transforms whose update cannot run on one flat tensor (per-tensor shapes
    #: matter, e.g. Adafactor's factored moments or Muon's matrix orthogonalisation).
    elementwise = True
    #: True for transforms that are elementwise apart from per-tensor reductions and per-tensor
    #: scalars (LAMB's trust ratio, NovoGrad's norm): they run on flat buffers too, taking the
    #: reductions from ``u.segments`` there (``elementwise`` stays False: that path is eager).
    layerwise = False
    #: True for transforms whose update of a tensor reads that tensor's values only (its own
    #: reductions included, none across tensors): the eager path may then step a large bucket
    #: of such a chain a few whole tensors at a time, so that the chain's passes over them find
    #: them in cache (see :func:`_pieces`). Elementwise transforms are so by definition.
    per_tensor = False
    #: state keys holding one number per tensor (0-d tensors, e.g. NovoGrad's second moment):
    #: on the flat path they are vectors with one entry per tensor (``layerwise`` transforms only)
    per_tensor_state = ()  # type: tuple[str, ...]
    #: True when the transform's ``mask`` field works on the flat path: there the engine puts
    #: the mask's verdict per tensor of the bucket into ``s["selected"]`` (a bool vector; spread
    #: it over the entries with ``u.segments.expand``)
    masks_on_flat = False
    #: True when :meth:`after` does something (so the engine calls it).
    has_after = False
    #: state entries that are running statistics of the gradient (moments, shaped like p),
    #: which ``state_dtype`` / ``state_bits`` may hold in low precision (see
    #: :mod:`optimlab.precision`): key -> True if never negative (the unsigned 8-bit map).
    #: Other state (parameter copies, preconditioner matrices) is always held as it is.
    moment_state = {}  # type: dict[str, bool]

    def describe(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


# ---------------------------------------------------------------------------------------------
# Argument checks (torch's messages, plus the fix).
# ---------------------------------------------------------------------------------------------
def invalid(name: str, value: Any, why: str) -> ValueError:
    """torch's wording (``Invalid learning rate: -1``, ``Invalid weight_decay value: -1``, which
    code and torch's own tests match on), then the argument and what a valid value is:
    ``Invalid learning rate: -1 (lr must be >= 0)``."""
    label = {"lr": "learning rate", "eps": "epsilon value"}.get(name, f"{name} value")
    return ValueError(f"Invalid {label}: {value} ({name} {why})")


def _num(name: str, value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element (got shape {tuple(value.shape)}); "
                             "pass a number or a 1-element tensor")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Invalid {name}: {value!r} (expected a number, got {type(value).__name__})")
    if math.isnan(value):
        raise invalid(name, value, "is NaN")
    return float(value)


def check_nonneg(name: str, value: Any) -> None:
    if _num(name, value) < 0:
        raise invalid(name, value, "must be >= 0")


def check_positive(name: str, value: Any) -> None:
    if _num(name, value) <= 0:
        raise invalid(name, value, "must be > 0")


def check_beta(name: str, value: Any) -> None:
    v = _num(name, value)
    if not 0.0 <= v < 1.0:
        raise invalid(name, value, "must be in [0, 1)")


def check_betas(name: str, value: Any, n: int = 2) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != n:
        raise ValueError(f"Invalid {name}: {value!r} (expected a tuple of {n} numbers in [0, 1))")
    for i, b in enumerate(value):
        if not 0.0 <= _num(f"{name}[{i}]", b) < 1.0:
            what = "beta" if name == "betas" else name
            raise ValueError(f"Invalid {what} parameter at index {i}: {b} ({name}[{i}] must be in [0, 1))")


def check_int(name: str, value: Any, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {minimum})")


# ---------------------------------------------------------------------------------------------
# The adapter.
# ---------------------------------------------------------------------------------------------


class ChainOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that runs a chain of transforms.

    Either pass ``transforms`` (a fixed chain) or subclass and override :meth:`build`, which
    returns the chain for one param group (so structure may follow the group's flags, e.g.
    ``amsgrad``). ``defaults`` holds every hyperparameter with its default; each param group
    may override any of them, and the user or a scheduler may change them between steps.

    ``lr_key`` names the hyperparameter that scales the final update (``None``: the chain's
    output is applied as it is, as for Rprop). ``state_dtype``, ``state_bits`` and
    ``param_rounding`` hold the moments in low precision and round 16-bit parameters
    stochastically or with Kahan compensation (:mod:`optimlab.precision`); the compiled kernel
    does them too (8-bit codes dequantized and requantized block by block in the same pass).

    ``compile``: ``None`` (default) runs each bucket of at least 4 M elements (the parameters
    of one group, device, dtype and step count) as one compiled kernel over flat buffers and
    the rest eagerly; ``True`` compiles every bucket, ``False`` none (:mod:`optimlab._flat`).
    Where the chain is exactly torch's fused kernel (plain Adam, AdamW, SGD, Adagrad) that
    kernel runs whatever ``compile`` says, unless ``fused=False``.
    """

    #: hyperparameters the base class reads for every optimizer (maximize and the extras).
    _common_defaults: dict[str, Any] = {
        "maximize": False,
        "foreach": None,
        "fused": None,
        "capturable": False,
        "differentiable": False,
    }

    def __init__(
        self,
        params,
        transforms: Sequence[Transform] | None = None,
        defaults: dict[str, Any] | None = None,
        *,
        lr_key: str | None = "lr",
        compile: bool | None = None,
        state_dtype: torch.dtype | None = None,
        state_bits: int | None = None,
        param_rounding: str | None = None,
    ) -> None:
        self._fixed_chain = tuple(transforms) if transforms is not None else None
        self.lr_key = lr_key
        self.compile = compile
        # low-precision state and parameters (optimlab.precision); None: full precision
        self.state_dtype, self.state_bits, self.param_rounding = state_dtype, state_bits, param_rounding
        self._precision = (Precision(state_dtype, state_bits, param_rounding)
                           if (state_dtype, state_bits, param_rounding) != (None, None, None) else None)
        self._counts = {}  # step counts where torch keeps none (state_step=False)
        defaults = {**self._common_defaults, **(defaults or {})}
        # hyperparameters first (torch checks them before the parameters)
        self.check_group({**defaults, "params": []})
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {torch.typename(params)}; wrap it in a list: [{'tensor'}]"
            )
        params = list(params)
        if len(params) == 0:
            raise ValueError(
                "optimizer got an empty parameter list: pass model.parameters() of a model "
                "that has parameters (check requires_grad and that the iterator is not exhausted)"
            )
        super().__init__(params, defaults)
        self.skipped_steps = 0
        self._micro = 0  # micro-steps accumulated so far (accumulate_steps > 1)
        self._step_info: dict[str, Any] = {}  # per-step values shared by all groups
        self._last_chains: dict[int, tuple] = {}  # id(group) -> the chain its state was made for
        self._said_native = False  # compile=True met torch's fused kernel (said once, at INFO)
        self._native_seen: dict[int, list] = {}  # id(group) -> what _native_of decided
        self._sizes: dict[int, tuple] = {}  # id(group) -> (params, count, large) (see _large)
        self._plans: dict[int, _Plan] = {}  # id(group) -> the last eager step's bucket (see _planned)
        self._chains: dict[int, tuple] = {}  # id(group) -> (group, its values, its chain) (see _chain)
        self._packed_steps: dict[int, dict] = {}  # id(group) -> {id(first state): (vector, views)} (_advance_steps)
        self._engine = None  # compiled/flat engine, created on demand (see optimlab._flat)
        if self._precision is not None:
            self._precision.check(self)
        self._start_probes()

    def _start_probes(self) -> None:
        """Start Inductor's probes of the CPU (a thread: ``optimlab._flat._IsaProbe``) now when
        the first step will compile a kernel for CPU parameters -- the decision of
        :meth:`_step_group`, taken on every parameter (none has a gradient yet) -- so that
        they run during the first forward and backward pass instead of the first step
        (~3 s of C++ builds with an empty Inductor cache). Only a head start: nothing here
        may fail the constructor (the first step decides again)."""
        if self.compile is False:
            return
        try:
            from ._flat import _ISA_PROBE, _chain_ok

            for group in self.param_groups:
                if group.get("differentiable") or not any(p.device.type == "cpu" for p in group["params"]):
                    continue
                if self._precision is None and self._native_of(group) is not None:
                    continue  # (torch's fused kernel steps it)
                if (self.compile is True or group.get("fused") or self._large(group)) and _chain_ok(self._chain(group)):
                    _ISA_PROBE.start()
                    return
        except Exception:  # noqa: BLE001 - a head start only
            pass

    #: update once every ``accumulate_steps`` calls to ``step`` with the mean gradient
    accumulate_steps = 1
    #: skip (and count) a step whose gradients are not all finite
    skip_nonfinite = False
    #: False: complex parameters are refused when stepped (torch's Adafactor and Muon raise then)
    complex_params = True
    #: whether the chain handles sparse gradients (SparseAdam); others refuse them clearly
    sparse_gradients = False
    #: the low-precision options that act on this optimizer (the registry lists them):
    #: ``state_dtype`` and ``state_bits`` act where the chain keeps moments (``moment_state``)
    low_precision = ("state_dtype", "state_bits", "param_rounding")
    #: whether sparse gradients are accepted by stepping with their dense form (SGD, Adagrad:
    #: the same numbers as torch's sparse paths, at the cost of a dense pass over the parameter)
    densify_sparse_gradients = False

    def _check_sparse(self, g: Tensor, group: dict) -> Tensor:
        """A sparse gradient about to be densified (subclasses refuse options torch refuses)."""
        return g

    # -- what subclasses provide ----------------------------------------------------------------
    def build(self, group: dict) -> Sequence[Transform]:
        """The chain for one param group (default: the fixed chain given to ``__init__``)."""
        if self._fixed_chain is None:
            raise NotImplementedError(f"{type(self).__name__} must override build(group)")
        return self._fixed_chain

    def native(self, group: dict) -> Callable | None:
        """torch's own kernel for this group's step, where it computes exactly the chain (Adam,
        AdamW, SGD, Adagrad with none of optimlab's extras): a callable
        ``(params, grads, states, step) -> bool`` that steps one bucket (and advances its step
        counts) or returns False to leave it to the chain. None: always the chain."""
        return None

    def check_group(self, group: dict) -> None:
        """Validate a group's hyperparameters (subclasses extend; raise ValueError naming the
        argument and its value)."""
        for key in ("lr",):
            if key in group:
                check_nonneg(key, group[key])
        if group.get("differentiable") and self.__dict__.get("_precision") is not None:
            raise ValueError(f"differentiable=True cannot be combined with {self._precision}: rounding and "
                             "quantization have no useful gradient; drop one of them")

    # -- param groups ---------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        # keys the optimizer does not read are kept, as torch keeps them (frameworks and users
        # store their own tags there); see the README's "where optimlab differs from torch"
        params = param_group.get("params")
        if params is None:
            raise ValueError("param group has no 'params' entry")
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters must be an ordered collection (a list), not a set")
        params = list(params)
        for entry in params:
            p = entry[1] if isinstance(entry, tuple) and len(entry) == 2 else entry
            if not isinstance(p, Tensor):
                raise TypeError(
                    f"optimizer can only optimize Tensors, but one of the params is "
                    f"{torch.typename(p)}: {p!r:.60}"
                )
        # an empty group is accepted, as torch accepts it (ZeRO hands a rank a group with none of
        # its parameters); a parameter listed twice gets torch's warning (from torch's method)
        param_group = {**param_group, "params": params}
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self.check_group(group)
            self.build(group)
        except Exception:
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's load_state_dict ends here too (before the load post-hooks run): the loaded
        # state is made runnable in _tidy_state, so a post-hook sees it as step() will
        super().__setstate__(state)
        self.__dict__.setdefault("skipped_steps", 0)
        self.__dict__.setdefault("compile", False)
        self.__dict__.setdefault("_said_native", False)
        self._native_seen = {}
        self._sizes = {}
        self._plans = {}
        self._chains = {}
        self._packed_steps = {}
        for k in ("state_dtype", "state_bits", "param_rounding", "_precision"):
            self.__dict__.setdefault(k, None)
        self.__dict__.setdefault("_micro", 0)
        d = self.__dict__
        d.setdefault("_count_map", d.pop("_counts", {}))  # (a pickle of an older optimlab: "_counts")
        d.setdefault("_pending_counts", {})
        self._step_info = {}
        self._last_chains = {}
        self._engine = None
        self._tidy_state()

    def __getstate__(self) -> dict[str, Any]:
        self._counts  # (writes the native steps' pending counts)
        state = super().__getstate__()
        state = dict(state, **{k: v for k, v in self.__dict__.items() if k not in state})
        state["_engine"] = None
        state["_native_seen"] = {}  # closures over the groups: remade on the next step
        state["_sizes"] = {}
        state["_plans"] = {}
        state["_chains"] = {}
        state["_packed_steps"] = {}  # (packed again by the next native step)
        return state

    # -- state_dict: torch's format; optimlab's extras under one key torch ignores --------------
    #: whether per-parameter state holds torch's ``step`` (a 0-d tensor). torch's SGD and Muon
    #: keep no count; for them (False) the counts live in ``_counts`` and the state_dict's
    #: ``"optimlab"`` entry.
    state_step = True
    #: True: ``state["step"]`` is a Python int (torch's SparseAdam), not a 0-d tensor
    step_as_int = False

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        extra: dict[str, Any] = {"skipped_steps": self.skipped_steps, "micro_steps": self._micro}
        if not self.state_step:
            index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
            extra["steps"] = {index[id(p)]: int(n) for p, n in self._counts.items() if id(p) in index}
        sd["optimlab"] = extra
        # masks as plain data, so that torch.load(weights_only=True) reads the checkpoint
        for g in sd["param_groups"]:
            if isinstance(g.get("decay_mask"), Mask):
                g["decay_mask"] = dataclasses.asdict(g["decay_mask"])
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``; also takes torch.optim's state_dicts (and int steps)."""
        self._loading = state_dict.get("optimlab", {})
        # the state as stored: torch casts every tensor to its parameter's dtype, which would
        # turn 8-bit codes into floats and round float32 moments kept for 16-bit parameters
        ids = [i for g in state_dict.get("param_groups", ()) for i in g["params"]]
        saved = state_dict.get("state", {})
        self._loaded_state = [{k: v for k, v in saved[i].items() if isinstance(v, Tensor)}
                              if isinstance(saved.get(i), dict) else {} for i in ids]
        try:
            super().load_state_dict(state_dict)
        finally:
            self._loading = self._loaded_state = None

    def _tidy_state(self) -> None:
        """Make loaded (or unpickled) state runnable: optimlab's options that a torch.optim
        state_dict lacks get their defaults, steps become tensors (torch's ``__setstate__``
        does the same), ``None`` entries (torch's SGD buffers before the first step) go."""
        extra = self.__dict__.get("_loading")
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)
            self.check_group(group)
        params = [p for g in self.param_groups for p in g["params"]]
        if extra is not None:
            self.skipped_steps = extra.get("skipped_steps", 0)
            self._micro = extra.get("micro_steps", 0)
            self._counts = {}
            steps = {int(i): int(n) for i, n in extra.get("steps", {}).items()}
            for i, p in enumerate(params):
                if i in steps:
                    self._counts[p] = steps[i]
        for p in params:
            st = self.state.get(p)
            if not isinstance(st, dict):
                continue
            for k in [k for k, v in st.items() if v is None]:
                del st[k]
            step = st.get("step")
            if self.state_step and self.step_as_int:
                if isinstance(step, Tensor):
                    st["step"] = int(step.item())
            elif self.state_step:
                if step is not None and not isinstance(step, Tensor):
                    st["step"] = torch.tensor(float(step), dtype=step_dtype())
                elif st and step is None:  # state from an optimizer that keeps no count
                    st["step"] = torch.tensor(1.0, dtype=step_dtype())
            else:
                if step is not None:  # a checkpoint that kept the count in the state
                    self._counts[p] = int(st.pop("step"))
                elif st and p not in self._counts:  # torch's SGD: its state has started
                    self._counts[p] = 1
        self._hold_state(self.__dict__.get("_loaded_state"))

    def _hold_state(self, loaded: list[dict] | None) -> None:
        """Bring every parameter's state to what this optimizer holds (``state_dtype``,
        ``state_bits``, ``param_rounding``): a state_dict saved with other settings loads."""
        i = 0
        for group in self.param_groups:
            moments = None
            for p in group["params"]:
                raw = loaded[i] if loaded and i < len(loaded) else None
                i += 1
                st = self.state.get(p)
                if not isinstance(st, dict) or not st or (self._precision is None and not is_held(st)):
                    continue
                if moments is None:
                    moments = _moments(self._chain(group))
                hold_state(p, st, moments, self._precision, raw)

    # -- step counts ----------------------------------------------------------------------------
    @property
    def _counts(self) -> dict[Tensor, int | Tensor]:
        """The step counts the optimizer keeps itself where torch keeps none (``state_step``
        False: SGD's, Muon's), by parameter: Python ints, or 0-d tensors once a step was traced.
        Reading it first writes the counts that torch's-own-kernel steps left pending (see
        :meth:`_ready_for_native`) and forgets those runs, so every other reader sees exact
        counts and the next native step checks them again."""
        d = self.__dict__
        pending = d["_pending_counts"]
        if pending:
            counts = d["_count_map"]
            for params, n in pending.values():
                for p in params:
                    counts[p] += n
            pending.clear()
        return d["_count_map"]

    @_counts.setter
    def _counts(self, value: dict) -> None:
        self.__dict__["_count_map"] = value
        self.__dict__["_pending_counts"] = {}

    def _step_of(self, p: Tensor, st: dict) -> int | None:
        """How many steps ``p`` has taken (None: its state does not exist yet)."""
        step = self._counts.get(p) if not self.state_step else st.get("step")
        return None if step is None else int(step)

    def _set_steps(self, params: list[Tensor], states: list[dict], step: int) -> None:
        if not self.state_step:  # ints, or 0-d tensors once a step was traced (see _traced_step_group)
            counts = self._counts
            for p in params:
                c = counts.get(p)
                if isinstance(c, Tensor):
                    c.fill_(step)
                else:
                    counts[p] = step
            return
        if self.step_as_int:
            for st in states:
                st["step"] = step
            return
        held = []
        for st in states:
            t = st.get("step")
            if not isinstance(t, Tensor):
                st["step"] = torch.tensor(float(step), dtype=step_dtype())
            elif t.is_cpu:
                held.append(t)
            else:
                t.fill_(step)
        _fill_cpu(held, step)

    def _advance_steps(self, group: dict, states: list[dict]) -> list[Tensor]:
        """Add 1 to the step counts of ``states`` and return them (0-d float32 tensors on the
        parameters' device, as torch's fused kernels take them). The counts are held as 0-d
        views of one vector, so that this is one op instead of a foreach over every tensor
        (~280 us on 196 tensors on a CPU: 1.5 % of a fused Adam step on 25 M parameters). A
        group whose parameters step in several kernel calls (devices, dtypes) holds a vector
        per call, keyed by the call's first state. A count that is not the view held (a loaded
        state_dict, an assignment, another set of parameters) packs them again; a view's own
        value is its parameter's count, as before."""
        steps = [st["step"] for st in states]
        held = self._packed_steps.setdefault(id(group), {})
        packed = held.get(id(states[0]))
        if packed is None or len(packed[1]) != len(steps) or not all(map(operator.is_, packed[1], steps)):
            if len(steps) < 2 or any(t.ndim for t in steps):
                torch._foreach_add_(steps, 1)
                return steps
            vector, steps = pack_counts(states, "step")
            held.pop(id(states[0]), None)
            if len(held) >= 8:  # (parameters whose gradients come and go: keep the latest calls')
                del held[next(iter(held))]
            held[id(states[0])] = packed = (vector, steps)
        packed[0].add_(1)
        return steps

    # -- the step -------------------------------------------------------------------------------
    def _chain(self, group: dict) -> tuple[Transform, ...]:
        """The group's chain: built again only when a value of the group is a new object (a
        chain is a function of the group's values; building one costs ~7 us, twice a step on
        the compiled path)."""
        if torch.compiler.is_compiling():  # (a traced step: no host-side cache to guard on)
            return tuple(self.build(group))
        got = self._chains.get(id(group))
        # a group without list values (but its parameters): every value the same object as
        # when the chain was built (one C-level pass, ~1 us instead of ~5)
        if got is not None and got[0] is group and got[3] is not None and len(group) == len(got[3]) \
                and all(map(operator.is_, group.values(), got[3])):
            return got[2]
        # a list value is compared by its contents (it may be edited in place); others by identity
        values = tuple(tuple(v) if type(v) is list and k not in ("params", "param_names") else v
                       for k, v in group.items())
        if (got is not None and got[0] is group and len(got[1]) == len(values)
                and all(a is b or (type(a) is tuple and type(b) is tuple and a == b) for a, b in zip(values, got[1]))):
            if got[3] is not None:  # (an equal tuple put in: the fast check compares the new one)
                self._chains[id(group)] = (group, values, got[2], tuple(group.values()))
            return got[2]
        chain = tuple(self.build(group))
        if len(self._chains) > 2 * len(self.param_groups) + 8:  # (sub-groups of layouts rebuilt since)
            self._chains = {}
        lists = any(a is not b for a, b in zip(values, group.values()))  # (a list value, copied above)
        self._chains[id(group)] = (group, values, chain, None if lists else tuple(group.values()))
        return chain

    def _lr(self, group: dict) -> float | None:
        if self.lr_key is None:
            return None
        lr = group[self.lr_key]
        if isinstance(lr, Tensor):  # a tensor lr on the graph stays one (differentiable=True)
            return lr.reshape(()) if lr.requires_grad and torch.is_grad_enabled() else lr.item()
        return lr

    def step(self, closure: Callable[[], Any] | None = None):
        """Perform one optimization step; returns the closure's loss (if a closure is given).

        With ``differentiable=True`` the update is recorded by autograd (torch's rule: the step
        runs with gradients enabled, on the per-tensor eager path), so meta-learning code can
        differentiate through it; otherwise it runs under ``no_grad``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.defaults.get("differentiable", False):
            with torch.no_grad():
                self._step()
            return loss
        # the transforms update state in place; autograd keeps a copy of every value it saves
        # for the backward pass as it is saved, so later in-place writes cannot invalidate it
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_keep_copy, _same):
            self._step()
        return loss

    def _step(self) -> None:
        if self.accumulate_steps > 1 and not self._accumulate():
            return
        if self._prestep():
            for group in self.param_groups:
                self._step_group(group)
        if self.accumulate_steps > 1:
            for st in self.state.values():
                if isinstance(st, dict):
                    st.pop("grad_accum", None)

    def _accumulate(self) -> bool:
        """Add this micro-step's gradients to ``state[p]['grad_accum']``; True once
        ``accumulate_steps`` of them are in (the buffers then hold their mean)."""
        k = self.accumulate_steps
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "grad_accum" in st:
                    st["grad_accum"].add_(p.grad)
                else:
                    st["grad_accum"] = p.grad.detach().clone()
        self._micro += 1
        if self._micro < k:
            return False
        self._micro = 0
        for st in self.state.values():
            if isinstance(st, dict) and "grad_accum" in st:
                st["grad_accum"].div_(k)
        return True

    def _grad(self, p: Tensor) -> Tensor | None:
        """The gradient this step uses: ``p.grad``, or the accumulated mean."""
        if self.accumulate_steps > 1:
            st = self.state.get(p)
            return None if st is None else st.get("grad_accum")
        return p.grad

    def _prestep(self) -> bool:
        """Hook for whole-optimizer decisions before any group moves (non-finite skipping,
        global-norm clipping). Returns False to skip the step."""
        return True

    def _large(self, group: dict) -> bool:
        """Whether the group holds enough elements for ``compile=None`` to compile a bucket of
        it (:func:`optimlab._flat.auto_min_numel`); counted again when its parameter list
        changes, so a small model's step never looks at the compiled engine."""
        params = group["params"]
        seen = self._sizes.get(id(group))
        if seen is None or seen[0] is not params or seen[1] != len(params):
            from ._flat import auto_min_numel

            seen = self._sizes[id(group)] = (params, len(params), sum(p.numel() for p in params) >= auto_min_numel(self))
        return seen[2]

    def _native_of(self, group: dict) -> Callable | None:
        """:meth:`native` for the group, remembered while the group holds the same value objects
        (compared by identity; a scheduler's new ``lr`` is a new object): deciding it reads
        every hyperparameter, ~8 us a step. The native step reads the values when called."""
        if type(self).native is ChainOptimizer.native:  # (no kernel of torch's to look for)
            return None
        seen = self._native_seen.get(id(group))
        values = tuple(group.values())
        if seen is not None and len(seen[0]) == len(values) and all(map(operator.is_, seen[0], values)):
            return seen[1]
        native = self.native(group)
        # [values, native, whether the state is known to be made for the chain of these values]
        self._native_seen[id(group)] = [values, native, False]
        return native

    def _ready_for_native(self, group: dict) -> tuple[list, list, list, list | None] | None:
        """``(params, grads, states, counts)`` of a group whose every parameter with a gradient already
        has its state, for the chain the state was made for -- what torch's own kernel needs,
        without :meth:`_gather`'s per-parameter host work (reading each step count, bucketing):
        ~1.5 ms a step on 200 tensors, 7 % of a fused Adam step on 25 M parameters. None: the
        general path decides (new state, a chain that changed, accumulated gradients, a step
        count of the optimizer's own that is still 0 or a traced step's tensor). The native
        step is then called with ``count`` None and advances each parameter's count; ``counts``
        is the run ``[params, steps not yet written]`` whose count the caller advances where the
        optimizer keeps the counts itself (``state_step=False``; see :attr:`_counts`), else None."""
        if self.accumulate_steps > 1:
            return None
        seen = self._native_seen.get(id(group))
        if not (seen and seen[2]) and self._last_chains.get(id(group)) != self._chain(group):
            return None
        params, grads, states = [], [], []
        get_state, need_step = self.state.get, self.state_step
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            st = get_state(p)
            if not st or (need_step and "step" not in st):
                return None
            params.append(p)
            grads.append(g)
            states.append(st)
        if not params or self.state_step:
            return (params, grads, states, None) if params else None
        # the counts the optimizer keeps itself (SGD's). A tensor key's hash is a Python call
        # (~0.1 us; 2 % of a small model's fused SGD step to read and write each count), so a
        # run of native steps over the same parameters, whose counts were checked when it
        # started, only counts its steps: the counts are written when next read (_counts)
        run = self.__dict__["_pending_counts"].get(id(group))
        if run is not None and len(params) == len(run[0]) and all(map(operator.is_, params, run[0])):
            return params, grads, states, run
        get_count = self._counts.get  # (writes and forgets the pending runs)
        if any(type(c) is not int or c < 1 for c in map(get_count, params)):
            return None
        return params, grads, states, [params, 0]

    def _gather(self, group: dict):
        """Parameters with a gradient, their names and state, bucketed by step count and host
        state (parameters whose histories differ -- one skipped a step -- never share scalars)."""
        names = group.get("param_names")
        buckets: dict[tuple, tuple[list, list, list, list]] = {}
        chain = self._chain(group)
        # a chain that changed since the last step (a hyperparameter switched a transform on,
        # e.g. momentum 0 -> 0.9) gets its missing state created for every parameter
        changed = self._last_chains.get(id(group)) != chain
        self._last_chains[id(group)] = chain
        for i, p in enumerate(group["params"]):
            g = self._grad(p)
            if g is None:
                continue
            if not self.complex_params and p.is_complex():
                raise RuntimeError(f"{type(self).__name__} does not support complex parameters (got one of shape "
                                   f"{tuple(p.shape)}); optimise torch.view_as_real(p) instead")
            if g.is_sparse and self.densify_sparse_gradients:
                # torch's SGD and Adagrad take sparse gradients; their update equals the dense
                # one (Adagrad's accumulator and step are unchanged where the gradient is 0)
                g = self._check_sparse(g, group).to_dense()
            elif g.is_sparse and not self.sparse_gradients:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients (parameter "
                    f"{names[i] if names else tuple(p.shape)}); use optimlab.SparseAdam or "
                    "torch.optim.SparseAdam for sparse embeddings"
                )
            st = self.state[p]
            step = self._step_of(p, st)
            if step is None and st and not self.state_step:
                step = 1  # state given without a count (SGD's buffer, torch's rule): it has started
                self._set_steps([p], [st], 1)
            elif step is not None and not st and not self.state_step and any(t.init(p, group) for t in chain):
                step = None  # a count of ours outlived its state (opt.state.clear()): start afresh, as torch
            if step is None or changed:
                if step is None:
                    step = 0
                    self._set_steps([p], [st], 0)
                for t in chain:
                    for k, v in t.init(p, group).items():
                        st.setdefault(k, v)
                if self._precision is not None:
                    hold_state(p, st, _moments(chain), self._precision)
                if not st:  # nothing to keep (SGD without momentum): torch keeps no entry
                    del self.state[p]
            key = (step, *(host_float(st.get(k)) for t in chain for k in t.host_keys))
            b = buckets.setdefault(key, ([], [], [], []))
            b[0].append(p)
            b[1].append(g)
            b[2].append(st)
            b[3].append(names[i] if names else None)
        return chain, buckets

    def _init_group(self, group: dict) -> None:
        """Create the missing state of the group's parameters that have a gradient, with 0-d
        tensor step counts (also where torch keeps none: ``_counts``). ``torch.compile`` runs a
        method of this name eagerly when it traces a step (as for torch.optim's optimizers), so
        the traced step finds the state there from the first call on."""
        chain = self._chain(group)
        for p in group["params"]:
            if self._grad(p) is None:
                continue
            st = self.state[p]
            if self._step_of(p, st) is None:
                self._set_steps([p], [st], 0)
                for t in chain:
                    for k, v in t.init(p, group).items():
                        st.setdefault(k, v)
            for t in chain:  # host-side history as the 0-d tensors the eager path keeps after a step
                for k in t.host_keys if t.traces_host else ():
                    if not isinstance(st.get(k), Tensor):
                        st[k] = torch.tensor(float(st[k]), dtype=step_dtype())
            if not self.state_step and not isinstance(self._counts[p], Tensor):
                self._counts[p] = torch.tensor(float(self._counts[p]), dtype=step_dtype())
            if not st:  # nothing to keep (SGD without momentum): torch keeps no entry
                del self.state[p]

    def _traced_step_group(self, group: dict) -> None:
        """The step as ``torch.compile(opt.step)`` traces it: each parameter with its own 0-d
        tensor step count, the transforms' scalars as tensor expressions of it and ``lr`` as
        given (a tensor stays one), so nothing that changes from step to step is a Python number
        the compiled code would guard on -- one compilation, as torch's optimizers with a tensor
        ``lr``. The same algorithm as the eager path; scalars are computed in the step count's
        dtype instead of Python floats (rounding differences only). Host-side history (NAdam's
        momentum product, ASGD's eta and mu) is the state's 0-d tensors, updated in place by
        tensor maths (``Transform.traces_host``); transforms that cannot (schedule-free's
        history) break the graph there."""
        self._init_group(group)
        chain = self._chain(group)
        names = group.get("param_names")
        lr = None if self.lr_key is None else group[self.lr_key]
        if isinstance(lr, Tensor):
            lr = lr.reshape(())
        view = {**group, **self._step_info} if self._step_info else group
        for i, p in enumerate(group["params"]):
            g = self._grad(p)
            if g is None:
                continue
            st = self.state.get(p, {})
            step = self._counts[p] if not self.state_step else st["step"]
            step.add_(1)
            state = {k: [v] for k, v in st.items() if k not in _ENGINE_KEYS}
            params, grads = [p], [g]
            if p.is_complex():  # torch's rule: a complex tensor is its real view
                params, grads = _real_views(params), _real_views(grads)
                state = {k: _real_views(v) for k, v in state.items()}
            u = Updates(params, grads, state, [names[i] if names else None], step)
            if group.get("maximize", False):
                u.replace(torch._foreach_neg(u.grads), fresh=True)
            run_chain(chain, u, [t.scalars(view, step, st) for t in chain], lr)

    def _step_group(self, group: dict) -> None:
        if torch.compiler.is_compiling() and not group.get("differentiable"):
            if any(t.host_keys and not t.traces_host for t in self._chain(group)):  # eager (a graph break)
                return _run_eagerly(self._step_group, group)
            return self._traced_step_group(group)
        if group.get("fused"):
            _check_fused(group)
        # torch's fused kernel where it is the same algorithm -- also under compile=True: it is
        # one pass over memory already, and no slower than the compiled kernel on any layout
        # (README, "Speed"); fused=False asks for the compiled kernel. With low-precision options
        # torch's kernels are not used (they hold full precision); the compiled kernel does them
        # (see optimlab._flat)
        lowp = self._precision
        native = None if group.get("differentiable") or lowp else self._native_of(group)
        if native is not None and self.compile is True and not self._said_native:
            self._said_native = True
            _log.info("%s(compile=True): the chain is torch's fused kernel; that kernel runs the step, "
                      "nothing is compiled (fused=False compiles the chain)", type(self).__name__)
        if (native is None and (self.compile is True or group.get("fused")
                                or (self.compile is None and self._large(group)))
                and not group.get("differentiable")):
            # the flat-buffer engine runs what it can; the rest (or all) comes back for eager
            group = self._flat_engine().step_group(self, group)
            if group is None:
                return
        if native is not None:
            ready = self._ready_for_native(group)
            if ready is not None and native(*ready[:3], None):
                self._native_seen[id(group)][2] = True  # (the chain is the one the state was made for)
                if ready[3] is not None:  # the counts the optimizer keeps itself, advanced
                    ready[3][1] += 1
                    self._pending_counts[id(group)] = ready[3]
                return
        plain = native is None and lowp is None and not torch.is_grad_enabled()
        planned = self._planned(group) if plain else None
        if planned is not None:  # the same bucket as the last step (see _planned)
            plan, grads = planned
            self._step_bucket(group, plan.chain, plan.step - 1, plan.params, grads, plan.states, plan.names, plan)
            return
        chain, buckets = self._gather(group)
        for (step, *_), (params, grads, states, names) in buckets.items():
            if native is not None and native(params, grads, states, step):
                continue
            keys = self._step_bucket(group, chain, step, params, grads, states, names)
            if plain and len(buckets) == 1 and keys is not None:
                self._plan(group, chain, step, params, states, names, keys)

    def _step_bucket(self, group, chain, step, params, grads, states, names, plan: _Plan | None = None) -> tuple | None:
        """One bucket's eager step (its parameters share the step count ``step``). Returns the
        state keys handed to the chain, or None where the bucket is not one to plan (complex).
        ``plan``: the bucket's :class:`_Plan` where :meth:`_planned` found it unchanged (its
        state keys, step tensors and size are then known)."""
        lowp = self._precision
        if plan is not None and plan.steps is not None:  # (CPU step tensors, known: one foreach copy)
            _fill_cpu(plan.steps, step + 1)
        elif plan is not None and not self.state_step:
            # counts kept by the optimizer (Muon's): a run of planned steps only counts its
            # steps, written when the counts are next read, as torch's-kernel runs are (see
            # _ready_for_native; a tensor key's hash is a Python call per parameter)
            run = self._planned_run(group, plan)
            if run is not None:
                run[1] += 1
            else:
                self._set_steps(params, states, step + 1)
                counts = self.__dict__["_count_map"]
                if all(type(counts.get(p)) is int for p in params):
                    self.__dict__["_pending_counts"][id(group)] = [plan.params, 0]
        else:
            self._set_steps(params, states, step + 1)
        if plan is not None:
            keys = plan.keys
        else:
            keys = tuple(dict.fromkeys(k for st in states for k in st
                                       if k not in _ENGINE_KEYS and (lowp is None or not is_aux(k))))
        state = {k: [st.get(k) for st in states] for k in keys}
        complex_ = plan is None and any(p.is_complex() for p in params)
        if complex_:  # torch's rule: a complex tensor is its real view (its state stays full precision)
            params, grads = _real_views(params), _real_views(grads)
            state = {k: _real_views(v) for k, v in state.items()}
        scalars = self._scalars(chain, group, step + 1, states)  # once: host state advances
        maximize, lr = group.get("maximize", False), self._lr(group)
        for sel in (None,) if plan is not None and plan.whole else _pieces(chain, params, grads, state):
            write_back = None
            if lowp is None or complex_:
                u = Updates(*_take(sel, params, grads, state, names), step + 1)
            else:  # float32 working tensors of the piece, written back after the step
                piece, write_back = lowp.piece(sel, params, grads, states, keys, names)
                u = Updates(*piece, step + 1)
            if maximize:
                u.replace(torch._foreach_neg(u.grads), fresh=True)
            run_chain(chain, u, scalars, lr)
            if write_back is not None:
                write_back()
        return None if complex_ else keys

    def _plan(self, group, chain, step, params, states, names, keys) -> None:
        """Remember a group's one bucket after an eager step, for :meth:`_planned`."""
        # a param group, or the part of one the flat engine leaves to this path every step
        if any(g is group for g in self.param_groups) or (self._engine is not None and self._engine.holds(group)):
            if len(self._plans) > 2 * len(self.param_groups):  # (sub-groups of layouts rebuilt since)
                self._plans = {k: v for k, v in self._plans.items() if any(g is v.group for g in self.param_groups)}
            steps = [st.get("step") for st in states] if self.state_step else None
            if not (steps and all(type(t) is Tensor and t.dim() == 0 and t.device.type == "cpu"
                                  and t.dtype == steps[0].dtype for t in steps)):
                steps = None
            self._plans[id(group)] = _Plan(group, list(group["params"]),
                                           chain, step + 1, [p.grad is not None for p in group["params"]],
                                           params, states, names, keys, self.state, len(self.state),
                                           steps, sum(p.numel() for p in params) <= 2 * PIECE)

    def _planned(self, group: dict) -> tuple[_Plan, list] | None:
        """The plan and this step's gradients, for a group stepping as it did last time --
        the same parameters with a gradient (dense, real), the same chain, their state objects
        unchanged and all at the count the last step left -- without :meth:`_gather`'s
        per-parameter host work (reading each step count, bucketing, ~3 us a tensor: a third
        of a small model's RMSprop step). None: :meth:`_gather` decides."""
        plan = self._plans.get(id(group))
        if (plan is None or plan.group is not group or self.accumulate_steps > 1 or plan.state_obj is not self.state
                or plan.n_state != len(self.state)):
            return None
        listed = group["params"]
        if len(listed) != len(plan.listed) or not all(map(operator.is_, listed, plan.listed)):
            return None
        grads = [p.grad for p in listed]
        if [g is not None for g in grads] != plan.has_grad:
            return None
        if len(plan.params) != len(grads):
            grads = [g for g in grads if g is not None]
        if any(g.is_sparse for g in grads):
            return None
        if self._chain(group) != plan.chain:  # (the group's chain, remembered while its values are)
            return None
        # the count the last step left (a traced step, a loaded or edited state changes it)
        if self.state_step:
            if plan.steps is None or plan.states[0].get("step") is not plan.steps[0] or plan.steps[0].item() != plan.step:
                return None
        elif self._planned_run(group, plan) is None and self._counts.get(plan.params[0]) != plan.step:
            return None
        plan.step += 1
        return plan, grads

    def _planned_run(self, group: dict, plan: _Plan) -> list | None:
        """The pending run of planned steps over ``plan``'s parameters (see :meth:`_step_bucket`;
        their counts are the plan's while it is pending), or None."""
        run = self.__dict__["_pending_counts"].get(id(group))
        return run if run is not None and run[0] is plan.params else None

    def _flat_engine(self):
        """The flat-buffer engine (:mod:`optimlab._flat`), created on first use."""
        if self._engine is None:
            from ._flat import FlatEngine

            self._engine = FlatEngine()
        return self._engine

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; with flat buffers, ``set_to_none=False`` zeroes each flat
        gradient buffer in one call (see :mod:`optimlab._flat`)."""
        if self._engine is None:
            super().zero_grad(set_to_none)
        else:
            self._engine.zero_grad(self, set_to_none)

    def _scalars(self, chain, group, step, states, store=None) -> list[dict]:
        """Every transform's host-side scalars for one bucket (and its host state, shared;
        written by ``store``, :func:`store_host` by default)."""
        store = store or store_host
        # (a ChainMap lookup is a Python call: ~0.5 us per hyperparameter read, every step)
        view = collections.ChainMap(self._step_info, group) if self._step_info else MappingProxyType(group)
        out = []
        for t in chain:
            if not t.host_keys:
                out.append(t.scalars(view, step, states[0]))
                continue
            # the transform does its host maths in Python floats; the state keeps 0-d tensors,
            # as torch keeps NAdam's mu_product and ASGD's eta and mu
            host = {k: _host_value(states[0].get(k)) for k in t.host_keys}
            out.append(t.scalars(view, step, host))
            for k in t.host_keys:
                store(states, k, host[k])
        return out

    # -- diagnostics (optimlab.diagnostics) ----------------------------------------------------
    def track_diagnostics(self, every: int = 1, writer=None):
        """Record :meth:`diagnostics` every ``every`` steps, also to ``writer.add_scalar`` (a
        TensorBoard ``SummaryWriter``); returns the tracker (``history``, ``close()``)."""
        from .diagnostics import track

        return track(self, every, writer)

    def diagnostics(self) -> list[dict]:
        """Per param group: gradient, parameter and update norms (total and per layer), the
        update/parameter ratio, adaptive methods' effective learning rate, the fraction of steps
        clipped or skipped -- see :mod:`optimlab.diagnostics`."""
        from .diagnostics import read

        return read(self)


def _run_eagerly(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` outside what ``torch.compile`` traces (called while tracing: Dynamo is loaded)."""
    return torch._dynamo.disable(fn)(*args)


#: device types where ``fused=True`` runs (torch's list for its fused kernels)
_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu")


def _check_fused(group: dict) -> None:
    """torch's check for ``fused=True``: floating-point parameters on a supported device."""
    for p in group["params"]:
        if p.grad is not None and (p.device.type not in _FUSED_DEVICES or not torch.is_floating_point(p)):
            raise RuntimeError(
                f"`fused=True` requires all the params to be floating point Tensors of supported "
                f"devices: {list(_FUSED_DEVICES)} but got a {p.dtype} parameter on {p.device}; "
                "move the model to one of them (model.to_empty(device=...) for a meta-device model) "
                "or drop fused=True"
            )


def traced_host(host: dict, key: str) -> Tensor | None:
    """The host-side entry ``key`` as the state's own 0-d tensor when ``torch.compile(opt.step)``
    traces the step (a transform with ``traces_host`` then updates it in place with tensor
    maths); None on the eager path, where ``host`` holds Python numbers (or, for a
    differentiable step, a tensor on the graph, never written in place)."""
    v = host.get(key)
    if isinstance(v, Tensor) and torch.compiler.is_compiling() and not v.requires_grad:
        return v
    return None


def host_float(v: Any) -> float | None:
    """A host-side scalar state entry (a 0-d tensor, or a float before the first step) as a float."""
    if isinstance(v, Tensor):
        return v.item()
    return None if v is None else float(v)


def _host_value(v: Any) -> float | Tensor | None:
    """What a transform's ``scalars`` sees of a host-side entry: a float, or -- when the step is
    differentiated (``differentiable=True``) and the entry is on the graph -- the tensor itself."""
    if isinstance(v, Tensor) and v.requires_grad and torch.is_grad_enabled():
        return v
    return host_float(v)


def pack_counts(states: list[dict], key: str) -> tuple[Tensor, list[Tensor]]:
    """Make ``key``'s 0-d tensors in ``states`` (one dtype and device) 0-d views of one vector,
    returned with the views: one op then writes or advances them all, and each view is still
    its own state's value (the native step's counts, a flat bucket's counters)."""
    vector = torch.stack([st[key] for st in states])
    views = list(vector.unbind())
    for st, view in zip(states, views):
        st[key] = view
    return vector, views


def store_host(states: list[dict], key: str, value: float | Tensor) -> None:
    """Write a host-side scalar into every state of a bucket as a 0-d tensor (in place where
    one is there, so nothing is shared between parameters; a tensor on the graph as it is)."""
    if isinstance(value, Tensor):
        for st in states:
            st[key] = value
        return
    held = []  # the 0-d CPU tensors to write in place: in one foreach copy where there are several
    for st in states:
        t = st.get(key)
        if isinstance(t, Tensor) and t.dim() == 0 and not t.requires_grad:
            if t.is_cpu:
                held.append(t)
            else:  # (on an accelerator a fill is an asynchronous launch; a source tensor, a copy)
                t.fill_(value)
        else:
            st[key] = torch.tensor(value, dtype=step_dtype())
    _fill_cpu(held, value)


def _fill_cpu(tensors: list[Tensor], value: float) -> None:
    """``t.fill_(value)`` for every 0-d CPU tensor of the list: one foreach copy from a float64
    source (the same rounding as ``fill_``'s) where there are several."""
    if len(tensors) < 3:
        for t in tensors:
            t.fill_(value)
        return
    src = torch.tensor(value, dtype=torch.float64)
    torch._foreach_copy_(tensors, [src] * len(tensors))


#: the eager path runs an elementwise chain over pieces of about this many entries (whole small
#: tensors together, large ones in slices), so that the chain's passes over a piece find it in
#: cache -- what torch's per-tensor for-loop gets, without its per-tensor Python overhead
PIECE = 1 << 18


def _pieces(chain, params: list, grads: list, state: dict):
    """The bucket a cache-sized piece at a time, as selections: None (everything at once: small
    buckets, chains with a transform that is neither elementwise nor ``per_tensor``, and
    differentiable steps) or a list of ``(i, a, b)`` -- entries ``a:b`` of the i-th tensor, or
    all of it for ``a`` None (see :func:`_take`). A chain with ``per_tensor`` transforms steps
    in whole tensors."""
    if (sum(p.numel() for p in params) <= 2 * PIECE or torch.is_grad_enabled()
            or not all(t.elementwise or t.per_tensor for t in chain)):
        yield None
        return
    # a mask selects by name and shape: only whole tensors may go to a masked chain, and a
    # tensor's own reductions need all of it
    sliceable = not any(getattr(t, "mask", None) is not None or not t.elementwise for t in chain)
    keys = list(state)
    idx: list[tuple] = []
    size = 0
    for i, p in enumerate(params):
        n = p.numel()
        g = grads[i]
        if (sliceable and n > 2 * PIECE and p.is_contiguous() and g.is_contiguous() and g.shape == p.shape
                and all(not isinstance(v, Tensor) or v.shape != p.shape or v.is_contiguous()
                        for v in (state[k][i] for k in keys))):
            for a in range(0, n, PIECE):
                yield [(i, a, a + PIECE)]
            continue
        idx.append((i, None, None))
        size += n
        if size >= PIECE:
            yield idx
            idx, size = [], 0
    if idx:
        yield idx


def _take(sel, params, grads, state, names):
    """``(params, grads, state, names)`` lists of a selection from :func:`_pieces` (a slice
    of a tensor slices the state entries shaped like it)."""
    if sel is None:
        return params, grads, state, names
    if len(sel) == 1 and sel[0][1] is not None:
        i, a, b = sel[0]
        p = params[i]
        return ([p.view(-1)[a:b]], [grads[i].view(-1)[a:b]],
                {k: [v[i].view(-1)[a:b] if isinstance(v[i], Tensor) and v[i].shape == p.shape else v[i]]
                 for k, v in state.items()}, [names[i]])
    idx = [i for i, _, _ in sel]
    return ([params[i] for i in idx], [grads[i] for i in idx], {k: [v[i] for i in idx] for k, v in state.items()},
            [names[i] for i in idx])


def _moments(chain) -> dict[str, bool]:
    """The chain's moment state entries (``Transform.moment_state``): key -> never negative."""
    return {k: v for t in chain for k, v in t.moment_state.items()}


def _keep_copy(t: Tensor) -> Tensor:
    return t.clone()


def _same(t: Tensor) -> Tensor:
    return t


def _real_views(xs: list) -> list:
    """Complex tensors as their real views (``torch.view_as_real``; writes go through)."""
    return [torch.view_as_real(x) if isinstance(x, Tensor) and x.is_complex() else x for x in xs]


@dataclasses.dataclass(eq=False)
class _Plan:
    """What :meth:`ChainOptimizer._planned` checks and reuses of a group's last eager step."""

    group: dict
    listed: list  # the group's parameters (a copy of the list)
    chain: tuple
    step: int  # the count the step left
    has_grad: list[bool]
    params: list
    states: list
    names: list
    keys: tuple
    state_obj: Any  # the optimizer's state mapping and its size
    n_state: int
    steps: list | None  # the parameters' 0-d step tensors (state_step; None: other counts)
    whole: bool  # small enough to step at once (see _pieces)


#: per-parameter state the engine itself keeps (not handed to transforms)
_ENGINE_KEYS = ("step", "grad_accum")


def run_chain(chain: Sequence[Transform], u: Updates, scalars: Sequence[dict], lr: Scalar | None) -> None:
    """Run every transform, apply ``p <- p - lr * u``, then the post-apply transforms.

    This is the whole numerical step: it is called as it is on the eager path, and traced by
    ``torch.compile`` over flat buffers on the compiled path.
    """
    for t, s in zip(chain, scalars):
        if u._keep is not None:  # (a decay left for the apply: a transform follows it)
            u._scale_now()
        t.update(u, s)
    u.apply(lr)
    for t, s in zip(chain, scalars):
        if t.has_after:
            t.after(u, s)
