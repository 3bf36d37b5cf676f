"""The peer benchmark: a peer's knob bisected to a measured bound, McNemar's test, the quick run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import peers

ORACLE = "onnxruntime:cpu?threads=1&min_time=0.05&max_time=1"
SHAPE = (3, 32, 32)


def _dense():
    from hwprune.models import get_model

    return get_model("vgg11_cifar", num_classes=10, width=0.25).eval()


def test_bisection_lands_the_largest_torch_pruning_model_within_a_measured_bound() -> None:
    """Timed by a real ONNX Runtime oracle: the chosen model meets the bound on fresh calls,
    and the smallest probe above it (one interval width less pruning) misses it."""
    dense = _dense()
    measure = peers.onnx_measurer(ORACLE, input_shape=SHAPE)
    bound = 0.5 * peers.onnx_measurer(ORACLE, input_shape=SHAPE, repeats=3)(dense)
    build = peers.tp_builder(dense, peers.parse_peer("tp-mag-uniform-r8"), input_shape=SHAPE)
    steps = 4
    confirm = peers.onnx_measurer(ORACLE, input_shape=SHAPE, repeats=3)
    found = peers.bisect_keep(build, measure, bound=bound, steps=steps, confirm=confirm)

    assert len(found.trace) == steps
    assert found.module is not None and found.latency_ms <= bound
    assert peers._params(found.module) < peers._params(dense)
    met = [t for t in found.trace if t["met"]]
    missed = [t for t in found.trace if not t["met"]]
    # Bisection brackets the bound: the largest probe that met it and the smallest above it
    # that missed are one final interval apart.
    width = (1.0 - peers.MIN_KEEP) / 2 ** (steps - 1)
    top = max(t["keep"] for t in met)
    above = [t["keep"] for t in missed if t["keep"] > top]
    assert above and math.isclose(min(above) - top, width, rel_tol=1e-9)
    # The chosen one is the largest model that met the bound and passed its confirmation.
    chosen = next(t for t in found.trace if t["keep"] == found.keep)
    assert chosen["confirmed_ms"] <= bound
    for t in met:
        if t["params"] > chosen["params"]:
            assert t["confirmed_ms"] > bound


def test_bisection_on_a_deterministic_oracle_finds_the_ratio_exactly() -> None:
    """On the parameter count (a static oracle: no timing noise) the bound set by the model
    at keep 0.6 (pruning ratio 0.4) is met there: the bisection ends within one interval of
    it, and the probe one interval larger misses the bound."""
    dense = _dense()
    build = peers.tp_builder(dense, peers.parse_peer("tp-mag-uniform-r8"), input_shape=SHAPE)
    measure = peers.onnx_measurer("params", input_shape=SHAPE)
    bound = measure(build(0.6))
    found = peers.bisect_keep(build, measure, bound=bound, steps=8)
    width = (1.0 - peers.MIN_KEEP) / 2**7
    # Channel counts round to 8, so a little less pruning may build the same model: the
    # largest model within the bound is the one at keep 0.6.
    assert found.latency_ms == bound and found.keep >= 0.6 - width
    above = min(t["keep"] for t in found.trace if not t["met"] and t["keep"] > found.keep)
    assert math.isclose(above - found.keep, width) and measure(build(above)) > bound


def test_a_bound_nothing_meets_chooses_nothing() -> None:
    dense = _dense()
    build = peers.tp_builder(dense, peers.parse_peer("tp-mag-uniform-r16"), input_shape=SHAPE)
    found = peers.bisect_keep(build, peers.onnx_measurer("params", input_shape=SHAPE), bound=1.0)
    assert found.module is None and found.keep is None and len(found.trace) == 1


def test_mcnemar_exact_p_value_on_hand_made_predictions() -> None:
    # 10 images only the first model gets right, 2 only the second, 20 both, 3 neither:
    # p = 2 * P(X <= 2 | n = 12, 1/2) = 2 * (1 + 12 + 66) / 4096.
    a = [True] * 10 + [False] * 2 + [True] * 20 + [False] * 3
    b = [False] * 10 + [True] * 2 + [True] * 20 + [False] * 3
    got = peers.mcnemar(a, b)
    assert (got["a_only"], got["b_only"]) == (10, 2)
    assert got["p"] == pytest.approx(158 / 4096, rel=1e-12)
    assert peers.mcnemar(b, a)["p"] == pytest.approx(158 / 4096, rel=1e-12)
    assert peers.mcnemar(a, a) == {"a_only": 0, "b_only": 0, "p": 1.0}
    assert peers.binom_two_sided(6, 12) == 1.0  # a balanced split caps at 1
    scipy_stats = pytest.importorskip("scipy.stats")
    assert got["p"] == pytest.approx(scipy_stats.binomtest(2, 12, 0.5).pvalue, rel=1e-9)


def test_predictions_pack_and_unpack_in_order() -> None:
    bits = [True, False, False, True, True, True, False]
    text = peers.pack_bits(bits)
    assert text == "9c"
    assert peers.unpack_bits(text, len(bits)) == bits


def test_peer_names_are_parsed_or_refused_in_one_sentence(capsys) -> None:
    p = peers.parse_peer("tp-taylor-global-r16")
    assert (p.kind, p.importance, p.global_pruning, p.round_to) == ("tp", "taylor", True, 16)
    assert peers.parse_peer("modelopt-fastnas").kind == "modelopt"
    with pytest.raises(SystemExit) as exc:
        peers.main(["--peers", "tp-l1-uniform-r8", "--no-write"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown peer 'tp-l1-uniform-r8'" in err and "Traceback" not in err


@pytest.mark.skipif(peers.modelopt_installed(), reason="nvidia-modelopt is installed here")
def test_modelopt_without_the_extra_is_shown_as_not_installed(tmp_path: Path) -> None:
    from benchmarks import _common

    cell = peers.Cell(model="vgg11_cifar", width=0.25, data="digits", budget="latency<=50%",
                      seed=0, bound_ms=0.1, reference_ms=0.2, oracle=ORACLE, train_epochs=1,
                      finetune_epochs=1)  # fmt: skip
    settings = {"searchers": [], "peers": [peers.MODELOPT], "evaluations": 1, "bisect_steps": 1}
    rows = peers._run_cell(settings, cell, _common.RunRows("peers", root=tmp_path),
                           fresh=False, stored_only=False)  # fmt: skip
    assert [r.get("skipped") for r in rows] == ["not installed"]
    table = peers.table(peers.summarise(rows, planned=1))
    assert "| modelopt-fastnas | not installed |" in table
    assert not (tmp_path / "peers_runs").exists()  # not stored: installing it later runs it


@pytest.mark.slow
def test_quick_run_writes_every_system_at_one_verified_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--quick`` end to end (100-190 s on 2 cores): hwprune and two Torch-Pruning peers on
    one cell, timed together, paired with McNemar's test, into a temporary results folder."""
    from benchmarks import _common

    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(_common, "RESULTS_MD", tmp_path / "RESULTS.md")
    monkeypatch.setattr(_common, "QUICK_DIR", tmp_path / "results" / "quick")
    monkeypatch.setattr(peers, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert peers.main(["--quick"]) == 0

    quick = tmp_path / "results" / "quick"
    saved = json.loads((quick / "peers.json").read_text())["results"]
    runs = {r["system"]: r for r in saved["runs"]}
    assert set(runs) == {"hwprune-latency-knapsack", "tp-mag-uniform-r8", "tp-taylor-global-r8"}
    bounds = {r["bound_ms"] for r in runs.values()}
    assert len(bounds) == 1  # one absolute bound for every system
    timings = {r.get("timing") for r in runs.values() if r.get("ok")}
    assert len(timings) == 1  # one interleaved timing for all of them
    for r in runs.values():
        if r.get("ok"):
            assert 0.0 <= r["accuracy"] <= 1.0 and r["test_n"] > 0
            assert r["verified_ms"] > 0 and Path(r["onnx"]).is_file()
            # The dense model was timed in the same rounds: a pruned model is faster.
            assert 0.0 < r["verified_over_dense_interleaved"] < 1.0
    tp_row = runs["tp-mag-uniform-r8"]
    assert tp_row["ok"] and tp_row["confirmed_ms"] <= tp_row["bound_ms"]
    (pair,) = saved["paired"]
    assert pair["hwprune"] == "hwprune-latency-knapsack" and 0.0 <= pair["p"] <= 1.0
    assert pair["latency_ratio"] > 0 and len(pair["latency_ratios"]) == 3  # the quick rounds
    md = (quick / "RESULTS.md").read_text()
    assert "<!-- BEGIN peers -->" in md and "| tp-taylor-global-r8 |" in md
    assert (quick / "peers.png").is_file()
    assert len(list((quick / "peers_runs").glob("*.json"))) >= 4  # 3 rows, the timing, reference
    assert not (tmp_path / "RESULTS.md").exists()  # the full run's tables are left alone


def test_a_knob_that_is_not_monotone_is_bisected_over_its_models_in_size_order() -> None:
    """Torch-Pruning with round_to=8 leaves ResNet-32's 16-channel layers whole below keep 0.5
    and prunes nothing at keep 0.1: the ladder starts from the smallest model the knob builds,
    grows in size, and the bisection over it meets a bound keep 0.1 cannot."""
    from hwprune.models import get_model

    dense = get_model("resnet32_cifar", num_classes=10).eval()
    build = peers.tp_builder(dense, peers.parse_peer("tp-mag-uniform-r8"), input_shape=SHAPE)
    measure = peers.onnx_measurer("params", input_shape=SHAPE)
    assert measure(build(peers.MIN_KEEP)) == measure(dense)  # the knob's end prunes nothing
    ladder = peers.size_ladder(build, input_shape=SHAPE, points=19)
    sizes = [measure(build(k)) for k in ladder]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes) and sizes[0] < 0.3 * sizes[-1]
    bound = sizes[len(sizes) // 2]
    found = peers.bisect_keep(build, measure, bound=bound, ladder=ladder)
    assert found.latency_ms == bound and found.keep == ladder[len(sizes) // 2]
    assert len(found.trace) <= 1 + math.ceil(math.log2(len(ladder)))
    old = peers.bisect_keep(build, measure, bound=bound)  # the knob bisected as it reads
    assert old.module is None


def test_the_pair_says_whether_hwprune_was_slower_than_the_peer_in_every_round() -> None:
    timing = {"values": {"h": [1.10, 1.05, 1.20], "p": [1.0, 1.0, 1.0], "q": [1.0, 1.1, 1.0]},
              "median": {"h": 1.10, "p": 1.0, "q": 1.0}}  # fmt: skip
    a, b, c = ({"system": n, "timing": "t"} for n in "hpq")
    got = peers.latency_ratio(a, b, {"t": timing})
    assert got["slower"] is True and got["latency_ratio"] == pytest.approx(1.10)
    assert got["latency_ratios"] == pytest.approx([1.10, 1.05, 1.20])
    assert peers.latency_ratio(b, a, {"t": timing})["slower"] is False
    assert peers.latency_ratio(a, c, {"t": timing})["slower"] is None  # 1.10, 0.95, 1.20
    # Timed apart (or not at all): no ratio.
    assert peers.latency_ratio(a, {**b, "timing": "u"}, {"t": timing})["latency_ratio"] is None
    assert peers.latency_ratio(a, b, {})["slower"] is None


def test_a_cell_is_ahead_only_with_the_lead_and_no_slower_model() -> None:
    def pair(seed: int, diff: float, slower: bool | None, budget: str = "b") -> dict:
        return {"model": "m", "width": 1.0, "budget": budget, "seed": seed, "hwprune": "h",
                "peer": "p", "difference": diff, "slower": slower}  # fmt: skip

    lines = peers.verdicts([pair(0, 0.01, None), pair(1, 0.004, False),
                            pair(0, 0.05, True, "c"), pair(0, -0.02, False, "d"),
                            pair(0, 0.002, None, "e")])  # fmt: skip
    assert lines[0].endswith("+0.7 points over 2 seed(s): ahead")
    assert lines[1].endswith("slower in every round on seed(s) [0]")
    assert lines[2].endswith(": behind") and lines[3].endswith("within 0.5 points")
