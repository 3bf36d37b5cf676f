"""A small name -> constructor registry with "did you mean" on a typo.

Models, datasets, searchers and importance criteria each keep one. A registry
with an ``entry_point_group`` also holds what installed packages list in that
group (``hwprune.searchers`` for searchers): the group is read when a name is
not known yet and when the names are listed, and a plugin's module is imported
when its name is first used. A plugin cannot take a name already registered.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from hwprune.errors import ConfigError, UnknownNameError

log = logging.getLogger(__name__)

T = TypeVar("T")


def _target(obj: Any) -> str:
    """``module:attr`` of a registered object, the form an entry point names it by."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


class UserExitError(ConfigError):
    """User code named on the command line called ``exit()``: an error, not the end of hwprune."""


class Registry(Generic[T]):
    """Names to objects. ``check(name, obj)`` refuses an object that lacks the interface (a
    registration: TypeError; a plugin: ConfigError) and may complete it (set its name)."""

    def __init__(
        self,
        kind: str,
        *,
        entry_point_group: str | None = None,
        check: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._check = check
        self._items: dict[str, T] = {}
        self._plugins: dict[str, Any] = {}  # name -> importlib.metadata.EntryPoint, not loaded
        self._shadowed: set[tuple[str, str]] = set()  # plugins warned about for a taken name
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
            if key in self._items or key in self._plugins:
                raise ValueError(f"a {self.kind} named {key!r} is already registered")
            if self._check is not None:
                self._check(key, item)
            self._items[key] = item
            return item

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plugin's or a registration's); a name not registered is no error."""
        key = str(name).lower()
        self._items.pop(key, None)
        self._plugins.pop(key, None)

    def _discover(self) -> None:
        """Add the entry points of ``entry_point_group`` not seen yet (none is imported here)."""
        if self.entry_point_group is None:
            return
        from importlib.metadata import entry_points

        try:
            found = entry_points(group=self.entry_point_group)
        except Exception as exc:  # a broken distribution's metadata must not hide the built-ins
            log.warning("could not read the %s entry points: %s", self.entry_point_group, exc)
            return
        for ep in found:
            key = ep.name.strip().lower()
            if key in self._plugins:
                continue
            if key not in self._items:
                self._plugins[key] = ep
            elif _target(self._items[key]) != ep.value and (key, ep.value) not in self._shadowed:
                self._shadowed.add((key, ep.value))
                log.warning("ignoring the %s %r of entry point %r: that name is already %s",
                            self.kind, key, ep.value, _target(self._items[key]))  # fmt: skip

    def _load_plugin(self, key: str) -> T:
        ep = self._plugins[key]
        where = f"entry point '{ep.name} = {ep.value}' of group {self.entry_point_group}"
        try:
            obj = ep.load()
        except Exception as exc:
            raise ConfigError(
                f"{self.kind} {key!r} ({where}) cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        if self._check is not None:
            try:
                self._check(key, obj)
            except TypeError as exc:
                raise ConfigError(f"{self.kind} {key!r} ({where}): {exc}") from None
        del self._plugins[key]
        self._items[key] = obj
        return obj

    def get(self, name: str) -> T:
        self._load()
        key = str(name).lower()
        if key not in self._items and key not in self._plugins:
            self._discover()
        if key in self._plugins:
            return self._load_plugin(key)
        if key not in self._items:
            known = sorted({*self._items, *self._plugins})
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            shown = ", ".join(known[:12])
            more = ", ..." if len(known) > 12 else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Known: {shown}{more}")
        return self._items[key]

    def names(self) -> list[str]:
        self._load()
        self._discover()
        return sorted({*self._items, *self._plugins})

    def __contains__(self, name: object) -> bool:
        self._load()
        key = str(name).lower()
        if key not in self._items and key not in self._plugins:
            self._discover()
        return key in self._items or key in self._plugins

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_callable(spec: str, *, kind: str, not_callable: str) -> Any:
    """The callable named ``package.module:attr``: user code, imported because the user named it.

    The module is looked up in the current folder first, as ``python -m`` does (the
    ``hwprune`` console script does not put it on ``sys.path`` itself). ``kind`` says what
    the spec is for in messages ("model", "task"); ``not_callable`` is the sentence given when
    the attribute exists but cannot be called.
    """
    module_name, _, attr = spec.partition(":")
    _current_folder_on_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _names_the_module_itself(exc, module_name):
            raise _import_failed(exc, module_name, spec=spec, kind=kind) from exc
        raise ConfigError(
            f"cannot import module {module_name!r} for {kind} {spec!r}: no module named "
            f"{exc.name!r} in the current folder ({os.getcwd()}) or on the Python path"
        ) from None
    except SystemExit as exc:
        raise UserExitError(
            f"importing {module_name} for {kind} {spec!r} called {exit_call(exc)}; "
            "a module must not exit when it is imported"
        ) from None
    except Exception as exc:
        raise _import_failed(exc, module_name, spec=spec, kind=kind) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr!r} ({kind} {spec!r})"
            ) from None
    if not callable(target):
        raise ConfigError(not_callable)
    return target


def call_user(fn: Callable[..., Any], *args: Any, spec: str, doing: str, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, where ``fn`` is user code named ``spec``; an ``exit()`` in it is
    a UserExitError naming ``spec`` and what it was ``doing`` ("building the model"), not a
    silent end of the process. Other exceptions propagate (the caller words them)."""
    try:
        return fn(*args, **kwargs)
    except SystemExit as exc:
        raise UserExitError(f"{spec} called {exit_call(exc)} while {doing}") from None


