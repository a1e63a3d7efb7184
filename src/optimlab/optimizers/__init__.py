"""The catalogue: torch.optim's algorithms with torch's names, signatures and defaults.

Every module here (not starting with ``_``) is imported and its ``__all__`` re-exported, so
adding an optimizer is adding a module.
"""

from .._discover import reexport
from ._base import Optimizer

__all__ = ["Optimizer"]
reexport(__name__, __path__, globals(), __all__)
