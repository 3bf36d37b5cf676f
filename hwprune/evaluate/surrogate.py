"""A latency surrogate learned during the search: predicted where it is sure, measured where not.

A timed oracle costs 0.5 s on ONNX Runtime CPU, 10-60 s where a TensorRT engine
is built, seconds more over the network. The search already measures hundreds
of candidates of one model on one device; ``OracleSurrogate`` learns that
oracle from them (a Gaussian process on the candidate's shape: per-unit kept
channels, per-layer MACs and bytes, as fractions of the dense model's) and
``SurrogateGate`` decides, candidate by candidate, which timed values it may
predict. A value is measured:

- while the surrogate has fewer than ``MIN_POINTS`` measurements ("warmup");
- for a fixed fraction of the candidates it could answer, drawn from the
  candidate's key so a resumed run draws the same ("audit"), their errors logged;
- when the candidate is more accurate than every feasible one so far by more
  than the sampling tolerance of a tie (``hwprune.evaluate.accuracy_tolerance``:
  within it, ``rank_feasible`` calls them tied, and a proxy at chance would
  "beat" the best feasible one every few candidates by noise alone; a candidate
  at chance counts by its size, as the search and the final choice rank it:
  ``hwprune.evaluate.search_signal``) and its
  interval is clear of the bound, but not at ``BEST_WIDEN`` times its width
  ("best"): a verdict that would hide the best candidate must be twice as sure.
  (A would-be best far over its bound, the usual case for a searcher that
  explores large models, stays predicted: measuring it every time cost 14-18
  calls in 100 on ResNet-56 with qlp.)

A value whose interval straddles the bound is not measured during the search:
it is *deferred* (predicted, the record flagged ``straddles``). A constrained
searcher lives near its bound, so most of its candidates straddle; measuring them
all kept 70% of the calls (VGG-16, ppo-lagrangian, 100 evaluations). Yet only a
handful of them can ever be shipped: the final choice (``confirm_best``) ranks
the deferred candidates with the feasible ones and, in that order, measures a
deferred one before it may be confirmed, skipping it when the measurement says
infeasible. So a deferred verdict decides the output only after a measurement;
until then it only feeds the searcher, whose reward is as noisy as the timing
(the benchmark reports how often the predicted side of the bound was wrong, on
the audited straddlers).

Every verdict that decides the output is measured elsewhere and never asks
the gate: the dense reference (``Evaluator.calibrate``), the confirmation of the
best candidates and the final proof (``Evaluator.remeasure``), the repairs
(``Evaluator.measured_only``).

Why a Gaussian process: with tens of points and a smooth, mostly additive
target (a layer's time grows with its MACs and bytes), a GP with a linear
(DotProduct) plus RBF kernel and a white-noise term fits in milliseconds and
gives a predictive standard deviation that includes the timing noise; a
bootstrap ensemble of regressors gives only the spread of its fits.
``benchmarks/surrogate.py`` reports both on held-out candidates. The interval
is widened when the checked predictions say it is too narrow (its z grows to
the 90th percentile of the checked |error| / std), and never narrower than
``REL_FLOOR`` of the value (timing noise between two calls).

No per-layer table is measured at the start (each unit pruned alone at a few
ratios, as HALP and NetAdapt do): it cannot pay for itself here. At three ratios
it costs 3 calls per unit, 39 for CIFAR VGG-16 (13 units) and 90 for ResNet-56
(30 units), against about 33 calls in all for a 100-evaluation search made 3x
cheaper; and a table of single-unit cuts misses what joint cuts do (fusion,
the runtime's kernel choice), which the run's own candidates show directly.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwprune.config import SURROGATE_MODES
from hwprune.evaluate.scores import accuracy_tolerance

log = logging.getLogger(__name__)

__all__ = [
    "SURROGATE_MODES",
    "check_mode",
    "start_gate",
    "SLOW_CALL_SECONDS",
    "MIN_POINTS",
    "AUDIT_RATE",
    "BEST_WIDEN",
    "DEFERRED",
    "Prediction",
    "OracleSurrogate",
    "SurrogateGate",
    "surrogate_wanted",
    "candidate_features",
    "summarize",
    "surrogate_report",
]

# A timed oracle whose call takes longer than this (the dense model, in seconds) gets the
# surrogate under ``auto``: ONNX Runtime CPU on a small net takes ~0.5 s and stays measured.
SLOW_CALL_SECONDS = 2.0
# Measurements (the dense model's included) before the surrogate may answer.
MIN_POINTS = 8
# Fraction of the candidates it could answer that are measured anyway, to check it.
AUDIT_RATE = 0.1
# The interval: prediction +- z * std (z = 2: ~95% where the model is right) ...
Z = 2.0
# ... and never narrower than this fraction of the value (two calls differ by that much).
REL_FLOOR = 0.03
# A would-be best candidate's verdict is trusted only with the bound outside this many times
# the interval's half-width; else it is measured ("best").
BEST_WIDEN = 2.0
# The reason of a value predicted although its interval straddles the bound: measured only
# if the final choice reaches the candidate (hwprune.run.choose.confirm_best).
DEFERRED = "deferred"


@dataclass(frozen=True)
class Prediction:
    """A surrogate's answer: ``value`` with its standard deviation and the interval it trusts."""

    value: float
    std: float
    low: float
    high: float
    points: int  # measurements it was fitted on

    def straddles(self, bound: float, *, widen: float = 1.0) -> bool:
        """Whether ``bound`` lies in the interval, its half-widths times ``widen``."""
        low = self.value - widen * (self.value - self.low)
        high = self.value + widen * (self.high - self.value)
        return low <= bound <= high

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "std": self.std, "low": self.low, "high": self.high,
                "points": self.points}  # fmt: skip


