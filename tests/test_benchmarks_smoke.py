"""The benchmarks package: its entry point's plan, and one real prune row end to end (slow).

The benchmarks import as ``benchmarks.NAME`` with the repository root on the path (pytest's
``pythonpath``), and run as ``python -m benchmarks.NAME`` from it."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_run_list_names_every_benchmark_with_its_quick_arguments() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--list", "--quick", "--no-gpu"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["python", "-m", f"benchmarks.{n}"]
        for n in ("demo", "oracles", "evaluate", "search", "compare", "quality", "paper")
    ]
    assert lines[-1].endswith("--data digits --device cpu --quick")
    assert all("missing" not in line for line in lines)


def test_run_only_rejects_an_unknown_benchmark() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "nope", "--list"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2
    assert "invalid choice: 'nope'" in out.stderr


BENCHMARKS = sorted(
    p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_is_a_module_whose_help_names_how_to_run_it(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks.{name} ")


def test_no_benchmark_edits_the_import_path() -> None:
    edits = re.compile(r"sys\.path\s*(\[.*\]\s*=|\+=|=|\.(insert|append|extend|remove)\()")
    found = [
        f"{p.name}:{i}"
        for p in sorted((ROOT / "benchmarks").glob("*.py"))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if edits.search(line)
    ]
    assert not found


def test_a_benchmark_run_as_a_file_says_how_to_run_it() -> None:
    # As a file, benchmarks/ comes first on the path and its oracles.py would hide the package.
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "oracles.py"), "--help"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "the benchmarks run as modules from the repository root: python -m benchmarks.oracles ..."
    ]


def test_command_line_records_the_module_a_benchmark_ran_as(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks._common import command_line

    main = types.ModuleType("__main__")
    main.__spec__ = importlib.machinery.ModuleSpec("benchmarks.quality", None)
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(
        sys, "argv", [str(ROOT / "benchmarks" / "quality.py"), "--data", "fashion-mnist?train=3000"]
    )
    assert command_line() == "python -m benchmarks.quality --data 'fashion-mnist?train=3000'"


def test_compare_caps_only_timed_oracles() -> None:
    from benchmarks.compare import with_max_time

    assert with_max_time("params", 2) == "params"
    assert with_max_time("onnxruntime:cpu?threads=1", 2) == (
        "onnxruntime:cpu?threads=1&min_time=0.1&max_time=2"
    )
    assert with_max_time("torch:cpu", 1.5) == "torch:cpu?min_time=0.1&max_time=1.5"


def test_paper_settings_follow_the_papers() -> None:
    from benchmarks.paper import settings

    full = settings(quick=False)
    icpr = [s for s in full if s["paper"] == "ICPR"]
    qlp = [s for s in full if s["paper"] == "QLP"]
    assert {s["model"] for s in icpr} == {"vgg11_cifar", "vgg16_cifar", "vgg19_cifar",
                                          "resnet18_cifar"}  # fmt: skip
    assert {s["budget"] for s in icpr} == {"params<=10%"}
    assert [s["budget"] for s in qlp] == ["params<=10%", "params<=5%", "params<=2%"]
    # A 2% budget is reachable only if no layer is forced to keep more than 2%.
    assert all(s["min_keep"] < 0.02 for s in qlp)


@pytest.mark.slow
def test_prune_row_end_to_end_on_a_tiny_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    from benchmarks.quality import prune_row, summarise

    oracle = "onnxruntime:cpu?threads=1&min_time=0.05&max_time=1"
    kwargs = dict(
        model="resnet20_cifar", width=0.25, data="digits", budgets=["latency<=70%"],
        oracles=[f"latency={oracle}"], searcher="uniform", seed=0, evaluations=6,
        finetune_epochs=1, train_epochs=1, run_dir=tmp_path / "run", remeasure_oracle=oracle,
        proxy="kd",
    )  # fmt: skip
    row = prune_row(**kwargs)
    assert row["ok"], row.get("error")
    assert row["proxy"] == "kd" and row["proxy_seconds_mean"] > 0
    assert 0 < row["params_final"] < row["params_dense"]
    assert 0 < row["remeasured_over_dense"] < 1.0
    assert row["remeasured"] > 0 and row["checks"][0]["bound"] > 0
    assert 0.0 <= row["accuracy"] <= 1.0
    saved = json.loads((tmp_path / "run" / "bench_row.json").read_text())
    assert saved["params_final"] == row["params_final"]
    # A second call reuses the finished run instead of pruning again.
    assert prune_row(**kwargs)["total_seconds"] == row["total_seconds"]
    # Re-selection resumes the run from its search history: no new candidate is evaluated.
    episodes = (tmp_path / "run" / "episodes.jsonl").read_text().count('"type": "candidate"')
    again = prune_row(**kwargs, reselect_from=row)
    assert again["ok"] and again["reselected"] and again["selection"] == "chance"
    assert again["search_seconds"] == row["search_seconds"] and "reselect_seconds" in again
    assert again["accuracy_before_reselect"] == row["accuracy"]
    after = (tmp_path / "run" / "episodes.jsonl").read_text().count('"type": "candidate"')
    assert after == episodes > 0
    (summary,) = summarise([row])
    assert summary["finished"] == 1 and summary["accuracy_mean"] == row["accuracy"]


def test_dense_checkpoint_names_keep_the_data_options_and_drop_the_folder() -> None:
    from benchmarks.quality import data_slug

    assert data_slug("digits") == "digits"
    assert data_slug("fashion-mnist?train=3000") == "fashion-mnist-train_3000"
    assert data_slug("fashion-mnist:/srv/fm?train=3000") == "fashion-mnist-train_3000"
    assert data_slug("fashion-mnist:/srv/fm") == data_slug("fashion-mnist") == "fashion-mnist"
    assert data_slug("fashion-mnist:?train=300") != data_slug("fashion-mnist:?train=3000")


def test_run_rows_store_and_return_a_finished_run(tmp_path: Path) -> None:
    from benchmarks._common import RunRows

    store = RunRows("search", root=tmp_path)
    tag = "vgg11_cifar-w0.5-latency<=40%-onnxruntime:cpu?threads=1-uniform-s0"
    assert store.get(tag) is None
    path = store.put(tag, {"accuracy": 0.93, "seed": 0})
    assert path.parent == tmp_path / "search_runs" and "<" not in path.name
    row = store.get(tag)
    assert row is not None and row["accuracy"] == 0.93
    assert row["measured"]["date"] and row["measured"]["machine"]["cores"]
    # A damaged file is not trusted: the run is redone.
    path.write_text("{not json", encoding="utf-8")
    assert store.get(tag) is None


def test_quick_results_never_touch_the_full_runs_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import _common

    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(_common, "RESULTS_MD", tmp_path / "RESULTS.md")
    monkeypatch.setattr(_common, "QUICK_DIR", tmp_path / "results" / "quick")
    full = _common.update_results_md("x", "X", "| a |\n|---|\n| 1 |", command="full", env={})
    assert full == tmp_path / "RESULTS.md" and "full" in full.read_text()
    before = full.read_text()
    quick = _common.update_results_md("x", "X", "| a |\n|---|\n| 2 |", command="quick", env={},
                                      quick=True)  # fmt: skip
    assert quick == tmp_path / "results" / "quick" / "RESULTS.md"
    assert "| 2 |" in quick.read_text()
    assert full.read_text() == before  # the full run's section is untouched
    path = _common.write_results("x", {"v": 2}, command="quick", env={}, quick=True)
    assert path == tmp_path / "results" / "quick" / "x.json"
    assert not (tmp_path / "results" / "x.json").exists()


def test_summary_counts_seeds_left_out_as_not_finished() -> None:
    from benchmarks.quality import headline, summarise

    def row(searcher: str, seed: int, acc: float) -> dict:
        check = {"bound": 1.0, "dense": 2.0}
        return {"model": "m", "width": 1.0, "budgets": ["latency<=50%"], "searcher": searcher,
                "seed": seed, "ok": True, "accuracy": acc, "accuracy_dense": 0.99,
                "remeasured_over_bound": 0.9, "remeasured_over_dense": 0.45,
                "params_final": 10, "params_dense": 100, "search_seconds": 1.0,
                "evaluations": 60, "checks": [check]}  # fmt: skip

    rows = [row("qlp", 0, 0.9), row("qlp", 1, 0.8), row("uniform", 0, 0.7)]
    by = {s["searcher"]: s for s in summarise(rows, planned=3)}
    assert (by["qlp"]["finished"], by["qlp"]["seeds"]) == (2, 3)
    assert by["qlp"]["accuracy_mean"] == pytest.approx(0.85)
    assert (by["uniform"]["finished"], by["uniform"]["seeds"]) == (1, 3)
    (line,) = headline(list(by.values()))
    assert (line["best_rl"], line["best_baseline"]) == ("qlp", "uniform")


def test_headline_compares_before_fine_tuning_too() -> None:
    from benchmarks.quality import headline, headline_table, summarise

    def row(searcher: str, seed: int, acc: float, before: float) -> dict:
        return {"model": "m", "width": 1.0, "budgets": ["latency<=30%"], "searcher": searcher,
                "seed": seed, "ok": True, "accuracy": acc, "accuracy_pruned": before,
                "accuracy_dense": 0.99, "params_final": 10, "params_dense": 100,
                "search_seconds": 1.0, "evaluations": 60}  # fmt: skip

    # After fine-tuning the RL searcher ties the baseline; before it, it is ahead.
    rows = [row("amc", 0, 0.99, 0.60), row("amc", 1, 0.99, 0.70), row("random", 0, 0.99, 0.30),
            row("uniform", 0, 0.99, 0.50), row("uniform", 1, 0.99, 0.40)]  # fmt: skip
    (line,) = headline(summarise(rows, planned=2))
    assert line["best_rl_pruned"] == "amc"
    assert line["best_rl_pruned_accuracy"] == pytest.approx(0.65)
    assert line["best_baseline_pruned"] == "uniform"
    assert line["best_baseline_pruned_accuracy"] == pytest.approx(0.45)
    text = headline_table([line])
    assert "| before fine-tuning | amc | 0.650 ± 0.071 | uniform | 0.450 ± 0.071 | +0.200 |" in text
    assert "test, after fine-tuning" in text and "+0.000" in text


def test_notes_name_far_remeasurements_and_failed_runs() -> None:
    from benchmarks.quality import measured_notes

    def row(seed: int, dense: float, over: float, repairs: int = 0) -> dict:
        return {"model": "m", "budgets": ["latency<=20%"], "searcher": "random", "seed": seed,
                "ok": True, "repairs": repairs, "remeasured_over_bound": over,
                "checks": [{"dense": dense}], "measured": {"machine": {"cpu": "X"}}}  # fmt: skip

    failed = {"model": "m", "budgets": ["latency<=20%"], "searcher": "qlp", "seed": 2,
              "ok": False, "error": "InfeasibleBudgetError: no allowed policy meets the budgets "
              "(latency<=20% ...); loosen the budget"}  # fmt: skip
    notes = measured_notes([row(0, 2.0, 0.9, repairs=1), row(1, 2.5, 1.77), failed])
    assert "m on X: 2.00-2.50 ms over 2 runs" in notes
    assert "1 of 3 runs re-measured their final model over the budget and were repaired" in notes
    assert "1 of 3 re-measurements landed more than 20% over the budget" in notes
    assert "m latency<=20% random seed 1: 1.77x" in notes
    assert "1 of 3 runs ended without a model (m latency<=20% qlp seed 2: no allowed " in notes
    assert measured_notes([row(0, 2.0, 0.9)]) == ""
    moved = {**row(0, 2.0, 0.9), "reselected": True, "accuracy": 0.97, "params_final": 50,
             "accuracy_before_reselect": 0.67, "params_before_reselect": 10,
             "ok_before_reselect": True}  # fmt: skip
    same = {**row(1, 2.0, 0.9), "reselected": True, "accuracy": 0.9, "params_final": 10,
            "accuracy_before_reselect": 0.9, "params_before_reselect": 10,
            "ok_before_reselect": True}  # fmt: skip
    notes = measured_notes([moved, same])
    assert "2 of 2 runs were re-selected" in notes
    assert "Of the 2 that shipped a model both times, 1 shipped a different one" in notes
    assert "test accuracy +0.300 on average (from +0.300 to +0.300)" in notes


def test_a_whole_suite_records_its_wall_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import _common, run

    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(_common, "RESULTS_MD", tmp_path / "RESULTS.md")
    steps = [("demo", "ok", 80.4), ("search", "failed (exit 1)", 12.0)]
    run.record(
        mode="quick",
        results=steps,
        total=93.0,
        gpu=False,
        env={"machine": {}, "cache_empty_at_start": True},
    )
    saved = json.loads((tmp_path / "results" / "run_quick.json").read_text())
    assert saved["results"]["total_seconds"] == 93.0
    assert [s["status"] for s in saved["results"]["steps"]] == ["ok", "failed (exit 1)"]
    md = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- BEGIN run_quick -->" in md and "| all |  | 93 |" in md
    assert "the cache was empty at the start" in md


def test_proxy_study_spearman_matches_scipy_with_ties_and_samples_spread_keeps() -> None:
    import random

    from scipy.stats import spearmanr

    from benchmarks.proxy_study import LEVELS, MIN_KEEP, sample_keep, spearman

    xs = [0.1, 0.4, 0.4, 0.2, 0.9, 0.5, 0.5, 0.3]
    ys = [1.0, 3.0, 2.0, 2.0, 5.0, 4.0, 6.0, 0.0]
    assert spearman(xs, ys) == pytest.approx(spearmanr(xs, ys).statistic)
    assert spearman(xs, [-y for y in ys]) == pytest.approx(-spearmanr(xs, ys).statistic)
    assert spearman(xs, [1.0] * len(xs)) != spearman(xs, [1.0] * len(xs))  # nan: constant side
    keeps = [sample_keep(random.Random(i), 13) for i in range(50)]
    assert all(MIN_KEEP <= k <= 1.0 for keep in keeps for k in keep)
    means = [sum(k) / len(k) for k in keeps]
    assert min(means) < 0.4 and max(means) > 0.6  # levels spread, not one shape
    low = [sample_keep(random.Random(i), 13, levels=LEVELS["resnet32_cifar"]) for i in range(50)]
    assert max(sum(k) / len(k) for k in low) < 0.6 < max(means)  # a residual net's lower range


def test_transfer_matrix_divides_by_each_runtimes_own_budget() -> None:
    from benchmarks.transfer import _load_note, matrix, summarise

    dense = {"latency_ms": {"onnxruntime": 10.0, "openvino": 20.0, "torch": 50.0},
             "measured": {"machine": {"load_average": [3.0, 2.0, 1.0]}}}  # fmt: skip
    runs = {
        "onnxruntime": {"ok": True, "latency_ms": {"onnxruntime": 4.0, "openvino": 10.0,
                                                   "torch": 10.0},
                        "measured": {"machine": {"load_average": [9.5, 2.0, 1.0]}}},
        "torch": {"ok": False, "error": "boom"},
    }  # fmt: skip
    cells = matrix(dense, runs)
    assert cells == {"onnxruntime": {"onnxruntime": 1.0, "openvino": 1.25, "torch": 0.5}}
    # A paired measurement (shipped and dense timed together) replaces the stored dense row.
    paired = {"latency_ms": {"onnxruntime": 2.0, "openvino": 2.0, "torch": 20.0},
              "dense_ms": {"onnxruntime": 10.0, "openvino": 4.0, "torch": 50.0}}  # fmt: skip
    both = matrix(dense, {"onnxruntime": {**runs["onnxruntime"], "paired": paired}})
    assert both == {"onnxruntime": {"onnxruntime": 0.5, "openvino": 1.25, "torch": 1.0}}
    summary = summarise([{"matrix": cells}])
    assert (summary["off_diagonal_missed"], summary["off_diagonal_total"]) == (1, 2)
    assert summary["off_diagonal_worst"] == 1.25 and summary["diagonal_worst"] == 1.0
    assert "3.0-9.5" in _load_note([{"dense": dense, "runs": runs}])


def test_transfer_stored_only_refuses_quick() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.transfer", "--stored-only", "--quick"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2 and "--stored-only reads the full matrix" in out.stderr


def test_headline_pairs_seeds_and_summary_flags_unused_budget() -> None:
    from benchmarks.quality import budget_use_note, headline, headline_table, summarise, table

    def row(searcher: str, seed: int, acc: float, final: float) -> dict:
        return {"model": "m", "width": 1.0, "budgets": ["latency<=30%"], "searcher": searcher,
                "seed": seed, "ok": True, "accuracy": acc, "accuracy_dense": 0.99,
                "params_final": 10, "params_dense": 100, "search_seconds": 1.0,
                "evaluations": 60, "checks": [{"bound": 1.0, "dense": 3.3, "final": final}]}  # fmt: skip

    rows = [row("qlp", 0, 0.90, 0.95), row("qlp", 1, 0.80, 0.97), row("qlp", 2, 0.85, 0.99),
            row("amc", 0, 0.70, 0.9), row("uniform", 0, 0.88, 0.5), row("uniform", 1, 0.81, 0.6),
            row("uniform", 2, 0.70, 0.95)]  # fmt: skip
    summary = summarise(rows, planned=3)
    by = {s["searcher"]: s for s in summary}
    assert by["qlp"]["budget_use_median"] == pytest.approx(0.97)
    assert by["uniform"]["budget_use_median"] == pytest.approx(0.6)
    (line,) = headline(summary)
    assert line["paired"] == pytest.approx({0: 0.02, 1: -0.01, 2: 0.15})
    assert line["paired_mean"] == pytest.approx(0.16 / 3)
    text = headline_table([line])
    assert "+0.053 ± 0.085 (s0: +0.020, s1: -0.010, s2: +0.150)" in text
    assert "0.600 (< 0.90)" in table(summary) and "| 0.970 |" in table(summary)
    assert "1 of 3 cells ship models that use less than 90%" in budget_use_note(summary)
    assert "m `latency<=30%` uniform 0.600" in budget_use_note(summary)
    # A seed whose runs were held to two machines' references is no pair.
    for r in rows:
        r["reference_ms"] = 2.0 if r["seed"] == 2 and r["searcher"] == "qlp" else 1.0
    (line,) = headline(summarise(rows, planned=3))
    assert line["paired"] == pytest.approx({0: 0.02, 1: -0.01})


def test_the_budget_note_names_where_each_run_lost_its_budget_use(tmp_path: Path) -> None:
    from benchmarks._common import RunRows
    from benchmarks.quality import budget_use_note, search_use, summarise, use_loss

    # A run directory as hwprune.prune leaves it: the search history and the report.
    run = tmp_path / "run"
    run.mkdir()
    shipped = {"a": 0.5, "b": 0.5}
    episodes = [
        {"feasible": False, "costs": {"latency": 1.3}, "policy": {"keep": {"a": 1.0, "b": 1.0}}},
        {"feasible": True, "costs": {"latency": 0.97}, "policy": {"keep": {"a": 0.7, "b": 0.7}}},
        {"feasible": True, "costs": {"latency": 0.71}, "policy": {"keep": shipped}},
    ]
    (run / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    (run / "report.json").write_text(json.dumps({"policy": {"keep": shipped}}))
    found = search_use(run)
    assert found == {"search_best_use": 0.97, "shipped_search_use": 0.71, "feasible_candidates": 2}
    assert search_use(tmp_path / "gone") is None

    def row(seed: int, final: float, **extra: object) -> dict:
        return {"model": "m", "width": 1.0, "budgets": ["latency<=30%"], "searcher": "qlp",
                "seed": seed, "ok": True, "accuracy": 0.8, "accuracy_dense": 0.9,
                "params_final": 10, "params_dense": 100, "search_seconds": 1.0, "evaluations": 9,
                "checks": [{"bound": 1.0, "dense": 3.3, "final": final}], **extra}  # fmt: skip

    choice = row(0, 0.70, **found)
    timing = row(1, 0.72, search_best_use=0.97, shipped_search_use=0.95)
    search = row(2, 0.80, search_best_use=0.85, shipped_search_use=0.85)
    repair = row(3, 0.60, search_best_use=0.99, shipped_search_use=0.70, repairs=1)
    assert [use_loss(r) for r in (choice, timing, search, repair)] == [
        "choice", "timing", "search", "repair"]  # fmt: skip
    assert use_loss(row(4, 0.95, **found)) is None  # uses 95%: nothing lost
    assert use_loss(row(5, 0.5)) == "unknown"  # its history is gone
    note = budget_use_note(summarise([choice, timing, search, repair], planned=4))
    assert "choice 1, repair 1, search 1, timing 1 runs" in note
    assert "| m `latency<=30%` qlp | 0.970 | 0.780 | 0.710 |" in note

    # A stored row gains the derived figures without losing when it was measured.
    store = RunRows("quality", root=tmp_path)
    store.put("t", row(0, 0.7))
    before = store.get("t")["measured"]
    assert store.amend("t", found)["search_best_use"] == 0.97
    assert store.get("t")["measured"] == before and store.amend("missing", found) is None


def test_a_fixed_bound_is_the_fraction_of_one_stored_reference_measurement(tmp_path: Path) -> None:
    from benchmarks._common import RunRows, absolute_budget, machine_key, reference_latency

    rows = RunRows("quality", root=tmp_path)
    oracle = "onnxruntime:cpu?threads=1&min_time=0.01&max_time=0.2&min_runs=5"
    kwargs = dict(model="vgg11_cifar", width=0.25, num_classes=10, input_shape=(3, 32, 32),
                  oracle=oracle, rows=rows)  # fmt: skip
    ref = reference_latency(**kwargs, calls=3)
    assert len(ref["values"]) == 3 and ref["median"] == sorted(ref["values"])[1] > 0
    assert reference_latency(**kwargs, calls=3)["values"] == ref["values"]  # stored, not redone
    assert ref["tag"].endswith(f"-m{machine_key()}")  # one reference per machine
    assert absolute_budget("latency<=40%", 1.5) == "latency<=0.60000ms"
    assert absolute_budget("latency<=2ms", 1.5) == "latency<=2ms"


def test_a_reference_stored_on_another_machine_is_not_this_machines_bound(tmp_path: Path) -> None:
    """References stored before they were kept per machine carry no machine key: one that
    this machine measures alike is adopted (the rows stored with it keep their bound), one
    it measures 2-3x apart (another host of one generic CPU name) is replaced by its own.
    The oracle is the FLOPs count, which measures alike every time: the rule is the
    oracle's business only through the measured value, and a timed oracle on a loaded
    2-core runner once measured the same model 1.33x apart within this test."""
    from benchmarks._common import RunRows, reference_latency

    oracle = "flops"
    kwargs = dict(model="vgg11_cifar", width=0.25, num_classes=10, input_shape=(3, 32, 32),
                  oracle=oracle, calls=3)  # fmt: skip
    here = reference_latency(**kwargs, rows=RunRows("quality", root=tmp_path / "here"))["median"]
    legacy = "reference-vgg11_cifar-w0.25-flops"
    for name, stored, adopted in (("alike", here, True), ("other", here * 2.5, False)):
        rows = RunRows("quality", root=tmp_path / name)
        rows.put(legacy, {"tag": legacy, "model": "vgg11_cifar", "width": 0.25, "oracle": oracle,
                          "values": [stored], "median": stored, "unit": "ms"})  # fmt: skip
        ref = reference_latency(**kwargs, rows=rows)
        assert (ref["median"] == stored) is adopted, name
        assert (ref.get("adopted_from") == legacy) is adopted and len(
            ref.get("check_values", [0] * 3)
        ) == 3
        assert rows.get(legacy)["median"] == stored  # the old rows' reference is kept as it was


def test_staircase_probe_only_stores_a_budgeted_probe_with_its_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--probe-only times a real ONNX Runtime staircase, held to its seconds, and loads no data."""
    from benchmarks import staircase
    from benchmarks._common import machine_key

    monkeypatch.setattr(staircase.common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(staircase, "RUNS_DIR", tmp_path / "runs")
    argv = ["--probe-only", "--model", "vgg11_cifar", "--width", "0.125", "--input-shape", "3",
            "32", "32", "--oracle", "onnxruntime:cpu?threads=1", "--probe-seconds", "2",
            "--data", "no-such-dataset"]  # fmt: skip
    assert staircase.main(argv) == 0
    (path,) = (tmp_path / "results" / "staircase").glob("probe-*.json")
    row = json.loads(path.read_text())
    assert row["model"] == "vgg11_cifar" and "GPU: " in row["machine"]
    # Kept per machine: another machine's probe of the same model is stored beside it.
    assert row["tag"].endswith(f"-c8-m{machine_key()}") and path.stem == row["tag"]
    assert row["first"]["settings"]["seconds_budget"] == 2.0
    assert set(row["second"]) >= {"oracle_calls", "cached_calls", "seconds"}
    table = staircase.probes_table([row])
    assert "| vgg11_cifar | onnxruntime:cpu?threads=1 |" in table and "2 s, " in table
    with pytest.raises(SystemExit) as exit_:
        staircase.main(["--input-shape", "3", "8", "8"])
    assert exit_.value.code == 2


def test_proxy_study_scores_the_search_signal_from_the_stored_floor() -> None:
    """At chance the study ranks candidates as the search does: by size, at bn's cost."""
    from benchmarks.proxy_study import SIGNAL, recommend, summarise

    def row(bn: float, params: int, acc: float) -> dict:
        proxies = {"bn": {"value": bn, "seconds": 2.0}, "kd": {"value": bn, "seconds": 1.0}}
        return {"model": "m", "width": 1.0, "latency_fraction": 0.3, "params": params,
                "accuracy": acc, "proxies": proxies, "test_images": 2000}  # fmt: skip

    # The bn noise runs against the size; the accuracy after fine-tuning follows the size.
    rows = [row(0.15, 100, 0.50), row(0.12, 200, 0.60), row(0.11, 300, 0.70), row(0.10, 400, 0.8)]
    floor = {"floor": 0.17, "dense_params": 1000}
    by = {s["proxy"]: s for s in summarise(rows, floor)}
    assert by["bn (accuracy)"]["spearman"] == pytest.approx(-1.0)
    assert by[SIGNAL]["spearman"] == pytest.approx(1.0)
    assert by[SIGNAL]["seconds"] == by["bn (accuracy)"]["seconds"]
    assert SIGNAL not in {s["proxy"] for s in summarise(rows)}  # no floor stored: not scored
    text = recommend(list(by.values()), {"m": rows})
    assert text.startswith("Default by value per cost: `bn` with its chance rule")
    assert "not an independent test" in text and "held out from its design: m (1.00)" in text


def test_quality_refuses_to_run_a_grid_version_it_cannot_reproduce() -> None:
    """Grid version 2 searched on the raw proxy score; today's code can only collect it."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality", "--grid-version", "2",
         "--models", "vgg16_cifar=0.25", "--no-write"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2
    assert "grid version 2 cannot be run by this code" in out.stderr
    assert "collect it with --stored-only" in out.stderr


def test_staircase_pools_auto_against_each_rounding_over_machines() -> None:
    """A seed run on two machines (each held to its own reference) is two pairs, never one."""
    from benchmarks.staircase import pooled_table, summary_table

    def row(seed: int, ref: float, rounding: str, acc: float) -> dict:
        return {"model": "vgg16_cifar", "data": "d", "budget": "latency<=40%", "agent": "uniform",
                "seed": seed, "reference_ms": ref, "rounding": rounding, "accuracy": acc,
                "final_over_bound": 0.9}  # fmt: skip

    one = [row(0, 2.4, "auto", 0.85), row(0, 2.4, "1", 0.84), row(1, 2.4, "auto", 0.83),
           row(1, 2.4, "1", 0.84)]  # fmt: skip
    assert pooled_table(one) is None  # one machine: the summary's pairs say it all
    two = [*one, row(0, 0.8, "auto", 0.86), row(0, 0.8, "1", 0.83)]
    text = pooled_table(two)
    assert (
        "| vgg16_cifar | d | onnxruntime:cpu?threads=1 | latency<=40% | uniform | 1 | 3 | 2 "
        "| +0.0100 ± 0.0200 | 2/3 |" in text
    )
    assert "fixed 2.4000 ms" in summary_table(two) and "fixed 0.8000 ms" in summary_table(two)


def test_staircase_rows_on_another_runtime_are_their_own_rows() -> None:
    """An OpenVINO row is never answered by the ONNX Runtime row of the same model, budget,
    agent, rounding and seed, and the tables keep the runtimes apart."""
    import argparse

    from benchmarks.staircase import ORACLE, row_tag, summary_table

    args = argparse.Namespace(model="vgg11_cifar", data="fashion-mnist?train=3000",
                              fixed_bound=True, budget="latency<=40%", oracle=ORACLE)  # fmt: skip
    onnx = row_tag(args, agent="uniform", rounding="auto", seed=0)
    # The first rows' names stay as they were stored.
    assert onnx == "vgg11_cifar-fashion-mnist_train_3000-fixed-latency<=40%-uniform-rauto-s0"
    args.oracle = "openvino:cpu?threads=1"
    ov = row_tag(args, agent="uniform", rounding="auto", seed=0)
    assert ov != onnx and "openvino" in ov

    def row(oracle: str | None, rounding: str, acc: float) -> dict:
        r = {"model": "vgg11_cifar", "data": "d", "budget": "latency<=40%", "agent": "uniform",
             "seed": 0, "reference_ms": 0.4, "rounding": rounding, "accuracy": acc,
             "final_over_bound": 0.9}  # fmt: skip
        if oracle:
            r["oracle"] = oracle
        return r

    rows = [row(None, "auto", 0.85), row(None, "1", 0.84),
            row(args.oracle, "auto", 0.80), row(args.oracle, "1", 0.83)]  # fmt: skip
    text = summary_table(rows)
    assert f"| {ORACLE} |" in text and f"| {args.oracle} |" in text
    assert "+0.0100" in text and "-0.0300" in text  # each runtime paired with itself


@pytest.mark.slow
def test_knapsack_cost_reads_the_knapsack_and_candidate_costs_from_a_real_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import _common, knapsack_cost

    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(_common, "RESULTS_MD", tmp_path / "RESULTS.md")
    monkeypatch.setattr(knapsack_cost, "RUNS_DIR", tmp_path / "runs")
    argv = ["--model", "vgg11_cifar", "--width", "0.25", "--input-size", "32", "--evaluations", "8"]
    assert knapsack_cost.main(argv) == 0
    (row,) = json.loads((tmp_path / "results" / "knapsack_cost.json").read_text())["results"]
    assert row["met"] and row["final"] <= row["bound"]
    assert row["staircase_oracle_calls"] > 0 and row["candidates"] >= 2
    assert row["staircase_cached_calls"] == 0  # a first run's probe, whatever the home cache holds
    # The search's cost adds up from its parts; a candidate's from its stages.
    parts = sum(row[f"{p}_seconds"] for p in ("staircase", "importance", "solve", "verify"))
    assert row["knapsack_search_seconds"] == pytest.approx(parts)
    c = row["candidate_seconds"]
    assert 0 < c["bn"] + c["accuracy"] + c["oracle:latency"] <= c["total"] * 1.01
    assert "latency-knapsack on a large model" in (tmp_path / "RESULTS.md").read_text()
    # A second run with the same settings reuses the stored row: nothing is pruned again.
    monkeypatch.setattr(knapsack_cost, "_run", lambda *a, **k: pytest.fail("ran again"))
    assert knapsack_cost.main(argv) == 0


@pytest.mark.slow
def test_proxy_cost_times_both_recipes_on_the_same_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import _common, proxy_cost

    monkeypatch.setattr(_common, "QUICK_DIR", tmp_path / "quick")
    assert proxy_cost.main(["--quick", "--probe", "200"]) == 0
    result = json.loads((tmp_path / "quick" / "proxy_cost.json").read_text())["results"]
    today, raced = result["today"], result["raced"]
    assert len(today["rows"]) == len(raced["rows"]) == 3
    assert result["ratio"] == pytest.approx(
        today["median_proxy_seconds"] / raced["median_proxy_seconds"]
    )
    # The same candidates: the same feasibility; an unraced score is the same image count.
    assert [r["feasible"] for r in today["rows"]] == [r["feasible"] for r in raced["rows"]]
    assert all(r["samples"] == 300 for r in today["rows"])
    assert all(r["samples"] < 300 for r in raced["rows"] if r["raced"])
    # The head is fitted on the features the evaluator's BN statistics give: the dense model
    # scores far above chance, as a trained one would (0.69 here; fitted on the features of
    # the initial statistics, 0.27).
    assert today["dense"]["score"] > max(0.5, today["dense"]["floor"])


def test_proxy_study_tables_the_settled_and_raced_variants_where_every_row_has_them() -> None:
    from benchmarks.proxy_study import RACED, RACED_SIGNAL, SETTLED, summarise

    def row(bn: float, settled: float, raced: float, acc: float) -> dict:
        proxies = {
            "bn": {"value": bn, "seconds": 4.0},
            "kd": {"value": bn, "seconds": 1.0},
            SETTLED: {"value": settled, "seconds": 2.0},
            RACED: {"value": raced, "seconds": 1.0, "samples": 128, "stopped": "worse"},
        }
        return {"model": "m", "width": 1.0, "latency_fraction": 0.3, "params": 10,
                "accuracy": acc, "proxies": proxies, "test_images": 2000}  # fmt: skip

    rows = [row(0.5, 0.52, 0.5, 0.6), row(0.6, 0.61, 0.62, 0.7), row(0.7, 0.69, 0.7, 0.8)]
    by = {s["proxy"]: s for s in summarise(rows)}
    assert by[SETTLED]["spearman"] == pytest.approx(1.0) and by[SETTLED]["seconds"] == 2.0
    assert by[RACED]["seconds"] == 1.0
    # With the chance floor, the raced score as the search ranks it: a candidate at or below
    # the floor is scored by its size (the larger model first, whatever its raced score).
    rows[2]["params"], rows[0]["params"] = 5, 20
    floor = {"floor": 0.65, "dense_params": 40}
    by = {s["proxy"]: s for s in summarise(rows, floor)}
    assert by[RACED_SIGNAL]["seconds"] == 1.0
    assert by[RACED_SIGNAL]["spearman"] < by[RACED]["spearman"] == pytest.approx(1.0)
    del rows[0]["proxies"][RACED]  # a variant missing on one row is not tabled
    assert RACED not in {s["proxy"] for s in summarise(rows)}


def test_parallel_node_model_paces_a_candidate_by_the_slower_of_preparation_and_timing() -> None:
    from benchmarks.parallel import node_model, node_slots, predicted_search_seconds

    # P = 60 s to prepare, T = 3 s to time, 0.5 s of the searcher's own per candidate.
    one = node_model(prepare=60.0, timing=3.0, slots=1, overhead=0.5)
    assert one["seconds_per_candidate"] == pytest.approx(60.5)  # max(60, 3) + 0.5
    assert one["speedup"] == pytest.approx(63.5 / 60.5)  # one process: 60 + 3 + 0.5
    assert one["saturation_slots"] == pytest.approx(20.0) and not one["timing_bound"]
    ten = node_model(prepare=60.0, timing=3.0, slots=10, overhead=0.5)
    assert ten["seconds_per_candidate"] == pytest.approx(6.5)  # 60 / 10 + 0.5
    # Past P / T = 20 slots the timing device sets the pace: 40 slots buy what 20 buy.
    forty = node_model(prepare=60.0, timing=3.0, slots=40, overhead=0.5)
    twenty = node_model(prepare=60.0, timing=3.0, slots=20, overhead=0.5)
    assert forty["seconds_per_candidate"] == twenty["seconds_per_candidate"] == pytest.approx(3.5)
    assert forty["timing_bound"] and forty["speedup"] == pytest.approx(63.5 / 3.5)
    # The timing device keeps a core on its node: 2 nodes of 16 cores prepare on 31 slots.
    assert node_slots(nodes=2, cores_per_node=16) == 31
    assert node_slots(nodes=1, cores_per_node=2) == 1 and node_slots(nodes=1, cores_per_node=1) == 1
    # 4 candidates on 2 slots: 4 x max(30, 3) and the first timing, which nothing overlaps.
    assert predicted_search_seconds(prepare=60.0, timing=3.0, slots=2, candidates=4) == 123.0
    with pytest.raises(ValueError):
        node_model(prepare=60.0, timing=3.0, slots=0)


def test_parallel_profile_tables_the_model_of_nodes_from_the_one_worker_row() -> None:
    from benchmarks.parallel import _model_table, _profile_md

    def row(way: str, workers: int, search: float) -> dict:
        med = {"apply": 1.0, "bn": 26.0, "accuracy": 32.0, "export": 1.0, "prepare": 60.0,
               "timing": 3.0, "total": 63.0}  # fmt: skip
        return {"way": way, "workers": workers, "candidates": 4, "search_s": search,
                "median_s": med, "overhead_per_candidate_s": -0.2, "keys": ["a", "b"],
                "same_candidates": True, "load_before": 1.0, "load_after": 2.0,
                "plan": ""}  # fmt: skip

    prof = {"model": "resnet50", "input_size": 224, "data": "digits", "candidates": 4,
            "searcher": "random, seed 0", "budget": "latency<=60%", "oracle": "ort",
            "cores": [0, 1], "ray_cpus": 2, "notes": [],
            "rows": [row("1 worker", 1, 252.0), row("2 local workers", 2, 243.0)]}  # fmt: skip
    model = _model_table(prof, [2, 16])
    assert model["overhead_s"] == 0.0  # a negative remainder is no overhead
    assert model["saturation_slots"] == pytest.approx(20.0)
    # W = N x c - 1 >= 20: 11 nodes of 2 cores, 2 nodes of 16.
    assert model["saturation_nodes"] == {"2": 11, "16": 2}
    assert len(model["rows"]) == 10
    by = {(r["nodes"], r["cores_per_node"]): r for r in model["rows"]}
    assert by[(1, 2)]["seconds_per_candidate"] == pytest.approx(60.0)  # one slot left
    assert by[(16, 16)]["seconds_per_candidate"] == pytest.approx(3.0)  # timing-bound
    (two,) = model["two_workers"]
    assert two["predicted_search_s"] == {"1": pytest.approx(243.0), "2": pytest.approx(123.0)}
    prof["model_of_nodes"] = model
    text = "\n".join(_profile_md(prof))
    assert "W* = P / T = 20.0 slots" in text and "| 16 | 16 | 255 | 3.00 | 21.00x | yes |" in text


@pytest.mark.slow
def test_parallel_profile_quick_times_the_same_candidates_three_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import _common, parallel

    monkeypatch.setattr(_common, "QUICK_DIR", tmp_path / "quick")
    argv = ["--part", "profile", "--quick", "--work", str(tmp_path / "work")]
    assert parallel.main(argv) == 0
    prof = json.loads((tmp_path / "quick" / "parallel.json").read_text())["results"]["profile"]
    ways = [r["way"] for r in prof["rows"]]
    assert ways[:2] == ["1 worker", "2 local workers"]
    # The Ray row, or the one line that says why it is missing.
    assert ways[2:] == ["2 Ray workers"] or prof["notes"][0].startswith("Ray row skipped")
    for r in prof["rows"]:
        assert r["candidates"] == 2 and r["same_candidates"] and r["search_s"] > 0
        m = r["median_s"]
        assert m["prepare"] == pytest.approx(sum(m[s] for s in parallel.PREPARE_STAGES))
        assert m["bn"] > 0 and m["accuracy"] > 0 and m["timing"] > 0
    assert len(prof["model_of_nodes"]["rows"]) == 10
    md = (tmp_path / "quick" / "RESULTS.md").read_text()
    assert "A large model's cost profile" in md and "Model of N nodes" in md
