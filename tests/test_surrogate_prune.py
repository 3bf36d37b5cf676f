"""Real ``hwprune prune`` runs with the latency surrogate on the real ONNX Runtime oracle (digits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwprune.cli import main
from hwprune.evaluate import read_jsonl

ORACLE = "latency=onnxruntime:cpu?threads=1&min_time=0.05&max_time=1&min_runs=10"


def _prune(out: Path, surrogate: str, evaluations: int = 20, *extra: str) -> list[str]:
    return ["prune", "--model", "vgg11_cifar", "--width", "0.25", "--budget", "latency<=50%",
            "--oracle", ORACLE, "--agent", "random", "--evaluations", str(evaluations),
            "--finetune-epochs", "0", "--no-tensorrt", "--surrogate", surrogate,
            "--out", str(out), "--quiet", "--json", *extra]  # fmt: skip


def _candidates(out: Path) -> list[dict]:
    """One record per candidate, in the order they came: the last one logged for its key (a
    value deferred by the surrogate and measured by the final choice is logged again)."""
    raw = [r for r in read_jsonl(out / "episodes.jsonl") if r.get("type") == "candidate"]
    last = {r["key"]: r for r in raw}
    for r in raw:
        if r is not last[r["key"]]:  # logged again: only to hold a later measurement
            again = last[r["key"]]
            assert r["sources"]["latency"] == "predicted", r["key"]
            assert again["sources"]["latency"] == "measured"
            assert again["surrogate"]["latency"]["reason"] == "later"
    return list({r["key"]: last[r["key"]] for r in raw}.values())


def test_surrogate_on_predicts_some_candidates_and_proves_the_final_model_by_measurement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "on"
    assert main(_prune(out, "on")) == 0
    result = json.loads(capsys.readouterr().out)
    records = _candidates(out)
    sources = [r["sources"]["latency"] for r in records]
    assert set(sources) <= {"measured", "predicted"}
    measured = sources.count("measured")
    assert "predicted" in sources and measured < len(records)
    for r in records:  # a predicted value says so in its measurement too
        predicted = r["sources"]["latency"] == "predicted"
        assert (r["measurements"]["latency"]["statistic"] == "predicted") == predicted
        gate = r.get("surrogate", {}).get("latency")
        if gate is None:  # a repair's candidate (the final proof failed under load): measured
            assert not predicted
        else:
            assert gate["source"] == r["sources"]["latency"]
    # The shipped model's budget check is a fresh measurement (median of timed calls).
    budget = result["budgets"][0]
    assert budget["statistic"] == "median" and budget["met"] is True
    # dense (3 calls) + the search's measured candidates + confirmation and proof (3 each).
    assert result["search"]["oracle_calls"]["latency"] >= 3 + measured + 3 + 3
    s = result["surrogate"]["budgets"]["latency"]
    gated = [r["sources"]["latency"] for r in records if "latency" in r.get("surrogate", {})]
    assert s["predicted"] == sources.count("predicted") and s["measured"] == gated.count("measured")
    assert "## Latency surrogate" in (out / "report.md").read_text()


@pytest.mark.slow
def test_on_makes_fewer_calls_than_off_and_a_resume_keeps_predictions_predicted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_prune(tmp_path / "off", "off", 24)) == 0
    off = json.loads(capsys.readouterr().out)
    assert all(r["sources"]["latency"] == "measured" for r in _candidates(tmp_path / "off"))
    assert off["surrogate"] == {}
    on_dir = tmp_path / "on"
    assert main(_prune(on_dir, "on", 12)) == 0
    capsys.readouterr()
    first = _candidates(on_dir)
    assert main(["prune", "--resume", str(on_dir), "--evaluations", "24", "--quiet",
                 "--json"]) == 0  # fmt: skip
    on = json.loads(capsys.readouterr().out)
    after = _candidates(on_dir)
    # Nothing of the first session was measured again; its predictions stay predicted,
    # unless the second session's final choice reached one (then measured "later").
    assert [r["key"] for r in after[: len(first)]] == [r["key"] for r in first]
    predicted_before = {r["key"] for r in first if r["sources"]["latency"] == "predicted"}
    assert predicted_before
    for r in after:
        if r["key"] in predicted_before and r["sources"]["latency"] == "measured":
            assert r["surrogate"]["latency"]["reason"] == "later"
    s = on["surrogate"]["budgets"]["latency"]
    assert s["predicted"] == sum(r["sources"]["latency"] == "predicted" for r in after) > 0
    # The search's 24 candidates come first; a final proof that fails under load adds a
    # repair's candidates after them (measured), in either run.
    off_search = _candidates(tmp_path / "off")[:24]
    assert len(off_search) == 24 and len(after) >= 24
    calls_on = sum(r["sources"]["latency"] == "measured" for r in after[:24])
    assert calls_on < sum(r["sources"]["latency"] == "measured" for r in off_search) == 24
