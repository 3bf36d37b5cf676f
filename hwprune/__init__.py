"""hwprune: hardware-aware neural-network pruning to budgets measured on the deployment runtime.

``import hwprune`` stays light: ``prune``, ``resume``, ``save``, ``restore`` and
``load_pruned`` (see ``hwprune.api``) import torch, onnx and SB3 on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "prune", "resume", "save", "restore", "load_pruned", "PruneConfig"]

_LAZY = {
    "prune": "hwprune.api",
    "resume": "hwprune.api",
    "save": "hwprune.api",
    "restore": "hwprune.api",
    "load_pruned": "hwprune.api",
    "PruneConfig": "hwprune.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hwprune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
