"""The catalogue: torch.optim's algorithms with torch's names, signatures and defaults.

Every module here (not starting with ``_``) is imported and its ``__all__`` re-exported, so
adding an optimizer is adding a module.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from ._base import Optimizer

__all__ = ["Optimizer"]
for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if not _info.name.startswith("_"):
        _mod = _importlib.import_module(f"{__name__}.{_info.name}")
        for _name in _mod.__all__:
            globals()[_name] = getattr(_mod, _name)
            __all__.append(_name)
