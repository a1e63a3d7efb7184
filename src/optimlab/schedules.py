"""Schedules: hyperparameter values as pure functions of the step, and the thin classes that
apply them to an optimizer.

A *schedule* is a small frozen dataclass whose ``__call__(t)`` returns the value for step ``t``
(optax's convention). ``s(0)`` is the value of the first optimizer step and ``s(t)`` the value
after ``t`` calls to :meth:`Scheduler.step` -- torch.optim.lr_scheduler's convention, so each
schedule below equals its torch counterpart's ``group["lr"]`` step for step. Schedules hold no
state, so resuming is exact: the only thing to save is ``t``. They are plain classes (no
lambdas), so an optimizer or scheduler holding one deep-copies and pickles.

==========================================================  ================================
schedule (value at step t; ``T`` = its length)              torch.optim.lr_scheduler
==========================================================  ================================
``constant(v)``                 v                           (``ConstantLR`` = ``join`` of two)
``linear(a, b, T)``             a + (b - a) min(t, T) / T   ``LinearLR``
``step_decay(v, k, g)``         v g^floor(t / k)            ``StepLR``
``multi_step(v, ms, g)``        v g^#{m in ms : m <= t}     ``MultiStepLR``
``exponential(v, g)``           v g^t                       ``ExponentialLR``
``polynomial(v, T, p, e)``      e + (v - e)(1 - min(t, T)/T)^p   ``PolynomialLR`` (e = 0)
``cosine(v, T, e)``             e + (v - e)(1 + cos(pi min(t, T) / T)) / 2   ``CosineAnnealingLR``
``sgdr(v, T0, mult, e)``        cosine over cycles T0, T0 mult, ...   ``CosineAnnealingWarmRestarts``
``warmup(s, W, a)``             linear a -> s(0) for t < W, then s(t - W)   ``SequentialLR([LinearLR, s])``
``join([s0, s1, ...], [b1, ...])``  s_i(t - b_i) on [b_i, b_{i+1})   ``SequentialLR``
``cyclic(lo, hi, up, down, mode)``  triangular / triangular2 / exp_range  ``CyclicLR``
``one_cycle(peak, T, ...)``     1cycle (cos or linear; 2 or 3 phases)  ``OneCycleLR``
``one_cycle_momentum(T, ...)``  1cycle's inverse momentum   ``OneCycleLR(cycle_momentum=True)``
``wsd(peak, T, W, D, e)``       warmup, stable, decay (linear/cosine/1-sqrt) --
``inverse_sqrt(peak, W)``       linear warmup, then peak sqrt(W / t)   --
==========================================================  ================================

Differences from torch, on purpose: past ``T`` ``cosine`` stays at ``end`` (torch's
``CosineAnnealingLR`` climbs back up along the cosine) and ``one_cycle`` stays at its final
value (torch refuses steps beyond ``total_steps`` and extrapolates the last phase at
``t = total_steps``).

A :class:`Scheduler` sets ``group[key] = schedule(t)`` for any hyperparameter key -- ``"lr"``,
``"momentum"``, ``"weight_decay"``, or one entry of a tuple such as ``"betas[0]"`` -- of any
``torch.optim.Optimizer`` (optimlab's and torch's own). :func:`as_lambda_lr` wraps a schedule as
torch's ``LambdaLR`` for code that expects a torch scheduler. :class:`ReduceOnPlateau` lowers the
learning rate when a validation metric stops improving (torch's ``ReduceLROnPlateau`` rule).

Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017; Smith & Topin,
"Super-Convergence", 2017 (1cycle). Vaswani et al., "Attention Is All You Need", 2017 (inverse
square root). Hu et al., "MiniCPM", 2024 and Hägele et al., "Scaling Laws and Compute-Optimal
Training Beyond Fixed Training Durations", 2024 (warmup-stable-decay, 1-sqrt cooldown).

Example::

    >>> import torch, optimlab
    >>> from optimlab.schedules import Scheduler, cosine, linear, warmup
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = optimlab.SGD([w], lr=0.1, momentum=0.9)
    >>> sched = Scheduler(opt, {"lr": warmup(cosine(0.1, 900), 100),
    ...                         "momentum": linear(0.85, 0.95, 1000)})
    >>> for t in range(1000):
    ...     w.sum().backward(); opt.step(); opt.zero_grad(); sched.step()
    >>> ck = sched.state_dict()          # {'last_step': 1000}: resume with load_state_dict(ck)
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "constant",
    "linear",
    "step_decay",
    "multi_step",
    "exponential",
    "polynomial",
    "cosine",
    "sgdr",
    "warmup",
    "join",
    "cyclic",
    "one_cycle",
    "one_cycle_momentum",
    "wsd",
    "inverse_sqrt",
    "Scheduler",
    "as_lambda_lr",
    "ReduceOnPlateau",
    "PlateauState",
    "plateau_update",
]


# ---------------------------------------------------------------------------------------------
# Argument checks: name the value and say what to pass instead.
# ---------------------------------------------------------------------------------------------
def _real(name: str, value: Any, *, minimum: float | None = None, strict: bool = False, why: str = "") -> float:
    """``value`` as a float; ValueError unless it is a finite number (above ``minimum``)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number{'; ' + why if why else ''})")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        rel = ">" if strict else ">="
        raise ValueError(f"Invalid {name}: {value!r} (must be {rel} {minimum:g}{'; ' + why if why else ''})")
    return float(value)


