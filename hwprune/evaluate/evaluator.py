"""From a policy to a scored candidate: apply, task.calibrate, task.score, oracle measurements.

``Evaluator.evaluate(policy)`` is a pure function of the policy and the run's
fixed inputs (model, task, constraints), so results are cached by the
candidate's pruned shape and every evaluation is appended to the episodes log.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import oracles
from hwprune.budgets import Constraint
from hwprune.errors import HwpruneError
from hwprune.evaluate.log import EpisodeLog
from hwprune.evaluate.options import EvaluatorOptions, ProxyOptions, split_options
from hwprune.evaluate.racing import RaceBar, RaceResult
from hwprune.evaluate.scores import (
    accuracy_tolerance,
    candidate_params,
    chance_floor,
    search_signal,
)
from hwprune.evaluate.surrogate import check_mode, start_gate
from oracles import Measurement
from oracles.timing import capped_protocol

log = logging.getLogger(__name__)

# Independent calls of a timed oracle whose median is kept wherever a value is a verdict
# or a reference: the dense model (relative bounds are fractions of it), the confirmation
# of a search's best candidates and the final model's proof.
MEASURE_REPEATS = 3

# The search's stop rule for one timed call on a candidate: at most this many timed runs and
# seconds (``oracles.timing.capped_protocol``; a spec that sets max_runs or max_time keeps
# its own). The spec's own rule (2000 runs or 20 s) goes on until the median's interval is
# within rel_ci, which a busy machine never reaches: every call then ran to its cap and a
# demo's 60 candidates took minutes of timing each. A search value ranks candidates; every
# value that is a verdict or a reference (the dense model, the confirmation of the best
# candidates, the final proof) is measured with the spec's own rule.
SEARCH_MAX_RUNS = 200
SEARCH_MAX_TIME = 2.0

# Every budget's cost for a candidate whose forward pass fails: over every bound, so each
# searcher and the final choice take it as infeasible; finite, so rewards and multipliers stay
# numbers.
FAILED_COST = 2.0

__all__ = [
    "Outcome",
    "Evaluator",
    "CandidateFailure",
    "FAILED_COST",
    "SEARCH_MAX_RUNS",
    "SEARCH_MAX_TIME",
    "EvaluatorOptions",
    "ProxyOptions",
    "accuracy_tolerance",
    "candidate_params",
    "chance_floor",
    "search_signal",
]


class CandidateFailure(HwpruneError):
    """A pruned candidate whose forward pass fails on the example inputs (a reshape that
    needs channel counts the space allowed): the space's failure, recorded as an infeasible
    candidate, never blamed on the task."""


def forward_error(module: Any, inputs: Any) -> str | None:
    """Why ``module`` fails a forward pass on ``inputs`` (eval mode, no gradients), or None."""
    import torch

    from hwprune.space._layers import model_device

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            inputs.to(model_device(module)).call(module)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
    finally:
        module.train(was_training)
    return None


@dataclass(frozen=True)
class Outcome:
    """One evaluated candidate.

    ``values`` are the measured quantities by constraint name (in the
    constraint's unit), ``costs`` the values relative to their bounds
    (<= 1 is feasible), ``timings`` the seconds of each stage.
    """

    index: int
    policy: Any
    key: str
    accuracy: float
    values: Mapping[str, float]
    costs: Mapping[str, float]
    feasible: bool
    measurements: Mapping[str, Measurement] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    cached: bool = False
    params: int | None = None
    # Per constraint "measured" or "predicted" (by the surrogate; absent: measured), and the
    # surrogate gate's record per timed constraint it saw (reason, prediction).
    sources: Mapping[str, str] = field(default_factory=dict)
    surrogate: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # What the searcher learns from (:func:`search_signal`, set by the search's budget);
    # None: the proxy score itself. Derived, so not logged: a resumed search recomputes it.
    signal: float | None = None
    # Why the pruned model's forward pass failed (then every source is "failed", every cost
    # FAILED_COST, nothing measured); None for a candidate that ran.
    error: str | None = None
    # A raced score (``hwprune.evaluate.racing``): the rule that stopped it early ("worse",
    # "chance") and the samples it saw. None: scored on every sample, a full measurement.
    raced: str | None = None
    score_samples: int | None = None

    @property
    def reward_score(self) -> float:
        """The score a searcher's reward is built on: ``signal`` if set, else ``accuracy``."""
        return float(self.accuracy if self.signal is None else self.signal)

    @property
    def predicted(self) -> tuple[str, ...]:
        """The constraints whose value here is a surrogate's prediction, not a measurement."""
        return tuple(k for k, v in self.sources.items() if v == "predicted")

    @property
    def undecided(self) -> bool:
        """Its feasibility rests on a prediction whose interval straddled a bound (the gate
        deferred it): feasible or not, only a measurement can say."""
        return any(
            self.sources.get(n) == "predicted" and self.surrogate.get(n, {}).get("straddles")
            for n in self.values
        )

    @property
    def max_cost(self) -> float:
        return max(self.costs.values()) if self.costs else 0.0

    def to_record(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "key": self.key,
            "policy": self.policy.to_dict(),
            "accuracy": self.accuracy,
            "values": dict(self.values),
            "costs": dict(self.costs),
            "feasible": self.feasible,
            "params": self.params,
            "measurements": {k: m.to_dict() for k, m in self.measurements.items()},
            "timings": dict(self.timings),
            "sources": {k: self.sources.get(k, "measured") for k in self.values},
            **(
                {"surrogate": {k: dict(v) for k, v in self.surrogate.items()}}
                if self.surrogate
                else {}
            ),
            **({"error": self.error} if self.error is not None else {}),
            **(
                {"raced": {"stopped": self.raced, "samples": self.score_samples}}
                if self.raced is not None
                else {}
            ),
            "time": time.time(),
        }

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], *, policy_cls: Any, space: Any = None
    ) -> Outcome:
        """An outcome read back from the episode log; with ``space``, its policy in the
        space's unit order (the log's JSON lists units in sorted key order)."""
        policy = policy_cls.from_dict(record["policy"])
        if space is not None:
            policy = policy.aligned(space)
        return cls(
            index=int(record["index"]),
            policy=policy,
            key=record["key"],
            accuracy=float(record["accuracy"]),
            values=dict(record["values"]),
            costs=dict(record["costs"]),
            feasible=bool(record["feasible"]),
            measurements={
                k: Measurement.from_dict(m) for k, m in record.get("measurements", {}).items()
            },
            timings=dict(record.get("timings", {})),
            cached=True,
            params=record.get("params"),
            sources={
                k: str(record.get("sources", {}).get(k, "measured")) for k in record["values"]
            },
            surrogate=dict(record.get("surrogate", {})),
            error=record.get("error"),
            **_raced_fields(record.get("raced")),
        )


