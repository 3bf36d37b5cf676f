"""``hwprune compare-oracles`` from the command line: real oracles, a report, the cache, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwprune.cli import main

ORT = "onnxruntime:cpu?threads=1&min_time=0.05&max_time=1"


def test_compare_oracles_command_reports_and_reuses_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare-oracles", "--model", "resnet20_cifar", "--oracle", "params",
            "--oracle", "flops", "--oracle", ORT, "--samples", "5", "--out", str(out),
            "--cache", str(tmp_path / "cache.sqlite"), "--json"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["reference"].startswith("onnxruntime:cpu")  # the only latency oracle
    pairs = {(p["a"], p["b"]): p for p in data["pairs"]}
    # On a residual conv net, parameters and FLOPs shrink together with pruning.
    assert pairs[("params", "flops")]["spearman"] > 0.5
    assert {p["oracle"] for p in data["predictors"]} == {"params", "flops"}
    assert 0 < data["ratio"]["flops"] < 0.5  # the sampled range reaches far below dense
    assert len(data["values"]["params"]) == 5
    assert "Spearman" in (out / "report.md").read_text()
    assert json.loads((out / "comparison.json").read_text())["values"] == data["values"]
    # The second run (replacing the first's folder) is answered from the oracle cache: every
    # sample of every oracle.
    assert main([*argv, "--overwrite"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert sorted(again["cached"].values()) == [5, 5, 5]
    assert again["values"]["flops"] == data["values"]["flops"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "resnet20_cifar", "--oracle", "flopz"], "Did you mean 'flops'"),
        (["--model", "resnet_nope"], "resnet_nope"),
        (["--model", "resnet20_cifar", "--samples", "2"], "at least 3"),
    ],
)
def test_compare_oracles_bad_input_is_one_line(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare-oracles", *args, "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err + out
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert expected in lines[0]


def test_compare_oracles_shows_each_variant_measured_as_plain_lines_in_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compare-oracles", "--model", "resnet20_cifar", "--oracle", "params", "--oracle",
            "flops", "--samples", "3", "--no-cache", "--out", str(tmp_path / "cmp")]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0] == "measure variants: started (0/3) | elapsed 0:00", err
    assert lines[-1].startswith("measure variants: done 3/3 | elapsed "), err
    assert "Spearman" in out and "measure variants" not in out