def _int(name: str, value: Any, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {minimum}{'; ' + why if why else ''})")
    return value


def _choice(name: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"Invalid {name}: {value!r} (must be one of {', '.join(map(repr, options))})")
    return value


def _schedule(name: str, value: Any) -> Callable[[int], float]:
    if not callable(value):
        raise ValueError(f"Invalid {name}: {value!r} (must be a schedule, a callable step -> value, "
                         "e.g. optimlab.schedules.cosine(0.1, 1000))")
    return value


class Schedule:
    """Base of every schedule: a frozen dataclass whose ``__call__(t)`` gives the value at step
    ``t >= 0``. ``__post_init__`` validates and normalises the fields (numbers become floats)."""

    def __call__(self, step: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a field of a frozen dataclass


# ---------------------------------------------------------------------------------------------
# The schedules.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class constant(Schedule):
    """``value`` at every step."""

    value: float

    def __post_init__(self):
        self._set("value", _real("value", self.value))

    def __call__(self, step: int) -> float:
        return self.value


@dataclasses.dataclass(frozen=True)
class linear(Schedule):
    """``start + (end - start) min(t, steps) / steps``: from ``start`` to ``end`` in ``steps``
    steps, then ``end`` (torch's ``LinearLR`` with ``start = lr start_factor``,
    ``end = lr end_factor``)."""

    start: float
    end: float
    steps: int

    def __post_init__(self):
        self._set("start", _real("start", self.start))
        self._set("end", _real("end", self.end))
        _int("steps", self.steps, 1, "the number of steps from start to end")

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * min(step, self.steps) / self.steps


@dataclasses.dataclass(frozen=True)
class step_decay(Schedule):
    """``init gamma^floor(t / step_size)``: multiply by ``gamma`` every ``step_size`` steps
    (torch's ``StepLR``)."""

    init: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        self._set("init", _real("init", self.init))
        _int("step_size", self.step_size, 1, "the number of steps between two decays")
        self._set("gamma", _real("gamma", self.gamma, minimum=0.0))

    def __call__(self, step: int) -> float:
        return self.init * self.gamma ** (step // self.step_size)


@dataclasses.dataclass(frozen=True)
class multi_step(Schedule):
    """``init gamma^n`` where ``n`` counts the milestones ``<= t`` (a milestone listed twice
    counts twice; torch's ``MultiStepLR``)."""

    init: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self):
        self._set("init", _real("init", self.init))
        if isinstance(self.milestones, (str, bytes)) or not isinstance(self.milestones, Sequence):
            raise ValueError(f"Invalid milestones: {self.milestones!r} (must be a list of step numbers, e.g. [30, 80])")
        for m in self.milestones:
            _int("milestone", m, 0, "milestones are step numbers")
        self._set("milestones", tuple(sorted(self.milestones)))
        self._set("gamma", _real("gamma", self.gamma, minimum=0.0))

    def __call__(self, step: int) -> float:
        return self.init * self.gamma ** bisect.bisect_right(self.milestones, step)


@dataclasses.dataclass(frozen=True)
class exponential(Schedule):
    """``init gamma^t`` (torch's ``ExponentialLR``)."""

    init: float
    gamma: float

    def __post_init__(self):
        self._set("init", _real("init", self.init))
        self._set("gamma", _real("gamma", self.gamma, minimum=0.0, strict=True,
                                 why="the factor per step, e.g. 0.99"))

    def __call__(self, step: int) -> float:
        return self.init * self.gamma ** step


@dataclasses.dataclass(frozen=True)
class polynomial(Schedule):
    """``end + (init - end) (1 - min(t, T) / T)^power`` (torch's ``PolynomialLR`` is
    ``end = 0``)."""

    init: float
    total_steps: int
    power: float = 1.0
    end: float = 0.0

    def __post_init__(self):
        self._set("init", _real("init", self.init))
        _int("total_steps", self.total_steps, 1, "the number of steps the decay lasts")
        self._set("power", _real("power", self.power, minimum=0.0, strict=True))
        self._set("end", _real("end", self.end))

    def __call__(self, step: int) -> float:
        frac = 1.0 - min(self.total_steps, step) / self.total_steps
        return (self.init - self.end) * frac ** self.power + self.end


@dataclasses.dataclass(frozen=True)
class cosine(Schedule):
    """``end + (init - end) (1 + cos(pi t / T)) / 2`` for ``t <= T``, then ``end``
    (torch's ``CosineAnnealingLR`` with ``eta_min = end``, up to ``T``)."""

    init: float
    total_steps: int
    end: float = 0.0

    def __post_init__(self):
        self._set("init", _real("init", self.init))
        _int("total_steps", self.total_steps, 1, "the number of steps from init to end")
        self._set("end", _real("end", self.end))

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps)
        return self.end + (self.init - self.end) * (1 + math.cos(math.pi * t / self.total_steps)) / 2


