"""Compatibility: the run moved to ``hwprune.api`` (front door), ``hwprune.config`` (options)
and ``hwprune.run`` (the stages). Run directory layout::

    RUN/config.json          every option needed to rerun (PruneConfig.to_dict)
    RUN/episodes.jsonl       every evaluated candidate, appended as it completes
    RUN/oracle-cache.sqlite  the oracles' measurements, keyed by graph and machine
    RUN/machine.json         the machine the candidates were timed on (checked on resume)
    RUN/agent/               the searcher's checkpoint
    RUN/search.json          amc, qlp: episodes per batch, fixed when the search began
    RUN/policy.json          the chosen keep ratios
    RUN/model.pt             pruned weights + policy + base model meta (see load_pruned)
    RUN/model.onnx           the verified export (model.engine where TensorRT is installed)
    RUN/report.md, RUN/report.json, RUN/plots/*.png
    RUN/.hwprune.lock        held (flock) by the one process working on the run; removed when
                             it stops (finished, failed or interrupted)
"""

from __future__ import annotations

from hwprune.api import load_pruned, model_input_shape, prune, resume
from hwprune.config import read_config_file, read_run_config
from hwprune.progress import ProgressEvent
from hwprune.run.choose import repair_candidate
from hwprune.run.final import MAX_REPAIRS
from hwprune.run.result import BudgetCheck, PruneResult

_repair_candidate = repair_candidate

__all__ = [
    "PruneResult",
    "BudgetCheck",
    "ProgressEvent",
    "prune",
    "resume",
    "load_pruned",
    "model_input_shape",
    "read_config_file",
    "read_run_config",
    "MAX_REPAIRS",
]


def _verify(evaluator, module):  # noqa: ANN001, ANN202  (kept for tests/benchmarks)
    """Every constraint's oracle on the final module, measured afresh (median of 3 calls)."""
    return evaluator.remeasure(module)
