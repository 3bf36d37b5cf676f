"""Torch-Pruning's channel-index mapping, made to fail one channel group rather than the trace.

Torch-Pruning infers how channel indices pass through view/reshape, split,
concat, slice, unbind and expand nodes with the functions and classes of
``torch_pruning.dependency.index_mapping``. Two of its failures would end a
whole trace (or never end it), so while ``tolerant_index_mapping`` is entered,
and only then, they are replaced:

- an ``update_*_index_mapping`` function that raises (ShuffleNet's channel
  shuffle: a view to 5-d, a transpose, a view back, where it divides by a
  channel count it inferred as 0) keeps the identity mapping, and the node is
  recorded with the reason: every group through it is left out of the space;
- an index-mapping class's ``__call__`` whose indices grow past any layer's
  channel count, or whose group's traversal passes the work caps (Swin's window
  partitions, MaxViT's grid attention), raises ``MappingBlowup``: the group is
  abandoned instead of running for hours or out of memory.

The replaced names are private to Torch-Pruning, so the versions this was
written against are named here (``SUPPORTED``, pinned in pyproject.toml), and
a Torch-Pruning without one of them is refused with that range.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from importlib import metadata
from types import ModuleType
from typing import Any

from hwprune.errors import HwpruneError

__all__ = [
    "PATCHED_CLASSES",
    "PATCHED_FUNCTIONS",
    "SUPPORTED",
    "MappingBlowup",
    "Unmapped",
    "check_supported",
    "param_names",
    "supported_version",
    "tolerant_index_mapping",
]

#: The Torch-Pruning releases whose index mapping this module replaces (pyproject.toml pins it).
SUPPORTED = "torch-pruning>=1.6,<1.7"
_LOWEST, _BELOW = (1, 6), (1, 7)

#: Functions of ``torch_pruning.dependency.index_mapping`` replaced inside the context.
PATCHED_FUNCTIONS = (
    "update_concat_index_mapping",
    "update_expand_index_mapping",
    "update_flatten_index_mapping",
    "update_reshape_index_mapping",
    "update_slice_index_mapping",
    "update_split_index_mapping",
    "update_unbind_index_mapping",
)
#: Classes of the same module whose ``__call__`` is capped inside the context.
PATCHED_CLASSES = (
    "_ConcatIndexMapping",
    "_FlattenIndexMapping",
    "_GQAIndexMapping",
    "_SliceIndexMapping",
    "_SplitIndexMapping",
)

_MAX_MAPPED = 1 << 15  # more indices than any layer has channels: a mapping gone wrong
# Work caps on one group's traversal. Torch-Pruning walks a group once per distinct index
# set reaching a node; through MaxViT's window/grid partitions every channel arrives alone,
# so one attention group maps ~18 M indices through one reshape 768 times (45-60 s each,
# hours for the model). Sound groups of every torchvision classifier stay far below both:
# at most 8 passes through one mapping (Swin) and 77 k mapped indices (VGG-11 at 224).
_MAX_PASSES = 32  # calls of one index mapping (one reshape, concat, split...) per group
_MAX_GROUP_MAPPED = 1 << 18  # indices mapped, all calls of one group together


class MappingBlowup(ValueError):
    """Torch-Pruning's index mapping grew past any layer's channel count, or past the work caps."""


def supported_version(version: str) -> bool:
    """Whether the Torch-Pruning ``version`` lies in ``SUPPORTED``.

    >>> supported_version("1.6.1"), supported_version("1.5.2"), supported_version("1.7.0")
    (True, False, False)
    """
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits))
    release = tuple(parts + [0] * (2 - len(parts)))
    return _LOWEST <= release < _BELOW


def _index_mapping() -> ModuleType:
    from torch_pruning.dependency import index_mapping

    return index_mapping


def check_supported() -> None:
    """HwpruneError naming ``SUPPORTED`` unless every replaced name exists in the installed
    Torch-Pruning (a release outside the range that still has them is used as it is)."""
    names = vars(_index_mapping())
    missing = [n for n in PATCHED_FUNCTIONS if not callable(names.get(n))]
    missing += [n for n in PATCHED_CLASSES if "__call__" not in vars(names.get(n, object))]
    if missing:
        raise HwpruneError(
            f"the installed torch-pruning {metadata.version('torch-pruning')} has no "
            f"index_mapping.{missing[0]}; hwprune supports {SUPPORTED} "
            f"(pip install '{SUPPORTED}')"
        )


class Unmapped:
    """Nodes whose channel mapping failed, with the reason, read live: groups built later add to
    it."""

    def __init__(self) -> None:
        self.found: list[tuple[Any, str]] = []

    def add(self, node: Any, reason: str) -> None:
        self.found.append((node, reason))

    def get(self, node: Any) -> str | None:
        return next((reason for n, reason in self.found if n is node), None)


def _tolerant(name: str, fn: Callable[..., None], unmapped: Unmapped) -> Callable[..., None]:
    def call(graph: Any, node: Any) -> None:
        try:
            fn(graph, node)
        except Exception as exc:  # Torch-Pruning's inference failed on this node only
            what = name.removeprefix("update_").removesuffix("_index_mapping")
            unmapped.add(node, f"Torch-Pruning cannot map channels through a {what} "
                               f"({type(exc).__name__}: {exc})")  # fmt: skip

    return call


class _Caps:
    """The work one group's traversal has done: passes per mapping, indices mapped in all."""

    def __init__(self) -> None:
        self.passes: dict[int, int] = {}
        self.mapped = 0

    def capped(self, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def call(mapping: Any, idxs: Any) -> Any:
            out = fn(mapping, idxs)
            if len(out) > _MAX_MAPPED:
                raise MappingBlowup(
                    f"channel indices grow past {_MAX_MAPPED} through a reshape it cannot follow"
                )
            self.passes[id(mapping)] = self.passes.get(id(mapping), 0) + 1
            self.mapped += len(out)
            what = type(mapping).__name__.strip("_").removesuffix("IndexMapping").lower()
            if self.passes[id(mapping)] > _MAX_PASSES:
                raise MappingBlowup(
                    f"its traversal passed one {what} mapping more than {_MAX_PASSES} times"
                )
            if self.mapped > _MAX_GROUP_MAPPED:
                raise MappingBlowup(
                    f"its traversal mapped more than {_MAX_GROUP_MAPPED} channel indices"
                )
            return out

        return call


@contextlib.contextmanager
def tolerant_index_mapping(unmapped: Unmapped) -> Iterator[None]:
    """Inside: a node whose channel mapping Torch-Pruning fails is recorded in ``unmapped``
    (identity mapping kept), and a traversal past the caps raises ``MappingBlowup``. The
    original functions are back on exit. Enter it once per traced graph or built group: the
    work caps count from entry."""
    check_supported()
    module = _index_mapping()
    names = vars(module)
    functions = {n: names[n] for n in PATCHED_FUNCTIONS}
    classes = [names[n] for n in PATCHED_CLASSES]
    calls = {c: vars(c)["__call__"] for c in classes}
    caps = _Caps()
    for n, fn in functions.items():
        setattr(module, n, _tolerant(n, fn, unmapped))
    for c, fn in calls.items():
        c.__call__ = caps.capped(fn)
    try:
        yield
    finally:
        for n, fn in functions.items():
            setattr(module, n, fn)
        for c, fn in calls.items():
            c.__call__ = fn


def param_names(graph: Any) -> dict[Any, str]:
    """{parameter: name} of the parameters a DependencyGraph was built with
    (``unwrapped_parameters`` among them)."""
    return graph._param_to_name
