"""The evaluator's settings, grouped and typed: how it measures, and the built-in task's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from oracles import MeasurementCache

__all__ = ["EvaluatorOptions", "ProxyOptions", "split_options"]


@dataclass(frozen=True)
class EvaluatorOptions:
    """How an :class:`Evaluator` measures, remembers and reports.

    ``cache``: the oracles' measurements across runs; ``log_path``: the episodes log
    (appended to, and read back on resume); ``seed``: the surrogate's audit draws (and the
    built-in task's fixed images); ``opset``/``allow_trace_warnings``: the candidates' ONNX
    export (see ``export_onnx``: a forward that decides on input values); ``surrogate``
    (auto, on, off): timed values predicted where the search allows it (see
    hwprune.evaluate.surrogate), decided in ``calibrate``; ``on_outcome``: called with
    every new outcome; ``racing``: score a candidate on a growing sample of the task's images
    and stop once it is clearly worse than the best feasible one or at chance, at
    ``race_confidence`` (``hwprune.evaluate.racing``; a task with a proportion score and a
    ``score_stream`` only).
    """

    cache: MeasurementCache | None = None
    log_path: str | None = None
    seed: int = 0
    opset: int | None = None
    allow_trace_warnings: bool = False
    surrogate: str = "off"
    on_outcome: Callable[[Any], None] | None = None  # called with every new Outcome
    racing: bool = False
    race_confidence: float = 0.95


@dataclass(frozen=True)
class ProxyOptions:
    """The built-in classification task of ``Evaluator(data=...)``: BN re-estimation on
    ``bn_batches`` x ``bn_batch_size`` training images, the proxy on at most
    ``max_eval_samples`` search images in batches of ``eval_batch_size``, on ``device``;
    ``bn_settle``: fewer BN batches, until the statistics settle to within it (None: all)."""

    bn_batches: int = 4
    bn_batch_size: int = 64
    eval_batch_size: int = 256
    max_eval_samples: int | None = 2000
    device: str = "cpu"
    bn_settle: float | None = None


def split_options(
    options: EvaluatorOptions | None,
    proxy: ProxyOptions | None,
    settings: Mapping[str, Any],
    *,
    shortcut: bool,
) -> tuple[EvaluatorOptions, ProxyOptions]:
    """``options`` and ``proxy`` with ``settings`` (options given one by one) filled in;
    TypeError for a setting neither names, as for any unknown keyword."""
    own = {f.name for f in fields(EvaluatorOptions)}
    task = {f.name for f in fields(ProxyOptions)} if shortcut else set()
    unknown = sorted(set(settings) - own - task)
    if unknown:
        raise TypeError(f"Evaluator got an unexpected keyword argument {unknown[0]!r}")
    if proxy is not None and not shortcut:
        raise TypeError("Evaluator takes proxy= only with data= (the built-in task's options)")
    options = replace(
        options or EvaluatorOptions(), **{k: settings[k] for k in own & set(settings)}
    )
    proxy = replace(proxy or ProxyOptions(), **{k: settings[k] for k in task & set(settings)})
    return options, proxy
