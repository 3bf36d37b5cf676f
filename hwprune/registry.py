"""A small name -> constructor registry with "did you mean" on a typo.

Models, datasets, searchers and importance criteria each keep one.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from hwprune.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._deferred: Callable[[], None] | None = None

    def defer(self, loader: Callable[[], None]) -> None:
        """Make ``loader``'s registrations on first use (before the first lookup or any later
        ``register``), not now: for names whose listing needs a heavy import (torchvision's
        models), so a process that only unpickles a built-in model does not pay for it."""
        self._deferred = loader

    def _load(self) -> None:
        loader, self._deferred = self._deferred, None
        if loader is not None:
            loader()

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator. Duplicates are an error."""
        self._load()  # a deferred name registered later is a duplicate all the same

        def add(item: T) -> T:
            key = name.lower()
            if key in self._items:
                raise ValueError(f"a {self.kind} named {key!r} is already registered")
            self._items[key] = item
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        self._load()
        key = str(name).lower()
        if key not in self._items:
            close = difflib.get_close_matches(key, list(self._items), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            shown = ", ".join(sorted(self._items)[:12])
            more = ", ..." if len(self._items) > 12 else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Known: {shown}{more}")
        return self._items[key]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_callable(spec: str, *, kind: str, not_callable: str) -> Any:
    """The callable named ``package.module:attr``: user code, imported because the user named it.

    ``kind`` says what the spec is for in messages ("model", "task"); ``not_callable`` is the
    sentence given when the attribute exists but cannot be called.
    """
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} for {kind} {spec!r}: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r} ({kind} {spec!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(not_callable)
    return target
