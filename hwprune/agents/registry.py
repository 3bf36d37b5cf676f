"""Searchers by name: the registry, its entry-point group, and the built-in searchers' modules.

The built-in searchers register themselves (``@SEARCHERS.register("name")``) when their module
is imported; the registry imports those modules by name on its first lookup, as it imports a
plugin's module named in the ``hwprune.searchers`` entry-point group, so no searcher module
has to be imported to look one up and the searcher modules import this one, never the reverse.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from hwprune.agents.base import Searcher
from hwprune.registry import Registry

__all__ = [
    "ENTRY_POINT_GROUP",
    "SEARCHERS",
    "check_searcher_class",
    "get_searcher",
    "list_searchers",
]

#: The entry-point group other packages list their searchers in (``name = "pkg.mod:Class"``).
ENTRY_POINT_GROUP = "hwprune.searchers"

#: The modules whose import registers the built-in searchers.
BUILTIN_MODULES: tuple[str, ...] = (
    "hwprune.agents.amc",
    "hwprune.agents.baselines",
    "hwprune.agents.latency_knapsack",
    "hwprune.agents.ppo_lagrangian",
    "hwprune.agents.qlp",
)


def check_searcher_class(name: str, cls: Any) -> None:
    """Raise TypeError saying what ``cls`` lacks to be a searcher; give it its registry name.

    A searcher is a ``Searcher`` subclass that defines ``_run(space, evaluate, *,
    checkpoint_dir)`` and takes ``seed`` and its options as keywords.
    """
    if not (isinstance(cls, type) and issubclass(cls, Searcher)):
        raise TypeError(f"{cls!r} is not a subclass of hwprune.agents.Searcher")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise TypeError(
            f"{cls.__qualname__} is not a complete searcher: it needs {missing} "
            "(a searcher defines _run(space, evaluate, *, checkpoint_dir))"
        )
    cls.name = name


def _import_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


SEARCHERS: Registry[type[Searcher]] = Registry(
    "searcher", entry_point_group=ENTRY_POINT_GROUP, check=check_searcher_class
)
SEARCHERS.defer(_import_builtins)


def get_searcher(name: str, **kwargs: Any) -> Searcher:
    """A new searcher ``name`` (built-in or a plugin's) with its options."""
    return SEARCHERS.get(name)(**kwargs)


def list_searchers() -> list[str]:
    """The names of every searcher, built-in and installed."""
    return SEARCHERS.names()
