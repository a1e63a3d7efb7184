"""The catalogue: torch.optim's algorithms with torch's names, signatures and defaults."""

from ._base import Optimizer
from .adam import Adam, AdamW
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
