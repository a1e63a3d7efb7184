"""Gradient transforms: the building blocks every optimizer is chained from."""

from .adam import scale_by_adam
from .clip import clip_by_global_norm, clip_by_param_norm, clip_by_value
from .momentum import trace
from .regularize import add_decayed_weights, add_l2, decay_weights, l1_prox

__all__ = [
    "scale_by_adam",
    "clip_by_global_norm",
    "clip_by_param_norm",
    "clip_by_value",
    "trace",
    "add_decayed_weights",
    "add_l2",
    "decay_weights",
    "l1_prox",
]