def surrogate_wanted(mode: str, oracle: Any, *, call_seconds: float | None) -> tuple[bool, str]:
    """Whether ``oracle`` gets a surrogate under ``mode`` (auto, on, off), and why.

    ``auto`` turns it on for a timed oracle that is slow by nature (``oracle.slow``:
    TensorRT engine builds), served remotely (``oracle.remote``: ``SPEC@http://...``),
    or whose call on the dense model took more than ``SLOW_CALL_SECONDS``
    (``call_seconds``; None when it was not timed here).
    """
    check_mode(mode)
    if not oracle.timed:
        return False, "not a timed oracle (an exact count is cheap)"
    if mode == "off":
        return False, "off"
    if mode == "on":
        return True, "on"
    if oracle.remote:
        return True, "auto: a remote oracle"
    if oracle.slow:
        return True, "auto: an engine is built per candidate"
    if call_seconds is not None and call_seconds > SLOW_CALL_SECONDS:
        return True, f"auto: a call took {call_seconds:.1f} s (> {SLOW_CALL_SECONDS:g} s)"
    if call_seconds is None:
        return False, "auto: the dense call was not timed in this session"
    return False, f"auto: a call takes {call_seconds:.2f} s (<= {SLOW_CALL_SECONDS:g} s)"


def check_mode(mode: Any) -> str:
    """``mode`` if it is one of SURROGATE_MODES, else ConfigError in one sentence."""
    from hwprune.errors import ConfigError

    if mode not in SURROGATE_MODES:
        raise ConfigError(f"surrogate must be one of {', '.join(SURROGATE_MODES)}, got {mode!r}")
    return str(mode)


