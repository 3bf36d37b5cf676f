"""What a prune run returns: the typed result and one budget's proof."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BudgetCheck", "PruneResult"]


@dataclass(frozen=True)
class BudgetCheck:
    """One budget on the final model: dense value, absolute bound, re-measured value, margin."""

    budget: str
    quantity: str
    oracle: str
    unit: str
    dense: float
    bound: float
    final: float
    met: bool
    margin: float  # 1 - final / bound: the fraction of the bound left unused
    # How ``final`` was obtained: "median" (of repeated timed calls) or "exact" (a count);
    # never "predicted": the proof is a measurement.
    statistic: str = "exact"


@dataclass(frozen=True)
class PruneResult:
    """What a prune run produced: the pruned model, its policy, the proven budgets, metrics, files.

    ``metrics`` holds the task's ``evaluate`` figures for "dense", "pruned"
    (before fine-tuning) and "final" (empty where the task has no evaluate);
    ``accuracy_*`` are their "accuracy" entries (None when the task reports none).
    ``model`` is the pruned nn.Module (``hwprune.save(result.model, path)``).
    """

    run_dir: Path
    policy: Any
    budgets: tuple[BudgetCheck, ...]
    dense: Mapping[str, float]
    final: Mapping[str, float]
    met: Mapping[str, bool]
    accuracy_dense: float | None
    accuracy_pruned: float | None
    accuracy_finetuned: float | None
    params_dense: int
    params_final: int
    stage_seconds: Mapping[str, float]
    paths: Mapping[str, Path]
    searcher: str
    evaluations: int
    first_feasible_evaluation: int | None
    repairs: int
    export_max_abs_diff: float | None
    tensorrt: str
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    score_dense: float | None = None
    score_chosen: float | None = None
    # The score at or below which a candidate counted as at chance (rank_feasible's floor);
    # None when the task gives no chance score.
    score_floor: float | None = None
    proxy: str | None = None  # the built-in task's search proxy (None: the user's task scored)
    proxy_seconds: float | None = None  # mean seconds of BN re-estimation + score per evaluation
    task: str = "classification"
    finetuned: bool = True
    evaluated: bool = True
    openvino_max_abs_diff: float | None = None  # the OpenVINO IR's check; None: no IR written
    # The latency surrogate: mode, decision per timed budget, its checked error (see
    # hwprune.evaluate.surrogate.report); empty for runs without one.
    surrogate: Mapping[str, Any] = field(default_factory=dict)
    # Calls each budget's oracle made in this session (dense, search, confirmation, proof;
    # repeats counted, cache hits not).
    oracle_calls: Mapping[str, int] = field(default_factory=dict)
    # What the searcher recorded of its own work (its ``SearchResult.extra``).
    search_extra: Mapping[str, Any] = field(default_factory=dict)
    # Per timed budget, how precise its timings were: the search's stop rule and what its
    # candidates reached, the dense reference, the final proof (hwprune.evaluate.precision).
    timing: Mapping[str, Any] = field(default_factory=dict)
    # How many times the run was started (1, plus one per resume): stage_seconds add them up.
    parts: int = 1
    # Each model output's shape, dense and final: {name: {"dense": [...], "final": [...]}}.
    output_shapes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The space's groups left whole before the search, and why (unit id -> reason).
    left_whole: Mapping[str, str] = field(default_factory=dict)
    # The search's cost estimate made before it started (hwprune.run.estimate) with the
    # search's actual wall seconds beside it; empty when none was made.
    cost_estimate: Mapping[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False, compare=False)

    @property
    def all_met(self) -> bool:
        return all(self.met.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "policy": None if self.policy is None else self.policy.to_dict(),
            "budgets": [asdict(b) for b in self.budgets],
            "dense": dict(self.dense),
            "final": dict(self.final),
            "met": dict(self.met),
            "all_met": self.all_met,
            "accuracy": {
                "dense": self.accuracy_dense,
                "pruned": self.accuracy_pruned,
                "finetuned": self.accuracy_finetuned,
            },
            "metrics": {k: dict(v) for k, v in self.metrics.items()},
            "score": {
                "dense": self.score_dense,
                "chosen": self.score_chosen,
                "chance_floor": self.score_floor,
            },
            "task": {"name": self.task, "finetune": self.finetuned, "evaluate": self.evaluated},
            "params": {"dense": self.params_dense, "final": self.params_final},
            "stage_seconds": dict(self.stage_seconds),
            "parts": self.parts,
            "paths": {k: str(v) for k, v in self.paths.items()},
            "search": {
                "searcher": self.searcher,
                "evaluations": self.evaluations,
                "first_feasible_evaluation": self.first_feasible_evaluation,
                "repairs": self.repairs,
                "proxy": self.proxy,
                "proxy_seconds_mean": self.proxy_seconds,
                "oracle_calls": dict(self.oracle_calls),
                "extra": dict(self.search_extra),
            },
            "export": {
                "max_abs_diff": self.export_max_abs_diff,
                "tensorrt": self.tensorrt,
                "openvino_max_abs_diff": self.openvino_max_abs_diff,
            },
            "surrogate": dict(self.surrogate),
            "timing": dict(self.timing),
            "output_shapes": {k: dict(v) for k, v in self.output_shapes.items()},
            "left_whole": dict(self.left_whole),
            "cost_estimate": dict(self.cost_estimate),
        }