def _raced_fields(raced: Any) -> dict[str, Any]:
    """An outcome's raced fields from its logged ``raced`` record (absent: a full score)."""
    if not isinstance(raced, Mapping):
        return {}
    return {"raced": str(raced.get("stopped")), "score_samples": int(raced.get("samples", 0))}


def _judge(constraint: Constraint) -> Any:
    """The oracle that judges ``constraint``: the one bound to it (built once, where its
    budget was bound), else built here from its spec (a constraint made by hand)."""
    if constraint.judge is not None:
        return constraint.judge
    return oracles.get_oracle(constraint.oracle)


class Evaluator:
    """Scores policies of one prune space against a fixed set of constraints.

    Call ``calibrate()`` once (measures the dense model, fixes relative
    budgets); then ``evaluate(policy)`` as often as the search likes. A policy
    whose pruned shape was already seen (in this process or in the episodes log
    of a resumed run) is answered from memory and not measured again.
    """

    def __init__(
        self,
        *,
        space: Any,
        constraints: Sequence[Constraint],
        task: Any = None,
        data: Any = None,
        options: EvaluatorOptions | None = None,
        proxy: ProxyOptions | None = None,
        **settings: Any,
    ) -> None:
        """``task`` scores candidates (see hwprune.tasks); ``data`` is a shortcut for the
        built-in ``ClassificationTask(data, ...)`` with ``proxy``'s options and ``options``'
        seed. ``settings`` spell the same options out one by one: each names a field of
        :class:`EvaluatorOptions` or (with ``data``) of :class:`ProxyOptions`."""
        from hwprune.tasks import ClassificationTask, as_task

        if (task is None) == (data is None):
            raise TypeError("Evaluator needs exactly one of task= or data=")
        options, proxy = split_options(options, proxy, settings, shortcut=data is not None)
        if data is not None:
            task = ClassificationTask(data, seed=options.seed, **asdict(proxy))
        self.options = options
        self.space = space
        self.task = as_task(task)
        self.constraints = list(constraints)
        self.cache = options.cache
        self.seed = options.seed
        # Every input of the model, by ONNX input name: each oracle gets every input's shape.
        self.example_inputs = space.example_inputs
        self.input_shape = tuple(space.example_input_shape)
        self.opset = options.opset
        self.allow_trace_warnings = bool(options.allow_trace_warnings)
        self.on_outcome = options.on_outcome
        self._oracles = {c.name: _judge(c) for c in self.constraints}
        # Each timed oracle with the search's stop rule (the same oracle where it has none).
        self._search_changes = {
            name: capped_protocol(o, max_runs=SEARCH_MAX_RUNS, max_time=SEARCH_MAX_TIME)
            for name, o in self._oracles.items()
        }
        self._search_oracles = {
            name: replace(o, **self._search_changes[name]) if self._search_changes[name] else o
            for name, o in self._oracles.items()
        }
        self.surrogate_mode = check_mode(options.surrogate)
        self.surrogate: Any = None  # the SurrogateGate, when calibrate turns it on
        # The log's record of the surrogate's decision per timed constraint (kept on resume).
        self.surrogate_decision: dict[str, Any] | None = None
        self._measure_all = 0
        # Calls each oracle made in this process (repeats counted, cache hits not).
        self.oracle_calls: dict[str, int] = {c.name: 0 for c in self.constraints}
        self._by_key: dict[str, Outcome] = {}
        # Keys predicted in the search and measured later by an earlier session (resume).
        self._later: dict[str, Outcome] = {}
        # Re-measured values a searcher asked for (:meth:`remeasured_values`), by key, and the
        # relative half-range of each value's repeated calls (:meth:`remeasured_spread`).
        self._remeasured: dict[str, dict[str, float]] = {}
        self._spread: dict[str, dict[str, float]] = {}
        self.history: list[Outcome] = []
        self.dense: dict[str, Measurement] = {}
        # Seconds of the dense model's export and score in ``calibrate`` (hwprune.run.estimate).
        self.dense_timings: dict[str, float] = {}
        self.dense_accuracy: float | None = None
        self._log = EpisodeLog(options.log_path) if options.log_path else None
        if self._log is not None:
            self._load_log()

    # ------------------------------------------------------------------ resume
    def _load_log(self) -> None:
        from hwprune.space import Policy
        from hwprune.tasks import same_score

        other = 0
        for record in self._log.records():
            if record.get("type") == "surrogate" and self.surrogate_decision is None:
                self.surrogate_decision = record
            if record.get("type") == "remeasure" and isinstance(record.get("values"), dict):
                self._remeasured[str(record.get("key"))] = {
                    str(k): float(v) for k, v in record["values"].items()
                }
                spread = record.get("spread")
                self._spread[str(record.get("key"))] = (
                    {str(k): float(v) for k, v in spread.items()}
                    if isinstance(spread, dict)
                    else {}
                )
            if record.get("type", "candidate") != "candidate":
                continue
            if not same_score(record.get("score_key"), self.task.score_key):
                other += 1  # scored by another proxy or on other data: never mixed in
                continue
            try:
                outcome = Outcome.from_record(record, policy_cls=Policy, space=self.space)
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("skipping an unreadable episode record: %s", exc)
                continue
            seen = self._by_key.get(outcome.key)
            if seen is None:
                self._by_key[outcome.key] = outcome
                self.history.append(outcome)
            elif seen.predicted and not outcome.predicted:
                # Measured later (by the final choice or a repair). The search saw the
                # prediction, and a resumed search must see what it saw; the measurement
                # answers when a verdict beyond the search asks (``measured_only``).
                self._later[outcome.key] = outcome
        if other:
            log.warning("%s: %d candidates were scored with another proxy or data than %r; "
                        "they are evaluated again", self._log.path, other, self.task.score_key)  # fmt: skip
        if self.history:
            log.info("resumed %d evaluated candidates from %s", len(self.history), self._log.path)

    @property
    def eval_samples(self) -> int:
        """How many samples each score is averaged over (0: the task does not say)."""
        return self.task.score_samples

    @property
    def score_floor(self) -> float | None:
        """The score at or below which a candidate is at chance (:func:`chance_floor`);
        None before ``calibrate`` or when the task gives no chance score."""
        return chance_floor(self.task.score_chance, self.dense_accuracy, self.eval_samples)

    def search_value(
        self, accuracy: float, params: int | None, *, at_chance: bool = False
    ) -> float:
        """:func:`search_signal` of a score and a parameter count under this run's floor."""
        return search_signal(
            accuracy,
            params,
            floor=self.score_floor,
            dense_params=self.space.dense_params,
            at_chance=at_chance,
        )

    def signal(self, outcome: Outcome) -> Outcome:
        """``outcome`` with its :func:`search_signal` set (what a searcher learns from)."""
        value = self.search_value(outcome.accuracy, outcome.params,
                                  at_chance=outcome.raced == "chance")  # fmt: skip
        return outcome if value == outcome.accuracy else replace(outcome, signal=value)

    # ------------------------------------------------------------- measuring
    @property
    def oracles(self) -> Mapping[str, Any]:
        """Each constraint's oracle, by constraint name."""
        return self._oracles

    @property
    def search_oracles(self) -> Mapping[str, Any]:
        """Each constraint's oracle as a candidate's evaluation calls it: a timed one with the
        search's stop rule (``SEARCH_MAX_RUNS``, ``SEARCH_MAX_TIME``)."""
        return self._search_oracles

    def export(self, module: Any, *, timings: dict[str, float] | None = None) -> bytes:
        """The module's ONNX bytes at the run's opset (timed as ``export``)."""
        from hwprune.export.onnx import export_onnx

        t0 = time.perf_counter()
        kwargs = {} if self.opset is None else {"opset": self.opset}
        onnx_bytes = export_onnx(module, example_inputs=self.example_inputs,
                                 allow_trace_warnings=self.allow_trace_warnings, **kwargs)  # fmt: skip
        if timings is not None:
            timings["export"] = time.perf_counter() - t0
        return onnx_bytes

    def measure_module(
        self,
        module: Any,
        *,
        onnx_bytes: bytes | None = None,
        timings: dict[str, float] | None = None,
        repeats: int = 1,
        fresh: bool = False,
        only: Sequence[str] | None = None,
    ) -> dict[str, Measurement]:
        """Every constraint's oracle on one module (its ONNX export made once, lazily).

        ``repeats`` > 1 keeps the median of that many independent calls of each
        timed oracle (see ``oracles.measure``); ``fresh`` measures without the
        cache (the final verification); ``only`` names the constraints to measure (default all).
        One call from the cache is a candidate's evaluation and times with the search's stop
        rule (``search_oracles``); a reference or a verdict (repeats or fresh) with the spec's.
        """
        shapes = self.example_inputs.shapes
        verdict = repeats > 1 or fresh
        out: dict[str, Measurement] = {}
        for c in self.constraints:
            if only is not None and c.name not in only:
                continue
            oracle = self._oracles[c.name] if verdict else self._search_oracles[c.name]
            if oracle.input_format == "onnx":
                if onnx_bytes is None:
                    onnx_bytes = self.export(module, timings=timings)
                model: Any = onnx_bytes
            else:
                model = module
            t0 = time.perf_counter()
            out[c.name] = oracles.measure(
                oracle,
                model,
                input_shapes=shapes,
                cache=None if fresh else self.cache,
                repeats=repeats,
            )
            if not out[c.name].cached:
                self.oracle_calls[c.name] = self.oracle_calls.get(c.name, 0) + (
                    repeats if oracle.timed else 1
                )
            if timings is not None:
                timings[f"oracle:{c.name}"] = time.perf_counter() - t0
        return out

    def remeasure(self, module: Any) -> dict[str, Measurement]:
        """Every constraint's oracle on ``module`` afresh (no cache), judged as the dense
        model was: a timed oracle keeps the median of ``MEASURE_REPEATS`` calls.

        The confirmation of a search's best candidates and the final proof use this, so a
        verdict is no noisier than the bound it is checked against (one call on a busy
        machine can be a third off; a median of three rarely is).
        """
        return self.measure_module(module, fresh=True, repeats=MEASURE_REPEATS)

    def remeasured_values(self, policy: Any) -> dict[str, float]:
        """Every constraint's value of ``policy``'s model, re-measured as :meth:`remeasure`
        does, and logged: a resumed run reads these values, so a searcher whose next step
        depends on them proposes the same candidates (a fresh timing would differ)."""
        key = self.space.shape_key(policy)
        seen = self._remeasured.get(key)
        if seen is not None and all(c.name in seen for c in self.constraints):
            return dict(seen)
        measured = self.remeasure(self.space.apply(policy))
        values = {name: float(m.value) for name, m in measured.items()}
        spread = {name: _half_range(m) for name, m in measured.items()}
        self._remeasured[key], self._spread[key] = values, spread
        if self._log is not None:
            self._log.append({"type": "remeasure", "key": key, "values": values,
                              "spread": spread})  # fmt: skip
        return values

    def remeasured(self, key: str) -> dict[str, float] | None:
        """The values :meth:`remeasured_values` found for the candidate ``key`` (this session's
        or the log's), or None."""
        seen = self._remeasured.get(key)
        return dict(seen) if seen is not None else None

    def remeasured_spread(self, key: str) -> dict[str, float]:
        """Per constraint, half the range of the repeated calls behind :meth:`remeasured`'s
        value of ``key``, as a fraction of it: what a next measurement of the same model may
        move (0 for an exact oracle, or a log written before spreads were kept)."""
        return dict(self._spread.get(key, {}))

    def calibrate(self) -> list[Constraint]:
        """Measure the dense model with every oracle and fix relative budgets to absolute bounds."""
        dense_module = self.space.model
        # Every relative bound is a fraction of these values: median of 3 calls.
        self.dense = self.measure_module(
            dense_module, repeats=MEASURE_REPEATS, timings=self.dense_timings
        )
        self.constraints = [c.resolve(self.dense[c.name].value) for c in self.constraints]
        t0 = time.perf_counter()
        self.dense_accuracy = self.task.checked_score(dense_module, what="the dense model")
        self.dense_timings["score"] = time.perf_counter() - t0  # the cost estimate's proxy
        if self.surrogate_mode != "off":
            self.surrogate = start_gate(self, episode_log=self._log, dense_repeats=MEASURE_REPEATS)
        return self.constraints

    @contextlib.contextmanager
    def measured_only(self) -> Iterator[None]:
        """Within: every value is measured (a predicted one seen before is measured now).

        For the verdicts that decide the output beyond the search: the repairs.
        """
        self._measure_all += 1
        try:
            yield
        finally:
            self._measure_all -= 1

    # ------------------------------------------------------------- evaluate
    #: How many candidates this evaluator works on at once (see hwprune.evaluate.parallel).
    width = 1
    #: How a parallel evaluator places its work: ``worker_slots`` (candidates prepared at
    #: once), ``text`` (one line); None for one process.
    parallel_plan: Mapping[str, Any] | None = None

    def evaluate(self, policy: Any) -> Outcome:
        """Score one policy: proxy accuracy, every oracle's value, feasibility."""
        if any(c.bound is None for c in self.constraints):
            self.calibrate()
        key = self.space.shape_key(policy)
        seen = self._by_key.get(key)
        if seen is not None and seen.predicted and self._measure_all:
            return self._measure_predicted(seen)
        if seen is not None:
            return seen if seen.cached else _as_cached(seen)
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        try:
            module, raced = self._score(policy, timings=timings, bar=self.race_bar())
            acc = raced.score
        except CandidateFailure as exc:
            return self.commit_failed(policy=policy, key=key, error=str(exc), timings=timings)
        sources: dict[str, str] = {}
        gate_records: dict[str, Any] = {}
        if self.surrogate is not None and not self._measure_all:
            measurements, sources, gate_records = self.surrogate.measure(
                self, module, policy=policy, key=key, accuracy=acc, timings=timings
            )
        else:
            measurements = self.measure_module(module, timings=timings)
            if self.surrogate is not None:
                self.surrogate.learn(self, module, policy=policy,
                                     values={n: m.value for n, m in measurements.items()})  # fmt: skip
        measurements = {c.name: measurements[c.name] for c in self.constraints}
        timings["total"] = time.perf_counter() - t_start
        params = candidate_params(self.space, policy, module)
        return self.commit(policy=policy, key=key, accuracy=acc, measurements=measurements,
                           timings=timings, params=params, sources=sources,
                           surrogate=gate_records, raced=raced)  # fmt: skip

    def race_bar(self) -> RaceBar | None:
        """The bar the next candidate is raced against (``hwprune.evaluate.racing``), or None
        where this run does not race: racing off, or a task without a proportion score stream.

        The best is the most accurate candidate feasible by measurement, scored in full and
        above the chance floor: a predicted or raced score is no reference to stop others by.
        """
        samples = self.eval_samples
        if not self.options.racing or self.task.score_stream is None or samples < 1:
            return None
        floor = self.score_floor
        best = max((o.accuracy for o in self.history if o.feasible and o.raced is None
                    and o.error is None and not o.predicted), default=None)  # fmt: skip
        below = None
        if best is not None and (floor is None or best > floor):
            below = best - accuracy_tolerance(best, samples)
        # The dense model at chance: no candidate's score informs the search or the choice.
        uninformed = (
            floor is not None and self.dense_accuracy is not None and (self.dense_accuracy <= floor)
        )
        return RaceBar(below=below, floor=floor, confidence=self.options.race_confidence,
                       uninformed=uninformed)  # fmt: skip

    def submit(self, policy: Any) -> Any:
        """Start evaluating ``policy``; the handle's ``result()`` is its Outcome.

        One process evaluates at once, so the handle is already done; a parallel
        evaluator (``hwprune.evaluate.parallel``) returns before the work is.
        """
        from concurrent.futures import Future

        handle: Future = Future()
        handle.set_result(self.evaluate(policy))
        return handle

    def score_candidate(
        self, policy: Any, *, timings: dict[str, float], what: str | None = None
    ) -> tuple[Any, float]:
        """apply, ``task.calibrate``, ``task.score``: the pruned module (on the CPU), its score.

        ``what`` names the candidate in a task's error (default: the next one of this run).
        The global torch random state is left as it was (a DataLoader draws from it): a
        searcher's own draws then do not depend on where, or whether, a candidate was
        evaluated (in this process, in a worker, or answered from the log on resume).
        """
        module, result = self._score(policy, timings=timings, what=what, bar=None)
        return module, result.score

    def _score(
        self, policy: Any, *, timings: dict[str, float], bar: RaceBar | None,
        what: str | None = None,
    ) -> tuple[Any, RaceResult]:  # fmt: skip
        """:meth:`score_candidate`, raced against ``bar`` where given (None: scored in full)."""
        import torch

        with torch.random.fork_rng(devices=[]):
            t0 = time.perf_counter()
            module = self.space.apply(policy)
            timings["apply"] = time.perf_counter() - t0
            # The task sees only a model that runs: a failure here is the space's, not the
            # task's (CandidateFailure, an infeasible candidate).
            error = forward_error(module, self.example_inputs)
            if error is not None:
                raise CandidateFailure(f"the pruned model's forward pass fails: {error}")
            what = what or self.describe_candidate(policy)
            t0 = time.perf_counter()
            self.task.checked_calibrate(module, what=what)
            timings["bn"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if bar is None:
                result = RaceResult(score=self.task.checked_score(module, what=what),
                                    samples=self.eval_samples)  # fmt: skip
            else:
                result = self.task.raced_score(module, bar, what=what)
            timings["accuracy"] = time.perf_counter() - t0
            timings["proxy"] = timings["bn"] + timings["accuracy"]  # the search proxy's whole cost
        if result.stopped is not None:
            log.debug("%s raced: %s at %d of %d samples (score %.4f)", what, result.stopped,
                      result.samples, self.eval_samples, result.score)  # fmt: skip
        return module.to("cpu"), result

    def describe_candidate(self, policy: Any) -> str:
        """How a task's error names the next candidate: its number in the run and its keep ratios."""
        return f"candidate {len(self.history) + 1} (keep {_keep_text(policy)})"

    def commit(
        self,
        *,
        policy: Any,
        key: str,
        accuracy: float,
        measurements: Mapping[str, Measurement],
        timings: Mapping[str, float],
        params: int | None,
        sources: Mapping[str, str] | None = None,
        surrogate: Mapping[str, Any] | None = None,
        raced: RaceResult | None = None,
    ) -> Outcome:
        """The outcome of one scored and measured candidate: remembered, logged, reported.

        ``sources`` says per constraint whether its value was measured or predicted by the
        surrogate (absent: measured); ``surrogate`` is the surrogate gate's record per
        timed constraint it saw; ``raced`` the race that scored it (stopped early: marked).
        """
        values = {name: m.value for name, m in measurements.items()}
        costs = {c.name: c.cost(values[c.name]) for c in self.constraints}
        outcome = Outcome(
            index=len(self.history),
            policy=policy,
            key=key,
            accuracy=accuracy,
            values=values,
            costs=costs,
            feasible=all(v <= 1.0 for v in costs.values()),
            measurements=dict(measurements),
            timings=dict(timings),
            params=params,
            sources=dict(sources or {}),
            surrogate=dict(surrogate or {}),
            raced=raced.stopped if raced is not None else None,
            score_samples=raced.samples if raced is not None and raced.stopped else None,
        )
        return self._remember(outcome)

    def commit_failed(
        self, *, policy: Any, key: str, error: str, timings: Mapping[str, float]
    ) -> Outcome:
        """The outcome of a candidate whose forward pass failed: infeasible for every budget
        (cost ``FAILED_COST``, source "failed"), the worst score seen, its error logged."""
        log.info("%s is infeasible: %s", self.describe_candidate(policy), error)
        seen = [o.accuracy for o in self.history if o.error is None]
        if self.dense_accuracy is not None:
            seen.append(self.dense_accuracy)
        # A score with a chance level (an accuracy) has 0 as its worst. Another has no worst:
        # below the lowest seen by the spread seen (at least 1 and its own size), so a
        # searcher learns to avoid it, and finite, so its rewards stay numbers.
        accuracy = 0.0
        if self.score_floor is None and seen:
            low = min(seen)
            accuracy = low - max(1.0, abs(low), max(seen) - low)
        outcome = Outcome(
            index=len(self.history),
            policy=policy,
            key=key,
            accuracy=accuracy,
            values={c.name: FAILED_COST * float(c.bound) for c in self.constraints},
            costs={c.name: FAILED_COST for c in self.constraints},
            feasible=False,
            timings=dict(timings),
            sources={c.name: "failed" for c in self.constraints},
            error=error,
        )
        return self._remember(outcome)

    def _remember(self, outcome: Outcome) -> Outcome:
        """``outcome`` kept by its key, appended to the history and the log, reported."""
        self._by_key[outcome.key] = outcome
        self.history.append(outcome)
        if self._log is not None:
            record = {"type": "candidate", **outcome.to_record(), "score_key": self.task.score_key}
            if self.space.granularity == "channel":  # proposed -> built counts
                from hwprune.space.staircase import proposed_and_built

                record["channels"] = {
                    k: list(v) for k, v in proposed_and_built(self.space, outcome.policy).items()
                }
            self._log.append(record)
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome

    def _measure_predicted(self, seen: Outcome) -> Outcome:
        """``seen`` with its predicted values measured: replaces it in memory and in the log.

        A resumed run whose earlier session measured them already (the log's later record
        for the key) takes those measurements: no oracle call, nothing logged again.
        """
        module = self.space.apply(seen.policy)
        names = list(seen.predicted)
        later = self._later.pop(seen.key, None)
        if later is not None and all(n in later.measurements for n in names):
            measured = {n: later.measurements[n] for n in names}
        else:
            later = None
            measured = self.measure_module(module, only=names)
        if self.surrogate is not None:
            self.surrogate.learn(self, module, policy=seen.policy,
                                 values={n: m.value for n, m in measured.items()})  # fmt: skip
        measurements = {**seen.measurements, **measured}
        values = {**seen.values, **{n: m.value for n, m in measured.items()}}
        costs = {c.name: c.cost(values[c.name]) for c in self.constraints}
        records = {n: {**seen.surrogate.get(n, {}), "source": "measured", "reason": "later"}
                   for n in seen.surrogate}  # fmt: skip
        outcome = replace(
            seen,
            values=values,
            costs=costs,
            feasible=all(v <= 1.0 for v in costs.values()),
            measurements=measurements,
            sources={**seen.sources, **{n: "measured" for n in names}},
            surrogate=records,
            cached=later is not None,
        )
        self._by_key[seen.key] = outcome
        self.history[self.history.index(seen)] = outcome
        if self._log is not None and later is None:
            self._log.append(
                {"type": "candidate", **outcome.to_record(), "score_key": self.task.score_key}
            )
        return outcome

    def close(self) -> None:
        """Release what the evaluator started (worker processes of a parallel evaluator)."""

    # ------------------------------------------------------------- results
    def outcome(self, key: str) -> Outcome | None:
        """The latest outcome of the candidate with architecture key ``key`` (None if unseen)."""
        return self._by_key.get(key)

    def smallest(self) -> dict[str, float]:
        """The smallest value measured per constraint so far (for infeasible-budget reports)."""
        out: dict[str, float] = {}
        for o in self.history:
            for k, v in o.values.items():
                if o.sources.get(k, "measured") == "measured":
                    out[k] = min(out.get(k, v), v)
        return out

    @property
    def evaluations(self) -> int:
        return len(self.history)


def _keep_text(policy: Any) -> str:
    keep = [f"{k:.3g}" for k in policy.keep]
    return ", ".join(keep[:6]) + (", ..." if len(keep) > 6 else "")


def _as_cached(outcome: Outcome) -> Outcome:
    return replace(outcome, cached=True)


def _half_range(m: Measurement) -> float:
    """Half the range of a median-of-repeats measurement's calls, relative to its value."""
    values = [float(v) for v in (m.extra or {}).get("repeat_values", ())]
    if len(values) < 2 or not m.value:
        return 0.0
    return (max(values) - min(values)) / 2.0 / abs(float(m.value))