def start_gate(
    evaluator: Any, *, episode_log: Any = None, dense_repeats: int = 1
) -> SurrogateGate | None:
    """The gate for ``evaluator`` (calibrated), or None when no timed constraint gets a surrogate.

    ``dense_repeats``: how many calls the dense model's measurement took (its seconds are
    their sum). The decision per constraint is written once to the episodes log (``type:
    surrogate``) and read back on resume: a resumed run's dense value comes from
    the cache, untimed, and must not turn ``auto`` the other way.
    """
    decision = evaluator.surrogate_decision
    if decision is None or decision.get("mode") != evaluator.surrogate_mode:
        enabled, reasons = {}, {}
        for c in evaluator.constraints:
            m = evaluator.dense[c.name]
            per_call = None if m.cached else m.seconds / dense_repeats
            enabled[c.name], reasons[c.name] = surrogate_wanted(
                evaluator.surrogate_mode, evaluator.oracles[c.name], call_seconds=per_call
            )
        decision = {"type": "surrogate", "mode": evaluator.surrogate_mode, "enabled": enabled,
                    "reasons": reasons, "time": time.time()}  # fmt: skip
        if episode_log is not None:
            episode_log.append(decision)
        evaluator.surrogate_decision = decision
    for name, why in decision["reasons"].items():
        log.info(
            "surrogate for %s: %s (%s)", name, "on" if decision["enabled"][name] else "off", why
        )
    names = [c.name for c in evaluator.constraints if decision["enabled"].get(c.name)]
    if not names:
        return None
    gate = SurrogateGate(names=names, reasons=decision["reasons"], seed=evaluator.seed)
    gate.start(evaluator)
    return gate


# --------------------------------------------------------------------------- features


def _layer_costs(module: Any, example_inputs: Any) -> tuple[list[float], list[float]]:
    """Per Conv/Linear layer (in module order): MACs per sample and bytes moved (weights,
    input and output activations, float32), from one forward pass with hooks."""
    import torch
    from torch import nn

    from hwprune.space._layers import model_device, profile

    prof = profile(module, example_inputs)
    moved: dict[str, float] = {}
    batch = max(1, int(example_inputs.batch))

    def hook(name: str) -> Any:
        def record(m: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, tuple):
                output = output[0]
            n_in = sum(a.numel() for a in args if isinstance(a, torch.Tensor)) // batch
            n_out = output.numel() // batch if isinstance(output, torch.Tensor) else 0
            n_w = sum(p.numel() for p in m.parameters(recurse=False))
            moved[name] = moved.get(name, 0.0) + 4.0 * (n_in + n_out + n_w)

        return record

    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)
    names = [n for n, m in module.named_modules() if isinstance(m, kinds)]
    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules()
               if isinstance(m, kinds)]  # fmt: skip
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            example_inputs.to(model_device(module)).call(module)
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return [float(prof.macs.get(n, 0)) for n in names], [moved.get(n, 0.0) for n in names]


def candidate_features(space: Any, policy: Any, module: Any) -> np.ndarray:
    """The raw features of one candidate: per-unit kept fraction, per-layer MACs and bytes,
    total MACs and bytes (divide by the dense model's to compare candidates)."""
    if space.granularity == "channel":
        kept = space.kept_channels(policy)
        fractions = [kept[u.id] / max(1, u.channels) for u in space.units]
    elif space.granularity == "weight":
        fractions = list(space.densities(policy).values())
    else:
        fractions = [float(k) for k in policy.keep]
    macs, moved = _layer_costs(module, space.example_inputs)
    return np.asarray([*fractions, *macs, *moved, sum(macs), sum(moved)], dtype=float)


# --------------------------------------------------------------------------- the model