@dataclasses.dataclass(frozen=True)
class sgdr(Schedule):
    """Cosine annealing with warm restarts: cycle ``i`` lasts ``T_0 T_mult^i`` steps and falls
    from ``init cycle_decay^i`` to ``end`` (torch's ``CosineAnnealingWarmRestarts`` is
    ``cycle_decay = 1``). The cycle is found in integers, so it is exact at every restart."""

    init: float
    T_0: int
    T_mult: int = 1
    end: float = 0.0
    cycle_decay: float = 1.0

    def __post_init__(self):
        self._set("init", _real("init", self.init))
        _int("T_0", self.T_0, 1, "the length of the first cycle in steps")
        _int("T_mult", self.T_mult, 1, "each cycle is T_mult times longer than the previous")
        self._set("end", _real("end", self.end))
        self._set("cycle_decay", _real("cycle_decay", self.cycle_decay, minimum=0.0, strict=True))

    def cycle(self, step: int) -> tuple[int, int, int]:
        """``(cycle index, steps into the cycle, cycle length)`` at ``step``."""
        if self.T_mult == 1:
            return step // self.T_0, step % self.T_0, self.T_0
        i, t, length = 0, step, self.T_0
        while t >= length:  # O(log step) iterations
            t -= length
            length *= self.T_mult
            i += 1
        return i, t, length

    def __call__(self, step: int) -> float:
        i, t, length = self.cycle(step)
        peak = self.init * self.cycle_decay ** i
        return self.end + (peak - self.end) * (1 + math.cos(math.pi * t / length)) / 2


@dataclasses.dataclass(frozen=True)
class warmup(Schedule):
    """Linear warmup in front of any schedule: ``start -> schedule(0)`` over ``steps`` steps,
    then ``schedule(t - steps)`` (torch: ``SequentialLR([LinearLR, other], [steps])``)."""

    schedule: Callable[[int], float]
    steps: int
    start: float = 0.0

    def __post_init__(self):
        _schedule("schedule", self.schedule)
        _int("steps", self.steps, 0, "the number of warmup steps")
        self._set("start", _real("start", self.start))

    def __call__(self, step: int) -> float:
        if step >= self.steps:
            return self.schedule(step - self.steps)
        return self.start + (self.schedule(0) - self.start) * step / self.steps


