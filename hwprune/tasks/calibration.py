"""BatchNorm helpers a task's ``calibrate`` builds on: re-estimate the running statistics of a
freshly pruned model from a few batches, and find the layers left at their reset values."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from hwprune.errors import ConfigError, DataError

__all__ = ["reestimate_bn_on", "reset_batchnorms"]

_EMPTY = object()


def reset_batchnorms(model: Any) -> list[str]:
    """The BatchNorm layers of ``model`` whose running statistics are at their reset values
    (mean 0, variance 1, no batch counted): reset and never refilled, or never trained."""
    import torch
    from torch import nn

    found = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_mean is None:
            continue
        counted = m.num_batches_tracked
        if counted is not None and int(counted) != 0:
            continue
        with torch.no_grad():
            if bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all()):
                found.append(name)
    return found


def reestimate_bn_on(model: Any, loader: Iterable[Any], *, batches: int = 8) -> int:
    """Reset and re-estimate every BatchNorm's statistics from up to ``batches`` batches of
    ``loader``.

    Cumulative averages (momentum None) in train mode for BN only; the model
    ends in eval mode. Returns the number of batches run. A loader that yields
    no batch raises DataError and leaves the statistics as they were: reset
    statistics with nothing to refill them would normalise with mean 0 and variance 1.
    """
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not bns:
        return 0
    if not isinstance(batches, int) or isinstance(batches, bool) or batches < 1:
        raise ConfigError(f"batches must be a positive integer, got {batches!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch_iter = iter(loader)
    first = next(batch_iter, _EMPTY)
    if first is _EMPTY:
        raise DataError(
            f"the calibration data ({type(loader).__name__}) yielded no batch; BatchNorm "
            "re-estimation needs at least one batch of inputs (the statistics were left as they "
            "were)"
        )
    from hwprune.train.loop import cumulative_bn

    n = 0
    with cumulative_bn(model, bns):
        for batch in itertools.chain([first], batch_iter):
            if n >= batches:
                break
            _forward(model, batch, device)
            n += 1
    return n


def _forward(model: Any, batch: Any, device: Any) -> None:
    if isinstance(batch, Mapping):
        model(**{k: v.to(device) for k, v in batch.items()})
    elif isinstance(batch, (tuple, list)):
        x = batch[0]
        if isinstance(x, Mapping):
            model(**{k: v.to(device) for k, v in x.items()})
        elif isinstance(x, (tuple, list)):
            model(*(t.to(device) for t in x))
        else:
            model(x.to(device))
    else:
        model(batch.to(device))