class OracleSurrogate:
    """One timed oracle's value learned from the run's measurements: a Gaussian process.

    The target is the value over the dense value. Features (laid out as
    :func:`candidate_features` writes them, ``units`` kept fractions first) are
    scaled so that the linear kernel's prior sees what matters: total MACs and
    bytes as fractions of the dense model's; each layer's MACs and bytes as shares
    of the dense totals (a small layer counts for little unless the data say
    otherwise); the kept fractions divided by the number of units (their block
    sums to the mean kept fraction). Refitted (hyper-parameters included)
    whenever a measurement was added since the last fit.
    """

    def __init__(
        self, *, dense_features: np.ndarray, dense_value: float, units: int | None = None,
        seed: int = 0,
    ) -> None:  # fmt: skip
        dense = np.asarray(dense_features, dtype=float)
        u = len(dense) - 2 if units is None else int(units)
        layers = (len(dense) - u - 2) // 2
        total_macs, total_bytes = max(dense[-2], 1.0), max(dense[-1], 1.0)
        scale = np.concatenate([
            np.full(u, float(max(u, 1))),
            np.full(layers, total_macs),
            np.full(layers, total_bytes),
            [total_macs, total_bytes],
        ])  # fmt: skip
        self.scale = scale
        self.dense_value = float(dense_value)
        self.seed = int(seed)
        self.X: list[np.ndarray] = []
        self.y: list[float] = []
        self.z_ratios: list[float] = []  # checked |error| / std, for the interval's width
        self._model: Any = None
        self._fitted_on = 0

    @property
    def points(self) -> int:
        return len(self.y)

    def add(self, features: np.ndarray, value: float) -> None:
        self.X.append(np.asarray(features, dtype=float) / self.scale)
        self.y.append(float(value) / self.dense_value)

    def _fit(self) -> Any:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, WhiteKernel

        if self._model is not None and self._fitted_on == self.points:
            return self._model
        X, y = np.vstack(self.X), np.asarray(self.y)
        kernel = (
            ConstantKernel(1.0, (1e-3, 1e3)) * DotProduct(1.0, (1e-3, 1e2))
            + ConstantKernel(0.1, (1e-4, 1e2)) * RBF(float(np.sqrt(X.shape[1])), (1e-1, 1e3))
            + WhiteKernel(1e-3, (1e-6, 1e-1))
        )
        gp = GaussianProcessRegressor(
            kernel=kernel, normalize_y=True, n_restarts_optimizer=2, random_state=self.seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(X, y)
        self._model, self._fitted_on = gp, self.points
        return gp

    def z(self) -> float:
        """The interval's half-width in standard deviations: ``Z``, or wider when the checked
        predictions missed by more (their 90th percentile of |error| / std)."""
        if len(self.z_ratios) < 5:
            return Z
        return max(Z, float(np.quantile(self.z_ratios, 0.9)))

    def predict(self, features: np.ndarray) -> Prediction | None:
        """The value with its interval, or None while fewer than ``MIN_POINTS`` are known."""
        if self.points < MIN_POINTS:
            return None
        gp = self._fit()
        x = (np.asarray(features, dtype=float) / self.scale)[None, :]
        mean, std = gp.predict(x, return_std=True)
        value = float(mean[0]) * self.dense_value
        sd = max(float(std[0]) * self.dense_value, 1e-12)
        half = max(self.z() * sd, REL_FLOOR * abs(value))
        return Prediction(value, sd, value - half, value + half, self.points)

    def check(self, prediction: Prediction, measured: float) -> None:
        """A measured value for a prediction: widens the interval if the model is overconfident."""
        self.z_ratios.append(abs(measured - prediction.value) / prediction.std)


# --------------------------------------------------------------------------- the gate


def _draw(seed: int, key: str, name: str) -> float:
    """A uniform number in [0, 1) fixed by the run's seed and the candidate: the audit's draw."""
    digest = hashlib.sha256(f"{seed}:{key}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class SurrogateGate:
    """The evaluator's hook: per candidate, which timed values are measured and which predicted.

    Built by ``Evaluator.calibrate`` for the constraints whose oracle gets a
    surrogate (``names``); fed every measured value (the dense model's first).
    """

    def __init__(
        self,
        *,
        names: Sequence[str],
        reasons: Mapping[str, str],
        seed: int = 0,
        audit_rate: float = AUDIT_RATE,
    ) -> None:
        self.names = tuple(names)
        self.reasons = dict(reasons)
        self.seed = int(seed)
        self.audit_rate = float(audit_rate)
        self.models: dict[str, OracleSurrogate] = {}
        self.seconds = 0.0  # spent on features, fits and predictions

    def start(self, evaluator: Any) -> None:
        """The dense model as the first point; every measured candidate of a resumed log next."""
        space = evaluator.space
        from hwprune.space import Policy

        dense_policy = Policy.dense(space)
        features = candidate_features(space, dense_policy, space.model)
        for name in self.names:
            model = OracleSurrogate(dense_features=features,
                                    dense_value=evaluator.dense[name].value,
                                    units=len(space.units), seed=self.seed)  # fmt: skip
            model.add(features, evaluator.dense[name].value)
            self.models[name] = model
        for o in evaluator.history:
            measured = [n for n in self.names if o.sources.get(n, "measured") == "measured"]
            if measured:
                f = candidate_features(space, o.policy, space.apply(o.policy))
                for n in measured:
                    self.models[n].add(f, o.values[n])
            for n, info in o.surrogate.items():
                pred = info.get("prediction")
                if n in self.models and pred and info.get("source") == "measured":
                    self.models[n].check(Prediction(**pred), o.values[n])

    def measure(
        self,
        evaluator: Any,
        module: Any,
        *,
        policy: Any,
        key: str,
        accuracy: float,
        timings: dict[str, float],
    ) -> tuple[dict[str, Any], dict[str, str], dict[str, dict[str, Any]]]:
        """(measurements with predicted ones among them, source per constraint, the gate's
        record per surrogate constraint: reason, prediction)."""
        t0 = time.perf_counter()
        features = candidate_features(evaluator.space, policy, module)
        bounds = {c.name: c.bound for c in evaluator.constraints}
        predictions: dict[str, Prediction | None] = {
            n: self.models[n].predict(features) for n in self.names
        }
        reason = {n: self._reason(p, key=key, name=n, bound=bounds[n])
                  for n, p in predictions.items()}  # fmt: skip
        spent = time.perf_counter() - t0
        measure = _measurer(evaluator, module, timings)
        predicted = [n for n in self.names if reason[n] in (DEFERRED, "predicted")]
        first = [c.name for c in evaluator.constraints if c.name not in predicted]
        measurements = measure(first) if first else {}
        t0 = time.perf_counter()
        clear = [n for n in predicted if reason[n] == "predicted"]
        unsure = _unsure_best(evaluator, module, accuracy=accuracy, clear=clear,
                              predictions=predictions, bounds=bounds)  # fmt: skip
        if unsure:
            t_measure = time.perf_counter()
            measurements.update(measure(unsure))
            t0 += time.perf_counter() - t_measure  # measuring: not the surrogate's time
            reason.update({n: "best" for n in unsure})
            predicted = [n for n in predicted if n not in unsure]
        for n in predicted:
            measurements[n] = _as_measurement(evaluator.dense[n], predictions[n])
        records = {
            n: self._record(n, predictions[n], reason=reason[n], bound=bounds[n],
                            features=features, measured=None if n in predicted
                            else measurements[n].value)
            for n in self.names
        }  # fmt: skip
        spent += time.perf_counter() - t0
        self.seconds += spent
        timings["surrogate"] = spent  # features, fits and predictions (measuring excluded)
        sources = {c.name: "predicted" if c.name in predicted else "measured"
                   for c in evaluator.constraints}  # fmt: skip
        return measurements, sources, records

    def _reason(self, p: Prediction | None, *, key: str, name: str, bound: float) -> str:
        """Why a value is measured or predicted, before the would-be-best check."""
        if p is None:
            return "warmup"
        if _draw(self.seed, key, name) < self.audit_rate:
            return "audit"
        if p.straddles(bound):
            return DEFERRED  # predicted; measured if the final choice reaches it
        return "predicted"  # a sure verdict (unless it would be the best: _unsure_best)

    def _record(
        self, name: str, p: Prediction | None, *, reason: str, bound: float,
        features: np.ndarray, measured: float | None,
    ) -> dict[str, Any]:  # fmt: skip
        """The gate's record of one value; a measured value is learned (and checks ``p``)."""
        record: dict[str, Any] = {"source": "predicted" if measured is None else "measured",
                                  "reason": reason,
                                  "prediction": p.to_dict() if p is not None else None}  # fmt: skip
        if p is not None:
            record["straddles"] = p.straddles(bound)
        if measured is not None:
            self.models[name].add(features, measured)
            if p is not None:
                self.models[name].check(p, measured)
                err = (measured - p.value) / measured
                log.debug("surrogate %s checked (%s): predicted %.4g, measured %.4g (%+.1f%%)",
                          name, reason, p.value, measured, 100 * err)  # fmt: skip
        return record

    def learn(self, evaluator: Any, module: Any, *, policy: Any,
              values: Mapping[str, float]) -> None:  # fmt: skip
        """A measured value of a candidate first predicted (re-measured for a repair)."""
        features = candidate_features(evaluator.space, policy, module)
        for n, v in values.items():
            if n in self.models:
                self.models[n].add(features, v)


def _measurer(evaluator: Any, module: Any, timings: dict[str, float]) -> Any:
    """Measure some constraints of ``module``; one ONNX export serves every round."""
    onnx: list[bytes | None] = [None]

    def measure(names: list[str]) -> dict[str, Any]:
        needs = any(evaluator.oracles[n].input_format == "onnx" for n in names)
        if needs and onnx[0] is None:
            onnx[0] = evaluator.export(module, timings=timings)
        return evaluator.measure_module(module, onnx_bytes=onnx[0], timings=timings,
                                        only=names)  # fmt: skip

    return measure


def _unsure_best(
    evaluator: Any, module: Any, *, accuracy: float, clear: list[str],
    predictions: Mapping[str, Prediction | None], bounds: Mapping[str, float],
) -> list[str]:  # fmt: skip
    """Of the ``clear`` verdicts, those to measure anyway: the candidate would be the best
    feasible one so far and the verdict is not sure at ``BEST_WIDEN`` times its interval.

    Compared as the search and the final choice rank: a candidate at chance by its size
    (search_signal), so that noise near chance does not make a "best". A wrong "infeasible"
    would hide the best model from the choice (seen: VGG-16, 22 of 31 predictions
    infeasible, one at 0.994 against a best feasible 0.939 when the run ended); a wrong
    "feasible" would be measured by the final choice before it could be shipped.
    """
    if not clear:
        return []
    floor, signal = evaluator.score_floor, evaluator.search_value
    best = max((signal(o.accuracy, o.params) for o in evaluator.history if o.feasible),
               default=None)  # fmt: skip
    if best is not None and (floor is None or best > floor):
        # clearly more accurate: beyond a tie's sampling tolerance (sizes are exact)
        best += accuracy_tolerance(best, evaluator.eval_samples)
    mine = signal(accuracy, sum(p.numel() for p in module.parameters()))
    if best is not None and mine <= best:
        return []
    return [n for n in clear if predictions[n].straddles(bounds[n], widen=BEST_WIDEN)]


def _as_measurement(dense: Any, p: Prediction | None) -> Any:
    """A prediction in the shape of a measurement (the dense model's, its values replaced)."""
    assert p is not None
    return dense.replace(
        value=p.value, statistic="predicted", samples=0, iqr=0.0, cv=0.0,
        ci_low=p.low, ci_high=p.high, seconds=0.0, cached=False,
        extra={"std": p.std, "points": p.points},
    )  # fmt: skip


# --------------------------------------------------------------------------- the report


def summarize(history: Sequence[Any], constraints: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per constraint the gate saw: candidates predicted and measured (by reason), and the
    surrogate's error on the candidates where it predicted and the oracle then measured.

    ``verdicts``: checked candidates whose interval lay clear of the bound (a verdict the
    gate would have acted on: audits, would-be bests); ``wrong_feasible``: of those,
    predicted within the bound and measured over it; ``wrong_infeasible``: the reverse;
    their rates are fractions of ``verdicts``. Errors are (measured - predicted) / measured.

    Candidates whose interval straddled the bound: ``straddling_predicted`` were deferred
    (predicted; measured later only if the final choice reached them, then counted under
    their later reason); ``straddling_audited`` straddled but were drawn for the audit, and
    of those ``straddling_wrong_feasible`` had a predicted value (the interval's middle)
    within the bound and a measured one over it, ``straddling_wrong_infeasible`` the
    reverse: how often the verdict a deferred candidate gives the searcher is wrong.
    """
    bounds = {c.name: c.bound for c in constraints}
    out: dict[str, dict[str, Any]] = {}
    for o in history:
        for n, info in o.surrogate.items():
            s = out.setdefault(n, {"predicted": 0, "measured": 0, "reasons": {}, "errors": [],
                                   "wrong_feasible": 0, "wrong_infeasible": 0, "covered": 0,
                                   "verdicts": 0, "straddling_predicted": 0,
                                   "straddling_audited": 0, "straddling_wrong_feasible": 0,
                                   "straddling_wrong_infeasible": 0})  # fmt: skip
            s[info["source"]] += 1
            s["reasons"][info["reason"]] = s["reasons"].get(info["reason"], 0) + 1
            pred, b = info.get("prediction"), bounds.get(n)
            straddles = bool(pred) and b is not None and pred["low"] <= b <= pred["high"]
            if straddles and info["source"] == "predicted":
                s["straddling_predicted"] += 1
            if info["source"] == "measured" and pred:
                v = float(o.values[n])
                s["errors"].append((v - pred["value"]) / v)
                s["covered"] += int(pred["low"] <= v <= pred["high"])
                if b is not None and not straddles:
                    # A verdict the gate would have acted on (its interval clear of the bound).
                    s["verdicts"] += 1
                    s["wrong_feasible"] += int(pred["high"] < b < v)
                    s["wrong_infeasible"] += int(v <= b < pred["low"])
                elif straddles and info["reason"] == "audit":
                    # A straddler drawn for the audit: its predicted verdict (the middle's
                    # side of the bound) is what the searcher would have got, deferred.
                    s["straddling_audited"] += 1
                    s["straddling_wrong_feasible"] += int(pred["value"] <= b < v)
                    s["straddling_wrong_infeasible"] += int(v <= b < pred["value"])
    for s in out.values():
        errs = np.abs(np.asarray(s.pop("errors"), dtype=float))
        s["checked"] = int(errs.size)
        s["mean_abs_error"] = float(errs.mean()) if errs.size else None
        s["median_abs_error"] = float(np.median(errs)) if errs.size else None
        s["max_abs_error"] = float(errs.max()) if errs.size else None
        n = max(1, s["checked"])
        s["coverage"] = s["covered"] / n if errs.size else None
        v = s["verdicts"]
        s["wrong_feasible_rate"] = s["wrong_feasible"] / v if v else None
        s["wrong_infeasible_rate"] = s["wrong_infeasible"] / v if v else None
        a = s["straddling_audited"]
        s["straddling_wrong_rate"] = (
            (s["straddling_wrong_feasible"] + s["straddling_wrong_infeasible"]) / a if a else None
        )
        if not math.isfinite(s.get("mean_abs_error") or 0.0):
            s["mean_abs_error"] = None
    return out


def surrogate_report(evaluator: Any) -> dict[str, Any]:
    """The run's surrogate in plain JSON: mode, decision and reason per budget, candidates
    measured and predicted, the error where it was checked; {} when the mode was off."""
    decision = evaluator.surrogate_decision
    if evaluator.surrogate_mode == "off" or decision is None:
        return {}
    history = evaluator.history
    measured = {c.name: sum(o.sources.get(c.name, "measured") == "measured" for o in history)
                for c in evaluator.constraints}  # fmt: skip
    return {
        "mode": decision["mode"],
        "enabled": dict(decision["enabled"]),
        "reasons": dict(decision["reasons"]),
        "candidates": len(history),
        "candidates_measured": measured,
        "budgets": summarize(history, evaluator.constraints),
    }