@dataclasses.dataclass(frozen=True)
class join(Schedule):
    """``schedules[i](t - boundaries[i - 1])`` on ``boundaries[i - 1] <= t < boundaries[i]``:
    each schedule restarts from its own step 0 at its boundary (optax's ``join_schedules``,
    torch's ``SequentialLR``)."""

    schedules: tuple[Callable[[int], float], ...]
    boundaries: tuple[int, ...]

    def __post_init__(self):
        if not isinstance(self.schedules, Sequence) or not self.schedules:
            raise ValueError(f"Invalid schedules: {self.schedules!r} (must be a non-empty list of schedules)")
        for i, s in enumerate(self.schedules):
            _schedule(f"schedules[{i}]", s)
        if not isinstance(self.boundaries, Sequence) or len(self.boundaries) != len(self.schedules) - 1:
            raise ValueError(
                f"Invalid boundaries: {self.boundaries!r} (need one boundary between each two schedules: "
                f"{len(self.schedules) - 1} for {len(self.schedules)} schedules)"
            )
        prev = 0
        for b in self.boundaries:
            _int("boundary", b, prev + 1, "boundaries are increasing step numbers > 0")
            prev = b
        self._set("schedules", tuple(self.schedules))
        self._set("boundaries", tuple(self.boundaries))

    def __call__(self, step: int) -> float:
        i = bisect.bisect_right(self.boundaries, step)
        return self.schedules[i](step - (self.boundaries[i - 1] if i else 0))


@dataclasses.dataclass(frozen=True)
class cyclic(Schedule):
    """Cyclical values between ``base`` and ``peak`` (torch's ``CyclicLR``): up in
    ``step_size_up`` steps, down in ``step_size_down`` (default: the same), the amplitude scaled
    by 1 (``"triangular"``), ``1 / 2^(cycle - 1)`` (``"triangular2"``) or ``gamma^t``
    (``"exp_range"``). ``peak < base`` cycles the other way (CyclicLR's momentum)."""

    base: float
    peak: float
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0

    def __post_init__(self):
        self._set("base", _real("base", self.base))
        self._set("peak", _real("peak", self.peak))
        _int("step_size_up", self.step_size_up, 1, "the number of steps from base to peak")
        if self.step_size_down is not None:
            _int("step_size_down", self.step_size_down, 1, "the number of steps from peak to base, or None")
        _choice("mode", self.mode, ("triangular", "triangular2", "exp_range"))
        self._set("gamma", _real("gamma", self.gamma, minimum=0.0, strict=True))

    def __call__(self, step: int) -> float:
        up = float(self.step_size_up)
        total = up + float(self.step_size_up if self.step_size_down is None else self.step_size_down)
        ratio = up / total
        cycle = math.floor(1 + step / total)  # 1-based
        x = 1.0 + step / total - cycle  # position in the cycle, in [0, 1)
        height = (self.peak - self.base) * (x / ratio if x <= ratio else (x - 1) / (ratio - 1))
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 1 / (2.0 ** (cycle - 1))
        else:
            scale = self.gamma ** step
        return self.base + height * scale


def _one_cycle_phases(total_steps: int, pct_start: float, three_phase: bool, a: float, b: float, c: float):
    """1cycle's phases as ``(last step, from, to)``, as in torch's OneCycleLR: ``a -> b`` in
    ``pct_start T`` steps, then ``b -> c`` (or ``b -> a -> c`` with three phases)."""
    rise = pct_start * total_steps - 1
    if three_phase:
        return ((rise, a, b), (2 * pct_start * total_steps - 2, b, a), (total_steps - 1, a, c))
    return ((rise, a, b), (total_steps - 1, b, c))


def _check_one_cycle(total_steps, pct_start, anneal, three_phase) -> None:
    _int("total_steps", total_steps, 2, "the length of the whole cycle in steps")
    _real("pct_start", pct_start, minimum=0.0, strict=True)
    _choice("anneal", anneal, ("cos", "linear"))
    start = 0.0
    for i, (end, *_) in enumerate(_one_cycle_phases(total_steps, pct_start, three_phase, 0, 0, 0)):
        if end <= start:
            raise ValueError(
                f"Invalid pct_start: {pct_start!r} with total_steps={total_steps} (phase {i + 1} of the cycle "
                f"would span {end - start:g} steps; pick pct_start so that pct_start * total_steps > 1 and "
                f"{'2 * pct_start * total_steps < total_steps + 1' if three_phase else 'pct_start < 1'})"
            )
        start = end


