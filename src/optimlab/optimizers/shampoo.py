"""Kronecker-factored preconditioners: Shampoo and SOAP.

Shampoo (Gupta, Koren & Singer, ICML 2018; Anil et al., "Scalable Second Order Optimization
for Deep Learning", 2020), per block ``G`` of each gradient (see
:mod:`optimlab.transforms.shampoo`)::

    m <- b1 m + (1 - b1) g,    M = m / (1 - b1^t)
    L <- b2 L + (1 - b2) G G^T,   R <- b2 R + (1 - b2) G^T G      (b2 = 1: sums, as in the paper)
    every precondition_frequency steps: P_L = (L / (1 - b2^t) + matrix_eps I)^(-1/4), same for R
    D = P_L M P_R,   D <- D ||A|| / ||D||     (grafting: A = Adam's step M / (sqrt(v_hat) + eps), or M)
    p <- p - lr (D + weight_decay p)          (then heavy-ball ``momentum`` on that step, if set)

SOAP (Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR 2025): Adam in
the eigenbasis of Shampoo's factors, refreshed every ``precondition_frequency`` steps by one
power-iteration step and a QR (see :mod:`optimlab.transforms.soap`)::

    v <- b2 v + (1 - b2) (Q_L^T G Q_R)^2,   u = Q_L (Q_L^T m Q_R / (sqrt(v) + eps)) Q_R^T
    p <- p - lr c_t u,   p <- (1 - lr weight_decay) p

Example::

    >>> opt = optimlab.Shampoo(model.parameters(), lr=1e-3, block_size=128)
    >>> opt = optimlab.SOAP(model.parameters(), lr=3e-3, weight_decay=0.01)
"""

from __future__ import annotations

import torch

from ..core import check_beta, check_betas, check_int, check_nonneg
from ..registry import register
from ..transforms.momentum import trace
from ..transforms.regularize import add_decayed_weights
from ..transforms.shampoo import GRAFTINGS, scale_by_shampoo
from ..transforms.soap import scale_by_soap
from ._base import Optimizer

__all__ = ["Shampoo", "SOAP"]

_ROOT_DTYPES = {"float64": torch.float64, "float32": torch.float32, torch.float64: torch.float64,
                torch.float32: torch.float32}


def _real(opt, group) -> None:
    for p in group["params"]:
        if torch.is_complex(p):
            raise ValueError(f"{type(opt).__name__} does not support complex parameters (got one of shape "
                             f"{tuple(p.shape)}); optimise view_as_real(p) instead")


