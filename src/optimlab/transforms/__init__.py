"""Gradient transforms: the building blocks every optimizer is chained from.

Every module here (not starting with ``_``) is imported and its ``__all__`` re-exported.
"""

from .._discover import reexport

__all__: list[str] = []
reexport(__name__, __path__, globals(), __all__)
