"""The latency surrogate's fit and decision rule (hwprune.evaluate.surrogate).

The timed oracle below is deterministic (a smooth function of the ONNX graph's
parameter count) and counts its calls: it tests the gate's logic, not measuring
(the real ONNX Runtime oracle is exercised in tests/test_surrogate_prune.py).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from torch import nn

import oracles
from hwprune.budgets import bind_constraints
from hwprune.config import PruneConfig
from hwprune.errors import ConfigError
from hwprune.evaluate import (
    Evaluator,
    accuracy_tolerance,
    read_jsonl,
    search_signal,
)
from hwprune.evaluate.surrogate import (
    BEST_WIDEN,
    MIN_POINTS,
    OracleSurrogate,
    Prediction,
    summarize,
    surrogate_report,
    surrogate_wanted,
)
from hwprune.report import _surrogate_lines
from hwprune.run.choose import CONFIRM_TOP, rank_feasible
from hwprune.space import ChannelSpace, Policy
from hwprune.task import BoundTask
from tests.nets import conv_net


@oracles.register_oracle("test-smooth-latency")
@dataclasses.dataclass
class SmoothLatency(oracles.Oracle):
    """0.05 ms + 1 ms per 100k parameters (+ a mild curve); counts its calls."""

    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    timed: ClassVar[bool] = True
    calls: ClassVar[list[int]] = [0]
    device: str = "cpu"

    def measure(self, model, *, input_shapes=None) -> oracles.Measurement:
        self.calls[0] += 1
        p = oracles.get_oracle("params").measure(model).value / 1e5
        return oracles.Measurement(
            quantity="latency", value=0.05 + p + 0.1 * p * p, unit="ms", oracle=self.spec,
            statistic="median", samples=20,
        )  # fmt: skip


@pytest.fixture(scope="module")
def space(data):
    return ChannelSpace(conv_net(32, 64, 64).eval(), example_input_shape=(1, *data.input_shape),
                        min_keep=0.1)  # fmt: skip


def make_evaluator(space, data, *, surrogate: str, log_path=None) -> Evaluator:
    return Evaluator(
        space=space,
        data=data,
        constraints=bind_constraints(["latency<=40%"], oracles={"latency": "test-smooth-latency"}),
        bn_batches=1,
        bn_batch_size=32,
        max_eval_samples=64,
        surrogate=surrogate,
        log_path=log_path,
    )


def policies(space, n: int, seed: int = 0) -> list[Policy]:
    rng = random.Random(seed)
    return [Policy(keep=tuple(rng.uniform(0.1, 1.0) for _ in space.units)) for _ in range(n)]


def run(ev: Evaluator, pols: list[Policy]) -> int:
    SmoothLatency.calls[0] = 0
    for p in pols:
        ev.evaluate(p)
    return SmoothLatency.calls[0]


# --------------------------------------------------------------------------- the model


def test_the_model_answers_only_after_enough_points_and_then_fits_a_smooth_target() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(0.1, 1.0, size=(40, 6))
    y = 1.0 + X @ np.array([3.0, 1.0, 0.5, 0.2, 0.0, 0.0]) + 0.5 * X[:, 0] ** 2
    model = OracleSurrogate(dense_features=np.ones(6), dense_value=float(y.max()), seed=0)
    for i in range(MIN_POINTS - 1):
        model.add(X[i], y[i])
    assert model.predict(X[30]) is None
    for i in range(MIN_POINTS - 1, 30):
        model.add(X[i], y[i])
    errors = []
    for i in range(30, 40):
        p = model.predict(X[i])
        assert p is not None and p.low < p.value < p.high and p.points == 30
        errors.append(abs(p.value - y[i]) / y[i])
    assert max(errors) < 0.05


def test_an_overconfident_model_widens_its_interval() -> None:
    model = OracleSurrogate(dense_features=np.ones(2), dense_value=1.0)
    for i in range(MIN_POINTS):
        model.add(np.array([i / 10, 1.0]), 1.0 + i / 10)
    p = model.predict(np.array([0.35, 1.0]))
    width = p.high - p.low
    for _ in range(6):  # every check missed by far more than its standard deviation
        model.check(p, p.value + 1000 * p.std)
    q = model.predict(np.array([0.35, 1.0]))
    assert q.high - q.low > 2 * width


# --------------------------------------------------------------------------- the rule


def test_auto_turns_on_for_slow_remote_or_engine_oracles_only() -> None:
    ort = oracles.get_oracle("onnxruntime:cpu?threads=1")
    assert surrogate_wanted("auto", ort, call_seconds=0.6)[0] is False
    assert surrogate_wanted("auto", ort, call_seconds=25.0)[0] is True
    assert surrogate_wanted("on", ort, call_seconds=0.6)[0] is True
    assert surrogate_wanted("off", ort, call_seconds=25.0)[0] is False
    remote = oracles.get_oracle("onnxruntime:cpu@http://127.0.0.1:9", check=False)
    assert surrogate_wanted("auto", remote, call_seconds=0.1) == (True, "auto: a remote oracle")
    params = oracles.get_oracle("params")
    assert surrogate_wanted("on", params, call_seconds=None)[0] is False  # exact counts: measured


@oracles.register_oracle("test-engine-latency")
@dataclasses.dataclass
class EngineLatency(SmoothLatency):
    """Declares an engine build per candidate on its "gpu" device (not on its "cpu")."""

    devices: ClassVar[tuple[str, ...]] = ("cpu", "gpu")
    slow_devices: ClassVar[tuple[str, ...]] = ("gpu",)


def test_auto_reads_slowness_from_the_oracle_class_not_its_name() -> None:
    slow = oracles.get_oracle("test-engine-latency:gpu")
    assert surrogate_wanted("auto", slow, call_seconds=0.1) == (
        True, "auto: an engine is built per candidate")  # fmt: skip
    fast = oracles.get_oracle("test-engine-latency:cpu")
    assert surrogate_wanted("auto", fast, call_seconds=0.1)[0] is False
    # onnxruntime is slow on its TensorRT provider only (built here, not run).
    trt = oracles.get_oracle("onnxruntime:tensorrt", check=False)
    assert (
        surrogate_wanted("auto", trt, call_seconds=0.1)[1]
        == "auto: an engine is built per candidate"
    )


def test_bad_mode_is_refused_in_one_sentence() -> None:
    with pytest.raises(ConfigError, match=r"surrogate must be one of auto, on, off, got 'often'"):
        PruneConfig(model="vgg11_cifar", budgets=("latency<=50%",), surrogate="often")


def test_the_gate_measures_fewer_and_only_where_it_may_predict(space, data, tmp_path) -> None:
    pols = policies(space, 40)
    off = make_evaluator(space, data, surrogate="off")
    off.calibrate()
    calls_off = run(off, pols)
    ev = make_evaluator(space, data, surrogate="on", log_path=str(tmp_path / "ep.jsonl"))
    ev.calibrate()
    calls_on = run(ev, pols)
    n = ev.evaluations
    assert calls_off == n  # one call per distinct candidate
    assert calls_on < 0.7 * n
    bound = ev.constraints[0].bound
    best = None
    floor = ev.score_floor

    def signal(o) -> float:  # as the gate compares: a candidate at chance by its size
        return search_signal(o.accuracy, o.params, floor=floor, dense_params=space.dense_params)

    def tol(best: float) -> float:  # sizes are exact: no sampling tolerance at chance
        return (
            0.0
            if floor is not None and best <= floor
            else accuracy_tolerance(best, ev.eval_samples)
        )

    for o in ev.history:
        info = o.surrogate["latency"]
        if o.sources["latency"] == "predicted":
            assert o.measurements["latency"].statistic == "predicted"
            p = info["prediction"]
            if p["low"] <= bound <= p["high"]:  # unsure: deferred to the final choice
                assert info["reason"] == "deferred" and info["straddles"] and o.undecided
            else:
                # Clearly more accurate than every feasible candidate so far: predicted only if
                # sure at twice the interval (a wrong 'infeasible' would hide the best model).
                would_be_best = best is None or signal(o) > best + tol(best)
                pred = Prediction(**p)
                assert not (would_be_best and pred.straddles(bound, widen=BEST_WIDEN)), o.index
                assert info["reason"] == "predicted" and not o.undecided
        else:
            assert o.measurements["latency"].statistic == "median"
            assert not o.undecided
            if info["reason"] == "best":  # clearly more accurate than every feasible one so far
                assert best is None or signal(o) > best + tol(best)
                pred = Prediction(**info["prediction"])
                assert not pred.straddles(bound) and pred.straddles(bound, widen=BEST_WIDEN)
        assert info["reason"] in ("warmup", "audit", "best", "predicted", "deferred")
        if o.feasible:
            best = signal(o) if best is None else max(best, signal(o))
    assert [o.surrogate["latency"]["reason"] for o in ev.history[: MIN_POINTS - 1]] == [
        "warmup"
    ] * (MIN_POINTS - 1)  # the dense model is the first point
    s = summarize(ev.history, ev.constraints)["latency"]
    assert s["predicted"] == sum(o.sources["latency"] == "predicted" for o in ev.history) > 0
    assert s["checked"] > 0 and s["median_abs_error"] < 0.1
    # The log says which values were predicted, and so does a resumed evaluator.
    records = [r for r in read_jsonl(tmp_path / "ep.jsonl") if r.get("type") == "candidate"]
    assert [r["sources"]["latency"] for r in records] == [o.sources["latency"] for o in ev.history]
    again = make_evaluator(space, data, surrogate="on", log_path=str(tmp_path / "ep.jsonl"))
    assert [o.sources for o in again.history] == [o.sources for o in ev.history]
    assert surrogate_report(ev)["budgets"]["latency"]["predicted"] == s["predicted"]


def test_measured_only_measures_a_predicted_value_and_the_log_keeps_it(
    space, data, tmp_path
) -> None:
    path = str(tmp_path / "ep.jsonl")
    ev = make_evaluator(space, data, surrogate="on", log_path=path)
    ev.calibrate()
    run(ev, policies(space, 40, seed=1))
    predicted = next(o for o in ev.history if o.predicted)
    SmoothLatency.calls[0] = 0
    assert ev.evaluate(predicted.policy).predicted == ("latency",)  # the search may reuse it
    assert SmoothLatency.calls[0] == 0
    with ev.measured_only():
        measured = ev.evaluate(predicted.policy)
    assert SmoothLatency.calls[0] == 1
    assert measured.sources["latency"] == "measured" and measured.key == predicted.key
    assert ev._by_key[predicted.key] is measured
    assert ev.smallest()["latency"] == min(
        o.values["latency"] for o in ev.history if not o.predicted
    )
    # A resumed evaluator gives the search what it saw (the prediction), and a verdict
    # beyond the search the measurement of the earlier session: no call, nothing logged.
    again = make_evaluator(space, data, surrogate="on", log_path=path)
    again.calibrate()
    back = next(o for o in again.history if o.key == predicted.key)
    assert back.sources["latency"] == "predicted"
    assert again.evaluate(predicted.policy).values == back.values
    lines = len(list(read_jsonl(path)))
    SmoothLatency.calls[0] = 0
    with again.measured_only():
        later = again.evaluate(predicted.policy)
    assert SmoothLatency.calls[0] == 0 and len(list(read_jsonl(path))) == lines
    assert later.sources["latency"] == "measured"
    assert later.values["latency"] == pytest.approx(measured.values["latency"])
    assert again._by_key[predicted.key] is later
    assert len(again.history) == len(ev.history)


def test_the_auto_decision_is_logged_once_and_kept_on_resume(space, data, tmp_path) -> None:
    path = str(tmp_path / "ep.jsonl")
    ev = make_evaluator(space, data, surrogate="on", log_path=path)
    ev.calibrate()
    again = make_evaluator(space, data, surrogate="on", log_path=path)
    again.calibrate()
    decisions = [r for r in read_jsonl(path) if r.get("type") == "surrogate"]
    assert len(decisions) == 1 and decisions[0]["enabled"] == {"latency": True}
    assert again.surrogate is not None


# --------------------------------------------------------------------------- contenders


@oracles.register_oracle("test-noisy-latency")
@dataclasses.dataclass
class NoisyLatency(SmoothLatency):
    """SmoothLatency times a factor in [0.8, 1.2] fixed by the model's parameter count: as
    rough as a loaded machine's timing (intervals straddle the bound), yet the same model
    always measures the same, so a resumed run sees the values the first one saw."""

    calls: ClassVar[list[int]] = [0]

    def measure(self, model, *, input_shapes=None) -> oracles.Measurement:
        m = super().measure(model, input_shapes=input_shapes)
        n = int(oracles.get_oracle("params").measure(model).value)
        u = ((n * 2654435761) % 1009) / 1009
        return dataclasses.replace(m, value=m.value * (0.8 + 0.4 * u))


def size_score(model: nn.Module) -> float:
    """A proxy accuracy that grows with the model's size, give or take 0.15 (fixed per size),
    on 200 samples: feasible candidates near the bound are the accurate ones, and some
    straddling ones are not."""
    n = sum(p.numel() for p in model.parameters())
    u = ((n * 40503) % 1013) / 1013
    return round(200 * min(1.0, 0.3 + 0.6 * n / TINY_PARAMS + 0.3 * (u - 0.5))) / 200


TINY_PARAMS = sum(p.numel() for p in conv_net(32, 64, 64).parameters())


def noisy_evaluator(space, *, log_path=None) -> Evaluator:
    task = BoundTask(calibrate=lambda m: None, score=size_score, score_samples=200,
                     score_key="test-size-score")  # fmt: skip
    return Evaluator(
        space=space,
        task=task,
        constraints=bind_constraints(["latency<=40%"], oracles={"latency": "test-noisy-latency"}),
        surrogate="on",
        log_path=log_path,
    )


def test_at_chance_the_would_be_best_is_the_largest_not_the_noisiest(space, data) -> None:
    """Near chance a smaller model's noise would "beat" the best feasible one every few
    candidates; the gate then measures the largest instead, as the final choice ranks."""

    def noise_score(model) -> float:
        size = sum(p.numel() for p in model.parameters())
        return 0.9 if size == TINY_PARAMS else 0.1 + 0.05 * (1 - size / TINY_PARAMS)

    task = BoundTask(calibrate=lambda m: None, score=noise_score, score_samples=200,
                     score_chance=0.1, score_key="test-noise-score")  # fmt: skip
    ev = Evaluator(space=space, task=task, surrogate="on", constraints=bind_constraints(
        ["latency<=40%"], oracles={"latency": "test-noisy-latency"}))  # fmt: skip
    ev.calibrate()
    for p in policies(space, 80, seed=3):
        ev.evaluate(p)
    floor, bound, bests = ev.score_floor, ev.constraints[0].bound, 0
    assert floor is not None and all(o.accuracy <= floor for o in ev.history)
    for o in ev.history:
        info = o.surrogate["latency"]
        if info["prediction"] is None or info["reason"] in ("audit", "deferred"):
            continue
        sizes = [x.params for x in ev.history[: o.index] if x.feasible]
        would_be_best = not sizes or o.params > max(sizes)
        unsure = Prediction(**info["prediction"]).straddles(bound, widen=BEST_WIDEN)
        assert (info["reason"] == "best") == (would_be_best and unsure), o.index
        bests += info["reason"] == "best"
    assert bests > 0


def gate_rows(ev: Evaluator) -> list[tuple[str, str, str, bool | None]]:
    """Per candidate: key, source, reason, whether its interval straddled the bound."""
    rows, bound = [], ev.constraints[0].bound
    for o in ev.history:
        info, p = o.surrogate["latency"], o.surrogate["latency"]["prediction"]
        straddled = None if p is None else p["low"] <= bound <= p["high"]
        assert info.get("straddles") == straddled  # the log says so, where there is a prediction
        rows.append((o.key, info["source"], info["reason"], straddled))
    return rows


def test_a_straddling_value_is_deferred_unless_audited_and_counted_apart(space, data) -> None:
    ev = noisy_evaluator(space)
    ev.calibrate()
    NoisyLatency.calls[0] = 0
    for p in policies(space, 80, seed=3):
        ev.evaluate(p)
    assert NoisyLatency.calls[0] == sum(o.sources["latency"] == "measured" for o in ev.history)
    rows = gate_rows(ev)
    deferred = 0
    for _key, source, reason, straddled in rows:
        if straddled:  # unsure: predicted for the searcher, unless drawn for the audit
            assert (source, reason) in (("predicted", "deferred"), ("measured", "audit"))
            deferred += source == "predicted"
        else:
            assert reason != "deferred"
    assert deferred > 0
    # A would-be best (clearly more accurate than every feasible one before it) is measured
    # when its verdict is not sure at twice the interval, and only then.
    bound, bests = ev.constraints[0].bound, 0
    for o in ev.history:
        info = o.surrogate["latency"]
        feasible = [x.accuracy for x in ev.history[: o.index] if x.feasible]
        if info["prediction"] is None or info["reason"] in ("audit", "deferred"):
            continue
        top = max(feasible, default=None)
        would_be_best = top is None or o.accuracy > top + accuracy_tolerance(top, ev.eval_samples)
        unsure = Prediction(**info["prediction"]).straddles(bound, widen=BEST_WIDEN)
        assert (info["reason"] == "best") == (would_be_best and unsure), o.index
        bests += info["reason"] == "best"
    assert bests > 0
    s = summarize(ev.history, ev.constraints)["latency"]
    assert s["straddling_predicted"] == s["reasons"]["deferred"] == deferred
    # Audited straddlers are counted apart from the verdicts, with the side of their mean.
    bound = ev.constraints[0].bound
    audited = [o for o, r in zip(ev.history, rows, strict=True) if r[2] == "audit" and r[3]]
    means = [o.surrogate["latency"]["prediction"]["value"] for o in audited]
    assert s["straddling_audited"] == len(audited)
    assert s["straddling_wrong_feasible"] == sum(
        m <= bound < o.values["latency"] for m, o in zip(means, audited, strict=True)
    )
    assert s["straddling_wrong_infeasible"] == sum(
        o.values["latency"] <= bound < m for m, o in zip(means, audited, strict=True)
    )
    clear = [o for o, r in zip(ev.history, rows, strict=True)
             if r[1] == "measured" and r[3] is False]  # fmt: skip
    assert s["verdicts"] == len(clear)  # checked with the interval clear of the bound
    lines = "\n".join(_surrogate_lines(surrogate_report(ev)))
    assert "interval straddling the bound, deferred (predicted for the search; " in lines
    assert f"reached it): {deferred}" in lines


def test_a_resumed_gate_decides_as_the_uninterrupted_one(space, data, tmp_path) -> None:
    pols = policies(space, 80, seed=3)
    whole = noisy_evaluator(space)
    whole.calibrate()
    for p in pols:
        whole.evaluate(p)
    path = str(tmp_path / "ep.jsonl")
    first = noisy_evaluator(space, log_path=path)
    first.calibrate()
    for p in pols[:40]:
        first.evaluate(p)
    again = noisy_evaluator(space, log_path=path)  # the log holds the first 40
    again.calibrate()
    for p in pols:  # the searcher replays: the first 40 are answered from the log
        again.evaluate(p)
    assert gate_rows(again) == gate_rows(whole)
    resumed = [(r[1], r[2]) for r in gate_rows(again)[40:]]
    assert ("predicted", "deferred") in resumed and ("predicted", "predicted") in resumed


def test_in_a_tie_an_unsure_candidate_predicted_over_its_bound_comes_after_the_rest() -> None:
    from types import SimpleNamespace as O

    def o(key, cost, *, feasible, undecided, acc=0.80):
        return O(
            key=key, accuracy=acc, max_cost=cost, feasible=feasible, undecided=undecided, raced=None
        )  # scored in full

    pool = [o("over-far", 1.20, feasible=False, undecided=True),
            o("measured", 0.90, feasible=True, undecided=False),
            o("over-near", 1.03, feasible=False, undecided=True),
            o("under-unsure", 0.99, feasible=True, undecided=True),
            o("better", 0.50, feasible=True, undecided=False, acc=0.95)]  # fmt: skip
    ranked = rank_feasible(pool, samples=100, undecided=True)
    assert [x.key for x in ranked] == ["better", "under-unsure", "measured", "over-near",
                                       "over-far"]  # fmt: skip
    # Without undecided, only what the search called feasible.
    assert [x.key for x in rank_feasible(pool, samples=100)] == ["better", "under-unsure",
                                                                   "measured"]  # fmt: skip


def test_the_final_choice_measures_a_deferred_candidate_before_it_may_ship_it(space) -> None:
    from hwprune.agents import get_searcher
    from hwprune.run.choose import confirm_best

    ev = noisy_evaluator(space)
    ev.calibrate()
    result = get_searcher("random", seed=0).search(space=space, evaluator=ev, evaluations=60,
                                                    confirm=0)  # fmt: skip
    ranked = rank_feasible(ev.history, samples=ev.eval_samples, undecided=True)
    feasible = rank_feasible(ev.history, samples=ev.eval_samples)
    assert len(ranked) > len(feasible)  # predicted infeasible, but unsure: ranked too
    assert any(o.undecided for o in ranked[:CONFIRM_TOP])  # the choice reaches some
    NoisyLatency.calls[0] = 0
    best, records = confirm_best(space, ev, result.history)
    assert best is not None and records[-1]["confirmed"] and records[-1]["key"] == best.key
    # In rank order; a predicted candidate was measured once first (and passed over if that
    # said infeasible), every tried one re-measured afresh: 1 and 3 calls.
    assert [r["key"] for r in records] == [o.key for o in ranked[: len(records)]]
    was_predicted = {o.key for o in ranked[: len(records)] if o.predicted}
    assert NoisyLatency.calls[0] == len(was_predicted) + 3 * sum(
        r["stage"] == "confirmed" for r in records
    )
    for r in records:
        if r["stage"] == "measured":
            assert r["key"] in was_predicted and not r["confirmed"]
            assert r["values"]["latency"] > ev.constraints[0].bound
    assert best.predicted == () and best.feasible  # shipped on measured values only
    assert all(o.key not in was_predicted or not o.predicted for o in ev.history)
    assert sum(r["stage"] == "confirmed" for r in records) <= CONFIRM_TOP
    # The measured values are the log's now: the report counts them as measured later.
    s = summarize(ev.history, ev.constraints)["latency"]
    assert s["reasons"].get("later", 0) == len(was_predicted)


def _later(line: str) -> bool:
    """A log line holding a deferred candidate's measurement by the final choice."""
    record = json.loads(line)
    return record.get("surrogate", {}).get("latency", {}).get("reason") == "later"