def _one_cycle_value(step: int, total_steps: int, pct_start: float, anneal: str, three_phase: bool,
                     a: float, b: float, c: float) -> float:
    t = min(step, total_steps - 1)  # hold the final value after the cycle
    start = 0.0
    phases = _one_cycle_phases(total_steps, pct_start, three_phase, a, b, c)
    for i, (end, v0, v1) in enumerate(phases):
        if t <= end or i == len(phases) - 1:
            pct = (t - start) / (end - start)
            if anneal == "cos":
                return v1 + (v0 - v1) / 2.0 * (math.cos(math.pi * pct) + 1)
            return (v1 - v0) * pct + v0
        start = end
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class one_cycle(Schedule):
    """The 1cycle policy (torch's ``OneCycleLR``): from ``peak / div_factor`` up to ``peak`` in
    ``pct_start`` of the steps, then down to ``peak / div_factor / final_div_factor`` (with
    ``three_phase``: back to ``peak / div_factor`` first, then down), annealed by cosine
    (``"cos"``) or linearly. Holds the final value after ``total_steps - 1``."""

    peak: float
    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal: str = "cos"
    three_phase: bool = False

    def __post_init__(self):
        self._set("peak", _real("peak", self.peak))
        self._set("div_factor", _real("div_factor", self.div_factor, minimum=0.0, strict=True))
        self._set("final_div_factor", _real("final_div_factor", self.final_div_factor, minimum=0.0, strict=True))
        _check_one_cycle(self.total_steps, self.pct_start, self.anneal, self.three_phase)

    def __call__(self, step: int) -> float:
        initial = self.peak / self.div_factor
        final = initial / self.final_div_factor
        return _one_cycle_value(step, self.total_steps, self.pct_start, self.anneal, self.three_phase,
                                initial, self.peak, final)


@dataclasses.dataclass(frozen=True)
class one_cycle_momentum(Schedule):
    """1cycle's momentum, the mirror of :class:`one_cycle` (OneCycleLR with
    ``cycle_momentum=True``): ``high -> low`` while the learning rate rises, back to ``high``
    while it falls (and ``high`` through the third phase). Drive ``"momentum"`` or
    ``"betas[0]"`` with it."""

    total_steps: int
    low: float = 0.85
    high: float = 0.95
    pct_start: float = 0.3
    anneal: str = "cos"
    three_phase: bool = False

    def __post_init__(self):
        self._set("low", _real("low", self.low))
        self._set("high", _real("high", self.high))
        _check_one_cycle(self.total_steps, self.pct_start, self.anneal, self.three_phase)

    def __call__(self, step: int) -> float:
        return _one_cycle_value(step, self.total_steps, self.pct_start, self.anneal, self.three_phase,
                                self.high, self.low, self.high)


_WSD_DECAYS = ("linear", "cosine", "1-sqrt")


@dataclasses.dataclass(frozen=True)
class wsd(Schedule):
    """Warmup-stable-decay: linear ``start -> peak`` in ``warmup_steps``, ``peak`` until the last
    ``decay_steps`` steps, which go ``peak -> end`` by ``decay``: ``"linear"``, ``"cosine"`` or
    ``"1-sqrt"`` (``peak - (peak - end) sqrt(s / decay_steps)``); ``end`` after ``total_steps``."""

    peak: float
    total_steps: int
    warmup_steps: int
    decay_steps: int
    end: float = 0.0
    start: float = 0.0
    decay: str = "linear"

    def __post_init__(self):
        self._set("peak", _real("peak", self.peak))
        _int("total_steps", self.total_steps, 1)
        _int("warmup_steps", self.warmup_steps, 0)
        _int("decay_steps", self.decay_steps, 0)
        if self.warmup_steps + self.decay_steps > self.total_steps:
            raise ValueError(
                f"Invalid warmup_steps + decay_steps: {self.warmup_steps} + {self.decay_steps} > total_steps="
                f"{self.total_steps} (shorten the warmup or the decay, or raise total_steps)"
            )
        self._set("end", _real("end", self.end))
        self._set("start", _real("start", self.start))
        _choice("decay", self.decay, _WSD_DECAYS)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (self.peak - self.start) * step / self.warmup_steps
        decay_start = self.total_steps - self.decay_steps
        if step < decay_start:
            return self.peak
        if step >= self.total_steps:
            return self.end
        frac = (step - decay_start) / self.decay_steps
        if self.decay == "linear":
            done = frac
        elif self.decay == "cosine":
            done = (1 - math.cos(math.pi * frac)) / 2
        else:
            done = math.sqrt(frac)
        return self.peak + (self.end - self.peak) * done