@register("shampoo")
class Shampoo(Optimizer):
    """Shampoo: Kronecker-factored preconditioning with inverse roots, blocking and grafting.

    ``betas = (b1, b2)``: ``b1`` filters the gradient (Adam's first moment), ``b2`` averages the
    statistics (``b2 = 1``: the paper's running sums, and AdaGrad grafting).
    ``grafting``: ``"adam"`` (each block's step has the norm of Adam's step, AdaGrad's for
    ``b2 = 1``), ``"sgd"`` (the norm of the filtered gradient) or ``"none"``.
    ``block_size``: dims longer than this are cut into blocks with their own factors.
    ``precondition_frequency``: steps between inverse-root computations, the first at
    ``start_preconditioning_step``; before it the step is the grafting method's.
    ``matrix_eps`` regularises the factors' roots, computed in ``root_dtype`` ("float64" or
    "float32"). ``weight_decay`` is decoupled (AdamW's). ``momentum`` (heavy ball, optionally
    ``nesterov``) acts on the grafted step. Vectors and scalars get Adam's diagonal preconditioner.
    Example: ``optimlab.Shampoo(model.parameters(), lr=1e-3, precondition_frequency=10)``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum=0.0,
                 nesterov=False, *, matrix_eps=1e-12, block_size=256, precondition_frequency=10,
                 start_preconditioning_step=10, grafting="adam", root_dtype="float64", maximize=False, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        nesterov=nesterov, matrix_eps=matrix_eps, block_size=block_size,
                        precondition_frequency=precondition_frequency,
                        start_preconditioning_step=start_preconditioning_step, grafting=grafting,
                        root_dtype=root_dtype, maximize=maximize)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        _real(self, group)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas!r} (expected a pair (b1, b2))")
        check_beta("betas[0]", betas[0])
        check_nonneg("betas[1]", betas[1])
        if not 0.0 <= betas[1] <= 1.0:
            raise ValueError(f"Invalid betas[1]: {betas[1]} (must be in [0, 1]; 1 sums the statistics)")
        check_nonneg("eps", group["eps"])
        check_nonneg("matrix_eps", group["matrix_eps"])
        check_nonneg("momentum", group["momentum"])
        if group["nesterov"] and group["momentum"] <= 0:
            raise ValueError(f"Invalid nesterov: True with momentum={group['momentum']} (Nesterov needs momentum > 0)")
        check_int("block_size", group["block_size"], minimum=1)
        check_int("precondition_frequency", group["precondition_frequency"], minimum=1)
        check_int("start_preconditioning_step", group["start_preconditioning_step"], minimum=1)
        if group["grafting"] not in GRAFTINGS:
            raise ValueError(f"Invalid grafting: {group['grafting']!r} (expected one of {GRAFTINGS})")
        if group["root_dtype"] not in _ROOT_DTYPES:
            raise ValueError(f"Invalid root_dtype: {group['root_dtype']!r} (expected 'float64' or 'float32')")

    def core(self, group):
        chain = [scale_by_shampoo(grafting=group["grafting"], block_size=group["block_size"],
                                  root_dtype=_ROOT_DTYPES[group["root_dtype"]])]
        if group["weight_decay"] != 0:
            chain.append(add_decayed_weights("weight_decay", group["decay_mask"]))
        if group["momentum"] != 0:
            chain.append(trace(nesterov=group["nesterov"]))
        return chain


@register("soap")
class SOAP(Optimizer):
    """SOAP: Adam in the eigenbasis of Shampoo's preconditioner.

    ``betas``: Adam's; ``shampoo_beta``: the factors' moving-average coefficient (None: ``betas[1]``);
    ``precondition_frequency``: Adam steps between eigenbasis refreshes (power iteration + QR);
    ``max_precond_dim``: longer dims are not rotated (vectors, scalars and tensors with no
    dim short enough get plain Adam); ``weight_decay`` is decoupled, applied after the step;
    ``correct_bias``: Adam's bias correction. Defaults are the paper's.
    The first step only sets up the eigenbases of tensors that have a preconditioned dim; tensors
    without one (biases, norms, scalars) move from the first step, by plain Adam with the counter
    ``t = 1``. The authors' code skips the first step for every parameter, so there those tensors
    move one step later (their Adam counter one step behind ours).
    Example: ``optimlab.SOAP(model.parameters(), lr=3e-3, betas=(0.95, 0.95), weight_decay=0.01)``.
    """

    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=None, eps=1e-8, weight_decay=0.01,
                 precondition_frequency=10, max_precond_dim=10000, correct_bias=True, *, maximize=False, **options):
        defaults = dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
                        precondition_frequency=precondition_frequency, max_precond_dim=max_precond_dim,
                        correct_bias=correct_bias, maximize=maximize)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        _real(self, group)
        check_betas("betas", group["betas"])
        if group["shampoo_beta"] is not None:
            check_beta("shampoo_beta", group["shampoo_beta"])
        check_nonneg("eps", group["eps"])
        check_int("precondition_frequency", group["precondition_frequency"], minimum=1)
        check_int("max_precond_dim", group["max_precond_dim"], minimum=1)
        if not isinstance(group["correct_bias"], bool):
            raise ValueError(f"Invalid correct_bias: {group['correct_bias']!r} (expected True or False)")

    def core(self, group):
        return [scale_by_soap(max_precond_dim=group["max_precond_dim"], mask=group["decay_mask"])]
