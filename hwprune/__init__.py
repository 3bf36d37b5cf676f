"""hwprune: hardware-aware neural-network pruning to budgets measured on the deployment runtime.

``import hwprune`` stays light: ``hwprune.prune`` and ``hwprune.load_pruned``
import the pipeline (torch, onnx, SB3) on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "prune", "resume", "load_pruned"]

_LAZY = {
    "prune": "hwprune.pipeline",
    "resume": "hwprune.pipeline",
    "load_pruned": "hwprune.pipeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hwprune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