def test_a_run_killed_during_the_final_choice_resumes_to_the_same_choice(space, tmp_path) -> None:
    """Killed after the choice measured some deferred candidates, then resumed: the search
    replays on the predictions it saw, and the choice ranks, passes over and ships as the
    uninterrupted run did, without measuring a deferred candidate again."""
    from hwprune.agents import get_searcher
    from hwprune.run.choose import confirm_best

    def search(path: Path) -> Evaluator:
        ev = noisy_evaluator(space, log_path=str(path))
        ev.calibrate()
        get_searcher("random", seed=0).search(space=space, evaluator=ev, evaluations=60,
                                              confirm=0)  # fmt: skip
        return ev

    ev = search(tmp_path / "whole.jsonl")
    searched = [(o.key, o.values, o.sources) for o in ev.history]
    best, records = confirm_best(space, ev, ev.history)
    assert best is not None
    decisions = [(r["key"], r["stage"], r["confirmed"]) for r in records]
    lines = (tmp_path / "whole.jsonl").read_text().splitlines(keepends=True)
    later = [i for i, line in enumerate(lines) if _later(line)]
    assert len(later) >= 2  # the choice measured several deferred candidates
    confirmations = sum(r["stage"] == "confirmed" for r in records)
    for n, cut in enumerate(later, start=1):  # killed just after the n-th such measurement
        path = tmp_path / f"killed-{n}.jsonl"
        path.write_text("".join(lines[: cut + 1]))
        again = search(path)
        # The resumed search saw the predictions the first one saw.
        assert [(o.key, o.values, o.sources) for o in again.history] == searched
        NoisyLatency.calls[0] = 0
        best2, records2 = confirm_best(space, again, again.history)
        assert best2 is not None and best2.key == best.key
        assert [(r["key"], r["stage"], r["confirmed"]) for r in records2] == decisions
        # The measurements the first session made are not made again, nor logged again.
        assert NoisyLatency.calls[0] == len(later) - n + 3 * confirmations
        assert sum(map(_later, path.read_text().splitlines())) == len(later)