@dataclasses.dataclass(frozen=True)
class inverse_sqrt(Schedule):
    """Linear warmup ``start -> peak`` in ``warmup_steps``, then ``peak sqrt(warmup_steps / t)``
    (the Transformer's schedule; fairseq's ``inverse_sqrt``)."""

    peak: float
    warmup_steps: int
    start: float = 0.0

    def __post_init__(self):
        self._set("peak", _real("peak", self.peak))
        _int("warmup_steps", self.warmup_steps, 1, "the decay peak * sqrt(warmup_steps / t) needs warmup_steps > 0")
        self._set("start", _real("start", self.start))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (self.peak - self.start) * step / self.warmup_steps
        return self.peak * math.sqrt(self.warmup_steps / step)


# ---------------------------------------------------------------------------------------------
# Applying schedules to an optimizer.
# ---------------------------------------------------------------------------------------------
_KEY = re.compile(r"^([A-Za-z_]\w*)(?:\[(\d+)\])?$")


def _parse_key(key: Any) -> tuple[str, int | None]:
    m = _KEY.match(key) if isinstance(key, str) else None
    if m is None:
        raise ValueError(f"Invalid hyperparameter key: {key!r} (use a param-group key such as 'lr', "
                         "'momentum', 'weight_decay', or 'betas[0]' for one entry of a tuple)")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def _get(group: dict, name: str, index: int | None):
    v = group[name]
    return v if index is None else v[index]


def _put(group: dict, name: str, index: int | None, value: float) -> None:
    """``group[name] = value`` (or entry ``index`` of the tuple ``group[name]``); a tensor
    hyperparameter is filled in place, as torch's schedulers do."""
    old = group[name]
    if index is None:
        if isinstance(old, Tensor):
            old.fill_(value)
        else:
            group[name] = value
    elif isinstance(old[index], Tensor):
        old[index].fill_(value)
    else:
        group[name] = type(old)(value if i == index else v for i, v in enumerate(old))


def _check_key(group: dict, i: int, key: str) -> None:
    name, index = _parse_key(key)
    keys = sorted(k for k in group if k != "params")
    if name not in group:
        raise ValueError(f"param group {i} has no hyperparameter {name!r} to schedule; it has {keys}")
    if index is not None:
        v = group[name]
        if not isinstance(v, (tuple, list)) or index >= len(v):
            raise ValueError(f"cannot schedule {key!r}: param group {i}'s {name!r} is {v!r}, "
                             f"not a tuple with an entry {index}")


class Scheduler:
    """Sets ``group[key] = schedule(t)`` on an optimizer's param groups, for ``t = 0`` at
    construction and ``t + 1`` at each :meth:`step` (call it after ``optimizer.step()``).

    ``schedules`` is one schedule (drives ``"lr"``), a dict ``{key: schedule}``, or a list with
    one such entry (or ``None``: leave the group alone) per param group. A key is any
    param-group hyperparameter -- ``"lr"``, ``"momentum"``, ``"weight_decay"`` -- or
    ``"name[i]"`` for entry ``i`` of a tuple, e.g. ``"betas[0]"`` for Adam's beta1. Works with
    every ``torch.optim.Optimizer``, optimlab's or torch's. Because schedules are pure, the
    state is the step count alone: ``load_state_dict`` restores it and re-applies the values, so
    a resumed run continues exactly (whatever order the optimizer and scheduler are loaded in).

    Example::

        >>> sched = Scheduler(opt, {"lr": cosine(3e-4, 10_000), "betas[0]": linear(0.85, 0.95, 10_000)})
        >>> sched = Scheduler(opt, [cosine(1e-3, 1000), None])  # group 1 keeps its lr
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedules) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Scheduler needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if isinstance(schedules, (list, tuple)):
            n = len(optimizer.param_groups)
            if len(schedules) != n:
                raise ValueError(f"Invalid schedules: {len(schedules)} entries for {n} param groups "
                                 "(give one per group, None for a group to leave alone, or a single "
                                 "schedule / dict for every group)")
            self._per_group: list[dict] | None = [self._as_dict(s) for s in schedules]
            self._shared: dict = {}
        else:
            self._per_group = None
            self._shared = self._as_dict(schedules)
        for i, (group, plan) in enumerate(zip(optimizer.param_groups, self._plans())):
            for key in plan:
                _check_key(group, i, key)
        self.last_step = 0
        self._apply()

    @staticmethod
    def _as_dict(s) -> dict:
        if s is None:
            return {}
        if isinstance(s, dict):
            for key, fn in s.items():
                _parse_key(key)
                _schedule(f"schedule for {key!r}", fn)
            return dict(s)
        return {"lr": _schedule("schedules", s)}

    def _plans(self) -> list[dict]:
        groups = self.optimizer.param_groups
        if self._per_group is None:
            return [self._shared] * len(groups)
        if len(self._per_group) != len(groups):
            raise RuntimeError(f"the optimizer has {len(groups)} param groups but this Scheduler was given "
                               f"schedules for {len(self._per_group)}; create a new Scheduler after add_param_group")
        return self._per_group

    def _apply(self) -> None:
        t = self.last_step
        for group, plan in zip(self.optimizer.param_groups, self._plans()):
            for key, schedule in plan.items():
                name, index = _parse_key(key)
                _put(group, name, index, float(schedule(t)))

    def step(self) -> None:
        """Advance one step and set every scheduled hyperparameter to its new value."""
        self.last_step += 1
        self._apply()

    def values(self) -> list[dict[str, float]]:
        """The scheduled hyperparameters of each group now: ``[{key: value}, ...]``."""
        return [{key: float(_get(g, *_parse_key(key))) for key in plan}
                for g, plan in zip(self.optimizer.param_groups, self._plans())]

    def get_last_lr(self) -> list[float]:
        """Each group's current learning rate (torch's scheduler API, for loggers)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, int]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = _int("last_step", state_dict["last_step"], 0)
        self._apply()

    def __repr__(self) -> str:
        plans = self._shared if self._per_group is None else self._per_group
        return f"Scheduler(last_step={self.last_step}, schedules={plans!r})"