def exit_call(exc: SystemExit) -> str:
    """How the user's code exited, as written: ``exit()``, ``exit(0)``, ``exit('bye')``."""
    return "exit()" if exc.code is None else f"exit({exc.code!r})"


def _current_folder_on_path() -> None:
    # At the front, as ``python -m`` puts it: the user's mod.py wins over an installed mod.
    # Kept there, so worker processes (spawned with this sys.path) import it too.
    here = os.getcwd()
    if not any(os.path.abspath(p or os.curdir) == here for p in sys.path):
        sys.path.insert(0, here)


def _names_the_module_itself(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether ``exc`` says the named module (or a package above it) is missing, rather than
    something the module imports."""
    missing = exc.name or ""
    return bool(missing) and (module_name == missing or module_name.startswith(missing + "."))


def _import_failed(exc: BaseException, module_name: str, *, spec: str, kind: str) -> ConfigError:
    """The module's own error, one line: what it raised and where in the user's files."""
    text = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
    first = (text.strip().splitlines() or [""])[0]
    where = _where(exc, module_name)
    return ConfigError(
        f"importing {module_name} for {kind} {spec!r} raised {type(exc).__name__}"
        + (f": {first}" if first else "")
        + (f" ({where})" if where else "")
    )


def _where(exc: BaseException, module_name: str) -> str:
    """ "mod.py line 3": the line of the user's module that raised (a syntax error's own line;
    else the deepest frame in the named module's file, else the deepest outside importlib)."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{_shown(exc.filename)} line {exc.lineno}"
    frames = [(f.f_code.co_filename, n) for f, n in traceback.walk_tb(exc.__traceback__)]
    frames = [(name, n) for name, n in frames if not name.startswith("<")]
    origin = sys.modules.get(module_name)
    origin_file = getattr(origin, "__file__", None)
    if origin_file is None:
        with contextlib.suppress(ImportError, ValueError):
            found = importlib.util.find_spec(module_name)
            origin_file = found.origin if found is not None else None
    own = [(name, n) for name, n in frames if origin_file and _same(name, origin_file)]
    chosen = own[-1] if own else (frames[-1] if frames else None)
    return "" if chosen is None else f"{_shown(chosen[0])} line {chosen[1]}"


def _same(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _shown(filename: str) -> str:
    """A file of the user's, relative to the current folder when it lies below it."""
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(filename)
        if not rel.startswith(os.pardir):
            return rel
    return filename
