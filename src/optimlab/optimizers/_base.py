"""The base of optimlab's optimizer classes: torch.optim's signatures plus the options torch
lacks, available on every class.

Options (param-group hyperparameters; each group may set its own):

=======================  ==================================================================
``l1``                   proximal L1 strength: after each step ``p <- sign(p) max(|p| - lr l1, 0)``
                         (exact zeros; the proximal step is exact for SGD -- ISTA -- while with
                         adaptive methods, whose steps are ~lr per coordinate, fewer entries settle
                         at zero)
``l2``                   coupled L2 added to the gradient: ``g <- g + l2 p``
``decoupled_decay``      lr-scaled decoupled decay: ``p <- p - lr * decoupled_decay * p``
                         (for optimizers without a learning-rate scale -- Rprop, ASGD -- ``l1`` and
                         ``decoupled_decay`` act unscaled, like ``independent_decay``)
``independent_decay``    lr-independent decoupled decay: ``p <- (1 - independent_decay) p``
``decay_mask``           which parameters every regulariser (and ``weight_decay``) applies to:
                         an :class:`optimlab.Mask`, a callable ``(name, p) -> bool``, a regex of
                         names to exclude, or ``"no_bias_norm"`` (skip tensors with ndim < 2)
``clip_grad_value``      clamp each gradient entry to ``[-c, c]``
``clip_param_grad_norm`` rescale each parameter's gradient to norm <= c
``clip_grad_norm``       rescale all gradients so their global norm (over every group) is <= c
=======================  ==================================================================

Whole-optimizer options (constructor keywords): ``accumulate_steps=k`` (update once every k
calls to ``step``, with the mean of the k gradients), ``skip_nonfinite=True`` (skip a step whose
gradients contain inf/NaN and count it in ``optimizer.skipped_steps``), ``compile`` (run the
chain as one compiled kernel over flat buffers; ``None`` = automatically for large groups; a
plain Adam, AdamW, SGD or Adagrad group runs torch's fused kernel instead, which is that one
pass already, unless ``fused=False``),
``process_group`` (where the optimizer holds a shard of plain tensors: the ranks over which
``clip_grad_norm``, ``skip_nonfinite`` and Prodigy's/D-Adapt's sums add up; found automatically
under ``ZeroRedundancyOptimizer`` and for FSDP2's DTensors, see :mod:`optimlab._dist`),
``state_dtype`` / ``state_bits=8`` (moments held in that dtype / as 8-bit block-quantized codes)
and ``param_rounding="stochastic" | "kahan"`` (bfloat16/float16 parameters written back without
losing small updates): see :mod:`optimlab.precision`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from .. import _dist
from ..core import _FUSED_DEVICES, ChainOptimizer, Transform, as_mask, check_int, check_nonneg, check_positive
from ..transforms.clip import clip_by_global_norm, clip_by_param_norm, clip_by_value
from ..transforms.regularize import add_decayed_weights, add_l2, decay_weights, l1_prox

__all__ = ["Optimizer", "EXTRA_DEFAULTS", "fused_parts", "kernel_lr", "state_column", "constructor_options"]

#: dtypes torch's fused kernels take
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fused_parts(params, grads, states, move_steps: bool = True) -> list[tuple[list, list, list]] | None:
    """The bucket as torch's fused kernels take it: ``(params, grads, states)`` per device and
    dtype, in order of first appearance (as torch's own wrappers split a group), or None where
    a tensor is not for them -- a sparse or non-contiguous one, a gradient of another dtype or
    device than its parameter, a device or dtype they do not support. (The state the kernel
    reads is checked where its lists are made, :func:`state_column`.) With ``move_steps``,
    the states' step counts are moved next to their parameters as float32. One loop with
    early exits: it runs every step, over every tensor, so it reads each attribute once."""
    p0 = params[0]
    device, dtype = p0.device, p0.dtype
    uniform = True
    for p, g in zip(params, grads):
        pd, gd = p.dtype, g.dtype
        if (gd is not pd or g.is_sparse or not g.is_contiguous() or not p.is_contiguous()
                or g.device != p.device):
            return None
        if uniform and (pd is not dtype or p.device != device):
            uniform = False
    if uniform:
        parts = {(device, dtype): (params, grads, states)}
    else:
        parts = {}
        for p, g, st in zip(params, grads, states):
            part = parts.setdefault((p.device, p.dtype), ([], [], []))
            part[0].append(p)
            part[1].append(g)
            part[2].append(st)
    if any(d.type not in _FUSED_DEVICES or t not in _FUSED_DTYPES for d, t in parts):
        return None
    if move_steps:
        f32 = torch.float32
        for (d, _), (_, _, sts) in parts.items():
            for st in sts:  # torch's fused kernels keep the step count as float32 on the device
                t = st["step"]
                if t.dtype is not f32 or t.device != d:
                    st["step"] = t.to(device=d, dtype=f32)
    return list(parts.values())


def kernel_lr(lr, device):
    """The group's ``lr`` as torch's fused kernels take it: a float, or a tensor on the CPU or on
    the parameters' device (torch's own wrappers move one that is on another accelerator)."""
    if isinstance(lr, torch.Tensor) and lr.device.type != "cpu" and lr.device != device:
        return lr.to(device)
    return lr


def state_column(states, key: str) -> list | None:
    """``[st[key] for st in states]``, or None if one of them is not contiguous (the fused
    kernels index state like the parameter; a state laid out otherwise goes to the chain)."""
    col = [st[key] for st in states]
    return col if all(v.is_contiguous() for v in col) else None


EXTRA_DEFAULTS: dict[str, Any] = {
    "l1": 0.0,
    "l2": 0.0,
    "decoupled_decay": 0.0,
    "independent_decay": 0.0,
    "decay_mask": None,
    "clip_grad_value": None,
    "clip_param_grad_norm": None,
    "clip_grad_norm": None,
}


class Optimizer(ChainOptimizer):
    """Base class: subclasses implement :meth:`core` (their algorithm's chain for a group) and
    extend :meth:`check_group`; the options above are wrapped around the core chain."""

    def __init__(
        self,
        params,
        defaults: dict[str, Any],
        *,
        lr_key: str | None = "lr",
        accumulate_steps: int = 1,
        skip_nonfinite: bool = False,
        compile: bool | None = None,
        process_group: Any = None,
        state_dtype: torch.dtype | None = None,
        state_bits: int | None = None,
        param_rounding: str | None = None,
        **options: Any,
    ) -> None:
        unknown = set(options) - set(EXTRA_DEFAULTS)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s) {sorted(unknown)}; "
                f"its hyperparameters are {sorted(defaults)} and the optimlab options are "
                f"{sorted(EXTRA_DEFAULTS)} plus {', '.join(constructor_options())}"
            )
        check_int("accumulate_steps", accumulate_steps, minimum=1)
        self.accumulate_steps = accumulate_steps
        self.skip_nonfinite = bool(skip_nonfinite)
        # whole-model sums reduce over this group (plain tensors sharded by ZeRO; see optimlab._dist);
        # ZeRO's parameters_as_bucket_view makes the parameters views of its buffers, which
        # the flat engine (compile=True) must not rebind
        zero_group, self.params_in_buffers = _dist.zero_constructing()
        self.process_group = process_group if process_group is not None else zero_group
        super().__init__(params, None, {**defaults, **EXTRA_DEFAULTS, **options}, lr_key=lr_key, compile=compile,
                         state_dtype=state_dtype, state_bits=state_bits, param_rounding=param_rounding)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``. A wrapper that passes every keyword on as a group default
        (``ZeroRedundancyOptimizer(params, optimlab.AdamW, compile=True)``) puts the constructor
        options into each group too: there they are dropped when they equal the optimizer's own,
        and refused otherwise (they are not per group)."""
        if isinstance(param_group, dict):
            given = [k for k in constructor_options() if k in param_group]
            for key in given:
                mine = getattr(self, key, param_group[key])
                if param_group[key] is not mine and param_group[key] != mine:
                    raise ValueError(
                        f"{key}={param_group[key]!r} in a param group: {key} is an option of the whole "
                        f"optimizer (this one has {key}={mine!r}); pass it to the constructor")
            if given:
                param_group = {k: v for k, v in param_group.items() if k not in given}
        super().add_param_group(param_group)

    # -- subclasses ----------------------------------------------------------------------------
    def core(self, group: dict) -> list[Transform]:  # pragma: no cover - interface
        raise NotImplementedError

    def weight_decay(self, group: dict, key: str = "weight_decay") -> list[Transform]:
        """torch's coupled ``weight_decay`` (L2 added to the gradient), honouring the mask."""
        return [add_l2(key, group["decay_mask"])] if group.get(key, 0) != 0 else []

    def check_group(self, group: dict) -> None:
        super().check_group(group)
        for key in ("weight_decay", "l1", "l2", "decoupled_decay", "independent_decay"):
            if key in group:
                check_nonneg(key, group[key])
        if group["independent_decay"] >= 1:
            raise ValueError(
                f"Invalid independent_decay: {group['independent_decay']} (must be < 1: each step "
                "multiplies the weights by 1 - independent_decay)"
            )
        for key in ("clip_grad_value", "clip_param_grad_norm", "clip_grad_norm"):
            if group[key] is not None:
                check_positive(key, group[key])
        group["decay_mask"] = as_mask(group["decay_mask"])

    # -- the chain ------------------------------------------------------------------------------
    def build(self, group: dict) -> list[Transform]:
        mask = group["decay_mask"]
        pre: list[Transform] = []
        if group["clip_grad_value"] is not None:
            pre.append(clip_by_value())
        if group["clip_param_grad_norm"] is not None:
            pre.append(clip_by_param_norm())
        if group["clip_grad_norm"] is not None:
            pre.append(clip_by_global_norm())
        if group["l2"] != 0:
            pre.append(add_l2("l2", mask))
        post: list[Transform] = []
        if group["decoupled_decay"] != 0:
            post.append(add_decayed_weights("decoupled_decay", mask))
        if group["independent_decay"] != 0:
            post.append(decay_weights("independent_decay", mask))
        if group["l1"] != 0:
            post.append(l1_prox("l1", self.lr_key, mask))
        return pre + list(self.core(group)) + post

    # -- torch's kernels ------------------------------------------------------------------------
    def plain(self, group: dict) -> bool:
        """True when the group uses none of the options above (nor a tensor hyperparameter, nor
        flags torch's fused kernels refuse): its step is then exactly torch's algorithm."""
        if group["fused"] is False or group.get("capturable") or group.get("differentiable"):
            return False
        # a device the kernels do not run on (compile=True then compiles the chain instead)
        p0 = group["params"][0] if group["params"] else None
        if p0 is not None and (p0.device.type not in _FUSED_DEVICES or p0.dtype not in _FUSED_DTYPES):
            return False
        if any(group[k] for k in ("l1", "l2", "decoupled_decay", "independent_decay")):
            return False
        if any(group[k] is not None for k in ("decay_mask", "clip_grad_value", "clip_param_grad_norm", "clip_grad_norm")):
            return False
        return not any(isinstance(v, torch.Tensor) or (isinstance(v, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in v))
                       for k, v in group.items() if k not in ("params", "param_names"))

    # -- whole-optimizer decisions ---------------------------------------------------------------
    def _needs_global_norm(self) -> bool:
        return self.skip_nonfinite or any(g["clip_grad_norm"] is not None for g in self.param_groups)

    def _prestep(self) -> bool:
        if self._needs_global_norm():
            # the norm of every gradient of the model, also where this rank holds a shard (FSDP2's
            # DTensors, ZeRO's partition: summed over the ranks, so every rank takes one decision)
            grads = [g for grp in self.param_groups for p in grp["params"] if (g := self._grad(p)) is not None]
            norms = torch._foreach_norm([_dist.local(g) for g in grads]) if grads else []
            squares = [n.to(torch.float64).square() for n in norms]
            total = _dist.total(squares, grads, self.process_group).sqrt().item()
            if self.skip_nonfinite and not math.isfinite(total):
                self.skipped_steps += 1
                return False
            self._step_info["_global_grad_norm"] = total
        return True


def constructor_options() -> tuple[str, ...]:
    """The whole-optimizer keywords of :class:`Optimizer` (``accumulate_steps``, ``compile`` ...):
    not param-group hyperparameters."""
    sig = inspect.signature(Optimizer.__init__).parameters.values()
    return tuple(p.name for p in sig if p.kind is p.KEYWORD_ONLY and p.name != "lr_key")
