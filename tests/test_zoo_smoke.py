"""The real-models suite's row logic on tiny models: a pruned row, a refused row, the table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks import zoo


def _tiny() -> tuple[nn.Module, torch.Tensor, object, str]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip
    x = torch.rand(1, 3, 16, 16)
    return model, x, zoo._closeness(lambda m: [m(x)], model), "flops<=70%"


def test_a_row_prunes_keeps_its_output_shape_and_measures_before_and_after() -> None:
    row = zoo.prune_row("tiny", _tiny, evaluations=2)
    assert row["status"] == "pruned", row.get("traceback", row.get("error"))
    assert row["shapes_kept"]
    assert [v["final"] for v in row["output_shapes"].values()] == [[1, 10]]
    assert row["flops_after"] <= 0.7 * row["flops_dense"]
    assert row["latency_ms_dense"] > 0 and row["latency_ms_after"] > 0
    assert row["parity_abs"] < 1e-3
    cells = zoo.table_rows([row])[0]
    assert cells[2:5] == ["pruned", "flops<=70%", "unchanged"]


def test_an_unreachable_budget_is_a_refused_row_in_one_line() -> None:
    def build():
        model, x, score, _ = _tiny()
        return model, x, score, "flops<=0.1%"

    row = zoo.prune_row("tiny", build, evaluations=2)
    assert row["status"] == "refused" and "\n" not in row["error"] and "traceback" not in row


@pytest.mark.slow
def test_a_tiny_bert_row_prunes_heads_under_a_latency_budget() -> None:
    pytest.importorskip("transformers")
    row = zoo.prune_row("hf-bert", zoo.NAMED["hf-bert"], evaluations=3)
    assert row["status"] == "pruned", row.get("error")
    assert row["shapes_kept"]