def _ratio(schedule: Callable[[int], float], base: float, step: int) -> float:
    return schedule(step) / base


def as_lambda_lr(optimizer: torch.optim.Optimizer, schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """torch's ``LambdaLR`` whose factor ``schedule(t) / base_lr`` reproduces ``schedule`` as the
    learning rate (to rounding: ``base_lr * (s / base_lr)``), for code that wants a torch
    scheduler. ``schedule`` may be a list with one schedule per param group. Each group's base
    is its ``initial_lr`` (set by an earlier torch scheduler) or its ``lr``; it must be non-zero.

    The factors are ``functools.partial`` objects: picklable, and their ``__dict__`` (what
    LambdaLR's ``state_dict`` saves of them) is empty, so the state dict loads with
    ``torch.load(weights_only=True)``.
    """
    groups = optimizer.param_groups
    if isinstance(schedule, (list, tuple)):
        if len(schedule) != len(groups):
            raise ValueError(f"Invalid schedule: {len(schedule)} schedules for {len(groups)} param groups")
        schedules = list(schedule)
    else:
        schedules = [schedule] * len(groups)
    factors = []
    for i, (g, s) in enumerate(zip(groups, schedules)):
        _schedule(f"schedule for group {i}", s)
        base = float(g.get("initial_lr", g["lr"]))
        if base == 0 or not math.isfinite(base):
            raise ValueError(f"Invalid lr of param group {i}: {base!r} (LambdaLR multiplies it by a factor, so it "
                             "must be non-zero; create the optimizer with lr=schedule(0) or any non-zero value)")
        factors.append(functools.partial(_ratio, s, base))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


# ---------------------------------------------------------------------------------------------
# Reduce on plateau: a pure decision rule and the class that applies it.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PlateauState:
    """What the plateau rule remembers (all Python numbers, so ``state_dict`` is plain)."""

    best: float = math.inf  # best metric so far (inf in "min" mode, -inf in "max" before the first)
    bad_epochs: int = 0  # epochs since the last improvement (reset by a reduction, ignored in cooldown)
    cooldown_left: int = 0  # epochs left in which bad epochs are not counted
    epochs: int = 0  # metrics seen
    reductions: int = 0  # times the learning rate was lowered


def _is_better(a: float, best: float, mode: str, threshold: float, threshold_mode: str) -> bool:
    if mode == "min":
        return a < (best * (1.0 - threshold) if threshold_mode == "rel" else best - threshold)
    return a > (best * (threshold + 1.0) if threshold_mode == "rel" else best + threshold)


def plateau_update(state: PlateauState, metric: float, *, mode: str = "min", patience: int = 10,
                   threshold: float = 1e-4, threshold_mode: str = "rel",
                   cooldown: int = 0) -> tuple[PlateauState, bool]:
    """The next state after one epoch's ``metric``, and whether to lower the rate now.

    torch's ReduceLROnPlateau rule: a metric better than ``best`` by more than ``threshold``
    (relative: ``best (1 -/+ threshold)``; absolute: ``best -/+ threshold``) resets the count of
    bad epochs; otherwise it grows by one. During cooldown the count is held at zero. When it
    exceeds ``patience`` the rate is lowered, the count reset, and the cooldown starts.
    """
    best, bad, cool = state.best, state.bad_epochs, state.cooldown_left
    if _is_better(metric, best, mode, threshold, threshold_mode):
        best, bad = metric, 0
    else:
        bad += 1
    if cool > 0:
        cool -= 1
        bad = 0
    reduce = bad > patience
    if reduce:
        bad, cool = 0, cooldown
    return PlateauState(best, bad, cool, state.epochs + 1, state.reductions + reduce), reduce


class ReduceOnPlateau:
    """Multiply each group's ``lr`` by ``factor`` (not below ``min_lr``) when the metric given to
    :meth:`step` has not improved for more than ``patience`` epochs -- the same decisions and
    values as ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (see :func:`plateau_update`). A
    change smaller than ``eps`` is skipped. ``mode="max"`` for metrics where higher is better.

    Call ``step(val_metric)`` once per epoch; ``optimlab.train.fit(..., plateau=...)`` does.
    It changes ``group["lr"]`` in place, so a :class:`Scheduler` driving ``"lr"`` of the same
    optimizer would overwrite it: schedule other hyperparameters alongside it, not ``lr``.

    Example::

        >>> plateau = ReduceOnPlateau(opt, mode="max", factor=0.5, patience=3)
        >>> for epoch in range(epochs):
        ...     train_one_epoch(); plateau.step(validation_accuracy())
    """

    def __init__(self, optimizer: torch.optim.Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | Sequence[float] = 0.0, eps: float = 1e-8) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"ReduceOnPlateau needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.mode = _choice("mode", mode, ("min", "max"))
        self.factor = _real("factor", factor, minimum=0.0)
        if self.factor >= 1:
            raise ValueError(f"Invalid factor: {factor!r} (must be < 1: the new lr is lr * factor; e.g. 0.1 or 0.5)")
        self.patience = _int("patience", patience, 0, "epochs without improvement tolerated")
        self.threshold_mode = _choice("threshold_mode", threshold_mode, ("rel", "abs"))
        self.threshold = _real("threshold", threshold, minimum=0.0)
        if threshold_mode == "rel" and self.threshold >= 1:
            raise ValueError(f"Invalid threshold: {threshold!r} (a relative threshold must be < 1, e.g. 1e-4; "
                             "use threshold_mode='abs' for an absolute one)")
        self.cooldown = _int("cooldown", cooldown, 0, "epochs to wait after a reduction")
        n = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(f"Invalid min_lr: {len(min_lr)} values for {n} param groups "
                                 "(give one per group, or one number for all)")
            self.min_lrs = [_real("min_lr", v, minimum=0.0) for v in min_lr]
        else:
            self.min_lrs = [_real("min_lr", min_lr, minimum=0.0)] * n
        self.eps = _real("eps", eps, minimum=0.0)
        self.state = PlateauState(best=math.inf if self.mode == "min" else -math.inf)

    def step(self, metric) -> bool:
        """Record one epoch's metric (a number or a 1-element tensor); True if the lr was lowered."""
        value = float(metric.item() if isinstance(metric, Tensor) else metric)
        self.state, reduce = plateau_update(self.state, value, mode=self.mode, patience=self.patience,
                                            threshold=self.threshold, threshold_mode=self.threshold_mode,
                                            cooldown=self.cooldown)
        if reduce:
            groups = self.optimizer.param_groups
            if len(groups) != len(self.min_lrs):
                raise RuntimeError(f"the optimizer has {len(groups)} param groups, ReduceOnPlateau was made for "
                                   f"{len(self.min_lrs)}; create it after add_param_group")
            for g, lo in zip(groups, self.min_lrs):
                old = float(g["lr"])
                new = max(old * self.factor, lo)
                if old - new > self.eps:
                    _put(g, "lr", None, new)
        return reduce

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state = PlateauState(**state_dict)

    def __repr__(self) -> str:
        return (f"ReduceOnPlateau(mode={self.mode!r}, factor={self.factor}, patience={self.patience}, "
                f"threshold={self.threshold}, threshold_mode={self.threshold_mode!r}, cooldown={self.cooldown}, "
                f"min_lr={self.min_lrs}, eps={self.eps}, state={self.state})")
