"""Muon with an auxiliary AdamW: Muon for the hidden weight matrices, AdamW for everything else
(biases, norm gains, embeddings, the output head), in one optimizer -- the way Muon is run in
practice (Keller Jordan's ``MuonWithAuxAdam``, github.com/KellerJordan/Muon).

Each param group is either a Muon group or an AdamW group (its ``use_muon`` flag)::

    Muon  (use_muon=True):   B <- mu B + (1 - mu) g,   M = (1 - mu) g + mu B  (nesterov) or B
                             p <- (1 - lr wd) p - lr scale(A, B) NewtonSchulz(M)
    AdamW (use_muon=False):  p <- p - lr (m_hat / (sqrt(v_hat) + eps) + wd p)

exactly :class:`optimlab.Muon`'s and :class:`optimlab.AdamW`'s chains (Muon's also takes conv
kernels and other tensors with ndim > 2, orthogonalised as ``(shape[0], -1)`` matrices, as
Jordan's Muon does). A group given without ``use_muon`` is split automatically: tensors with
ndim >= 2 whose name does not match ``adam_names`` (embeddings, output heads) go to Muon, the
rest to AdamW. Names are only known when the optimizer gets ``model.named_parameters()``; with
``model.parameters()`` every matrix goes to Muon, so pass the embedding and the head in a group
with ``use_muon=False`` yourself. AdamW groups without their own ``lr``, ``betas``, ``eps``,
``weight_decay`` take ``adam_lr``, ``adam_betas``, ``adam_eps``, ``adam_weight_decay``. Every
group keeps its own ``lr``, so LR schedulers scale both kinds alike.

Example::

    >>> opt = optimlab.MuonAdam(model.named_parameters(), lr=0.02, adam_lr=3e-4)
    >>> opt = optimlab.MuonAdam([{"params": body.parameters()},
    ...                          {"params": [*embed.parameters(), *head.parameters()], "use_muon": False}])
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch

from ..core import check_betas, check_nonneg
from ..registry import register
from ..transforms.adam import scale_by_adam
from ..transforms.orthogonal import ema_momentum, orthogonalize
from ..transforms.regularize import add_decayed_weights, decay_weights
from ._base import Optimizer
from .matrix import check_orthogonalization

__all__ = ["MuonAdam"]

#: parameter names sent to AdamW even when they are matrices: embeddings and output layers
DEFAULT_ADAM_NAMES = r"(^|\.)(embed\w*|tok_embeddings|wte|wpe|lm_head|head|classifier|output)(\.|$)"


@dataclasses.dataclass(frozen=True)
class orthogonalize_flat(orthogonalize):
    """:class:`~optimlab.transforms.orthogonalize` for any tensor with ndim >= 2: each update is
    orthogonalised as its ``(shape[0], -1)`` matrix (a conv kernel ``(out, in, kh, kw)`` as
    ``(out, in kh kw)``) and reshaped back."""

    def matrix_shape(self, shape):
        return (shape[0], math.prod(shape[1:]))


@register("muon-adam")
class MuonAdam(Optimizer):
    """Muon for hidden weight matrices with an auxiliary AdamW for the other parameters.

    Muon's hyperparameters (``lr``, ``momentum``, ``nesterov``, ``weight_decay``, ``ns_*``,
    ``eps``, ``adjust_lr_fn``) are torch.optim.Muon's; ``adam_*`` are the defaults of the AdamW
    groups; ``adam_names`` is the regex of names that go to AdamW whatever their shape (None: by
    shape only). Defaults follow Jordan's ``MuonWithAuxAdam``.
    Example: ``optimlab.MuonAdam(model.named_parameters(), lr=0.02, adam_lr=3e-4)``.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0,
                 ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None, *,
                 adam_lr=3e-4, adam_betas=(0.9, 0.95), adam_eps=1e-10, adam_weight_decay=0.0,
                 adam_names=DEFAULT_ADAM_NAMES, **options):
        check_nonneg("adam_lr", adam_lr)
        check_betas("adam_betas", adam_betas)
        check_nonneg("adam_eps", adam_eps)
        check_nonneg("adam_weight_decay", adam_weight_decay)
        try:
            self._adam_names = None if adam_names is None else re.compile(adam_names)
        except (re.error, TypeError) as e:
            raise ValueError(f"Invalid adam_names: {adam_names!r} (not a regular expression: {e})") from None
        self._adam_defaults = dict(lr=adam_lr, betas=adam_betas, eps=adam_eps, weight_decay=adam_weight_decay)
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                        betas=adam_betas, use_muon=None)
        super().__init__(params, defaults, **options)

    # -- splitting groups into Muon and AdamW groups ----------------------------------------------
    def _muon_by_default(self, name: str | None, p: torch.Tensor) -> bool:
        return p.ndim >= 2 and not (name is not None and self._adam_names is not None
                                    and self._adam_names.search(name))

    def add_param_group(self, param_group):
        if not isinstance(param_group, dict) or "params" not in param_group:
            return super().add_param_group(param_group)
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif not isinstance(params, set):
            params = list(params)
        if isinstance(params, set) or not params:  # let the base class explain
            return super().add_param_group({**param_group, "params": params})
        names = param_group.get("param_names")
        entries = [(n, p) for n, p in zip(names, params)] if names is not None else [
            e if isinstance(e, tuple) and len(e) == 2 else (None, e) for e in params]
        flag = param_group.get("use_muon")
        kinds = {True: [], False: []}
        for name, p in entries:
            use = bool(flag) if flag is not None else (
                isinstance(p, torch.Tensor) and self._muon_by_default(name, p))
            kinds[use].append((name, p) if name is not None else p)
        rest = {k: v for k, v in param_group.items() if k not in ("params", "param_names")}
        for use, group_params in kinds.items():
            if group_params:
                extra = {} if use else {k: v for k, v in self._adam_defaults.items() if k not in rest}
                super().add_param_group({**rest, **extra, "params": group_params, "use_muon": use})

    # -- the two chains ----------------------------------------------------------------------------
    def check_group(self, group):
        super().check_group(group)
        check_nonneg("eps", group["eps"])
        if not group["use_muon"]:
            check_betas("betas", group["betas"])
            return
        for p in group["params"]:
            if p.ndim < 2 or torch.is_complex(p):
                raise ValueError(
                    f"MuonAdam's Muon groups take real tensors with ndim >= 2, got one of shape {tuple(p.shape)}"
                    f"{' (complex)' if torch.is_complex(p) else ''}; put it in a group with use_muon=False")
        check_nonneg("momentum", group["momentum"])
        check_orthogonalization(group)

    def core(self, group):
        mask = group["decay_mask"]
        if not group["use_muon"]:  # optimlab.AdamW's chain
            chain = [scale_by_adam()]
            if group["weight_decay"] != 0:
                chain.append(add_decayed_weights("weight_decay", mask))
            return chain
        chain = [ema_momentum(nesterov=group["nesterov"]),  # optimlab.Muon's chain
                 orthogonalize_flat(ns_steps=group["ns_steps"], adjust_lr_fn=group["adjust_lr_fn"])]
        if group["weight_decay"] != 0:
            chain.append(decay_weights("weight_decay", mask, lr_key="lr"))
        return chain
