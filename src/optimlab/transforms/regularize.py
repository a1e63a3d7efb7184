"""Regularisers: L2 added to the gradient, decoupled weight decay (lr-scaled and
lr-independent), and L1 by proximal soft-thresholding. Each takes a ``mask``.

* ``add_l2(key)``:                u <- u + wd * p                       (coupled L2, torch's
                                                                          ``weight_decay`` in SGD/Adam)
* ``add_decayed_weights(key)``:   u <- u + wd * p   *after* the preconditioner, so that the
                                  applied step is ``p <- p - lr * (u + wd * p)`` (AdamW; Loshchilov &
                                  Hutter, 2019)
* ``decay_weights(key)``:         p <- (1 - wd) * p, not scaled by the learning rate
                                  (lr-independent decoupled decay)
* ``l1_prox(key)``:               after the step, p <- sign(p) * max(|p| - lr * l1, 0), which sets
                                  small weights to exact zeros (ISTA / proximal gradient).

Masks work on the flat compiled path too (``masks_on_flat``): there the engine hands each
masked transform the mask's verdict per tensor (``s["selected"]``), spread over the entries by
``u.segments.expand``, and the transform selects with ``torch.where``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core import Transform, Updates, axpy, axpy_, scale_

__all__ = ["add_l2", "add_decayed_weights", "decay_weights", "l1_prox"]


def _selected(u: Updates, s: dict):
    """On the flat path, the mask as a bool tensor broadcastable to the entries (rows x 1)."""
    return u.segments.expand(s["selected"])


def _add_selected_decay(u: Updates, s: dict) -> None:
    """On the flat path: ``u <- u + wd * p`` on the tensors the mask selects (add_l2 and
    add_decayed_weights differ only in where they sit in a chain)."""
    (x,), (p,) = u.updates, u.params
    u.replace([x + torch.where(_selected(u, s), p * s["wd"], 0)], fresh=True)


def _pick(u: Updates, mask, lists):
    """The masked sub-lists (the lists themselves when there is no mask)."""
    if mask is None:
        return lists
    idx = u.select(mask)
    return [[xs[i] for i in idx] for xs in lists]


@dataclasses.dataclass(frozen=True)
class add_l2(Transform):
    """Coupled L2: ``u <- u + wd * p`` (the gradient of ``wd/2 * ||p||^2``)."""

    key: str = "weight_decay"
    mask: Any = None
    masks_on_flat = True

    @property
    def hyperparameters(self):
        return (self.key,)

    def scalars(self, group, step, host):
        return {"wd": group[self.key]}

    def update(self, u, s):
        if self.mask is not None and u.segments is not None:
            _add_selected_decay(u, s)
            return
        if self.mask is None:
            # out-of-place: also the first copy of the user's gradient
            u.replace(axpy(u.updates, s["wd"], u.params), fresh=True)
            return
        ups = u.mutable()
        sel_u, sel_p = _pick(u, self.mask, [ups, u.params])
        axpy_(sel_u, s["wd"], sel_p)


@dataclasses.dataclass(frozen=True)
class add_decayed_weights(Transform):
    """Decoupled weight decay: ``u <- u + wd * p`` placed after the preconditioner, so the
    applied step is ``p <- p - lr * u - lr * wd * p`` (AdamW)."""

    key: str = "weight_decay"
    mask: Any = None
    masks_on_flat = True

    @property
    def hyperparameters(self):
        return (self.key,)

    def scalars(self, group, step, host):
        return {"wd": group[self.key]}

    def update(self, u, s):
        if self.mask is not None and u.segments is not None:
            _add_selected_decay(u, s)
            return
        ups = u.mutable()
        sel_u, sel_p = _pick(u, self.mask, [ups, u.params])
        axpy_(sel_u, s["wd"], sel_p)


@dataclasses.dataclass(frozen=True)
class decay_weights(Transform):
    """Multiplicative decay of the weights before the update is applied:
    ``p <- (1 - wd) * p`` (lr-independent), or with ``lr_key``, ``p <- (1 - lr * wd) * p``
    (torch's Adafactor and Muon decay this way: the same step as ``add_decayed_weights`` up to
    rounding)."""

    key: str = "independent_decay"
    mask: Any = None
    lr_key: str | None = None
    masks_on_flat = True

    @property
    def hyperparameters(self):
        return (self.key,)

    def scalars(self, group, step, host):
        scale = 1.0 if self.lr_key is None else float(group[self.lr_key])
        return {"keep": 1.0 - scale * group[self.key]}

    def update(self, u, s):
        if self.mask is not None and u.segments is not None:
            (p,) = u.params
            p.mul_(torch.where(_selected(u, s), s["keep"], 1))
            return
        if self.mask is None:
            u.scale_params(s["keep"])  # (with a deferred update, each p just before its own)
            return
        (sel_p,) = _pick(u, self.mask, [u.params])
        scale_(sel_p, s["keep"])


@dataclasses.dataclass(frozen=True)
class l1_prox(Transform):
    """Proximal L1: after the gradient step, soft-threshold by ``lr * l1``
    (``p <- sign(p) * max(|p| - lr * l1, 0)``), producing exact zeros."""

    key: str = "l1"
    lr_key: str | None = "lr"
    mask: Any = None
    has_after = True
    masks_on_flat = True

    @property
    def hyperparameters(self):
        return (self.key,)

    def scalars(self, group, step, host):
        lr = 1.0 if self.lr_key is None else float(group[self.lr_key])
        return {"thresh": lr * group[self.key]}

    def update(self, u, s):
        pass

    def after(self, u, s):
        if self.mask is not None and u.segments is not None:
            (p,) = u.params
            shrunk = p.abs().sub(s["thresh"]).clamp(min=0) * p.sign()
            p.copy_(torch.where(_selected(u, s), shrunk, p))
            return
        (sel_p,) = _pick(u, self.mask, [u.params])
        for p in sel_p:
            # sign(p) * relu(|p| - t), written with in-place ops where possible
            shrunk = p.abs().sub_(s["thresh"]).clamp_(min=0)
            p.copy_(shrunk.mul_(p.sign()))
