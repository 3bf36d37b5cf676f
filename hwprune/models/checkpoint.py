"""Saving and safely loading model checkpoints (``torch.load(..., weights_only=True)`` only)."""

from __future__ import annotations

import io
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.errors import CheckpointError
from hwprune.files import write_atomic

__all__ = ["Checkpoint", "read_checkpoint", "load_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

_SHOWN = 5  # how many offending keys an error message lists


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds: the tensors and the metadata saved beside them."""

    state_dict: Mapping[str, torch.Tensor]
    meta: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""


def _few(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file: ``{"state_dict": ..., "meta": ...}`` or a bare state dict.

    Raises CheckpointError for a missing file, a file torch cannot read, or one
    that needs unpickling arbitrary objects (refused: weights_only=True only).
    """
    from hwprune.config import input_file_problem

    path = Path(path)
    problem = input_file_problem(path)
    if problem is not None:  # a folder or a device is named, never handed to torch.load
        raise CheckpointError(f"checkpoint file {str(path)!r} {problem}")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(
                f"cannot read checkpoint {str(path)!r}: it is not a torch.save file of tensors"
            ) from exc
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds the Python object {found.group(1)} and can only be "
            "loaded with weights_only=True, which refuses it; save "
            "{'state_dict': model.state_dict(), 'meta': {...plain values...}} instead"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors ...
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: it is not a torch.save file ({exc})"
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state, meta = obj["state_dict"], obj.get("meta") or {}
    else:
        state, meta = obj, {}
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds no state dict (a mapping of names to tensors)"
        )
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} has 'meta' that is not a dict")
    state = dict(state)
    # A model saved from DataParallel/DistributedDataParallel prefixes every key.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return Checkpoint(state_dict=state, meta=dict(meta), path=str(path))


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load the weights in ``path`` into ``model`` (in place) and return the checkpoint's meta.

    Every key must match in name and shape; otherwise CheckpointError lists a few
    of the keys that are missing, unexpected or of another shape.
    """
    ckpt = read_checkpoint(path)
    check_state_dict(model, ckpt.state_dict, where=ckpt.path)
    model.load_state_dict(ckpt.state_dict, strict=True)
    log.debug("loaded %d tensors from %s", len(ckpt.state_dict), ckpt.path)
    return dict(ckpt.meta)


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, where: str = "the state dict"
) -> None:
    """Raise CheckpointError if ``state`` does not fit ``model`` key for key and shape for shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_few(mismatched)})")
    if problems:
        raise CheckpointError(
            f"checkpoint {where!r} does not fit the model {type(model).__name__}: "
            + "; ".join(problems)
        )


def save_checkpoint(model: nn.Module, path: str | Path, *, meta: Mapping[str, Any]) -> Path:
    """Save ``{"state_dict": ..., "meta": meta}`` so that weights_only loading can read it back.

    ``meta`` holds plain values (str, int, float, bool, None, lists, tuples, dicts);
    anything else would need unpickling and is refused here rather than on load.
    """
    _check_plain(meta, "meta")
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Serialised in memory first: torch.save on a full disk raises a RuntimeError from its
    # zip writer with no path in it; the bytes written by write_atomic fail as a one-line
    # WriteError naming the file and the space it needs, with nothing left behind.
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "meta": dict(meta)}, buffer)
    return write_atomic(path, buffer.getbuffer())


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where} has a non-string key {k!r}; use str keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise CheckpointError(
        f"{where} is a {type(value).__name__}; checkpoint meta accepts only str, int, float, "
        "bool, None, lists, tuples and dicts of those"
    )
