"""Re-export every public module of a package (what ``optimizers`` and ``transforms`` do, so
that adding an optimizer or a transform is adding a module)."""

from __future__ import annotations

import importlib
import pkgutil


def reexport(package: str, path, namespace: dict, names: list[str]) -> None:
    """Import each module of ``package`` not starting with ``_`` (sorted by name) and put the
    names in its ``__all__`` into ``namespace`` and ``names``."""
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{package}.{info.name}")
            for name in module.__all__:
                namespace[name] = getattr(module, name)
                names.append(name)
