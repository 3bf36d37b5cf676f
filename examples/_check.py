"""What every example proves after ``hwprune.prune``, and the one JSON line it ends with.

- the budgets, as the result re-measured them on the final (fine-tuned) model;
- ONNX parity: ONNX Runtime on the exported ``model.onnx`` against torch on the
  pruned module, on every output, for the example input and real samples;
- ``hwprune.save`` then ``hwprune.restore(fresh dense instance, path)`` gives
  outputs identical (``torch.equal``) to the pruned module's, from the saved
  file and from the run directory.

Shared by the examples so that each of them shows only the user's side.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import hwprune
from hwprune.inputs import flatten_outputs

PARITY_TOLERANCE = 1e-3


def main_or_one_line(main: Callable[[], None]) -> None:
    """Run an example's ``main``; hwprune's own errors (an unmeetable budget, bad input) end it
    with their one sentence and exit status 1, not a traceback."""
    import sys

    from hwprune.errors import HwpruneError

    try:
        main()
    except HwpruneError as exc:
        sys.exit(f"error: {exc}")


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--tiny", action="store_true", help="a few seconds: tiny data, few candidates"
    )
    parser.add_argument("--out", default=None, help="folder for the run (default: ./hwprune-NAME)")
    return parser.parse_args()


def budgets_of(result: Any) -> list[dict[str, Any]]:
    """Each budget as re-measured on the final model (the result's proof, not the search's)."""
    return [
        {
            "budget": b.budget,
            "oracle": b.oracle,
            "unit": b.unit,
            "dense": b.dense,
            "bound": b.bound,
            "final": b.final,
            "met": b.met,
        }  # fmt: skip
        for b in result.budgets
    ]


def onnx_parity(module: torch.nn.Module, onnx_path: Path, samples: Iterable[torch.Tensor]) -> dict:
    """Max |ONNX Runtime - torch| per output name, over ``samples`` (each a batch-1 input)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    worst = dict.fromkeys(names, 0.0)
    module = module.eval()
    for x in samples:
        with torch.no_grad():
            want = dict(flatten_outputs(module(x), single=names[0]))
        got = session.run(None, {input_name: x.numpy()})
        for name, value in zip(names, got, strict=True):
            diff = float(np.abs(value - want[name].numpy()).max())
            worst[name] = max(worst[name], diff)
    return worst


def restore_identical(
    result: Any, *, fresh: Callable[[], torch.nn.Module], x: torch.Tensor, path: Path
) -> bool:
    """save, then restore onto a fresh dense instance (from the file and from the run dir)."""
    saved = hwprune.save(result.model, path)
    with torch.no_grad():
        want = flatten_outputs(result.model.eval()(x))
        for source in (saved, result.run_dir):
            got = flatten_outputs(hwprune.restore(fresh(), source)(x))
            same = [n for n, _ in got] == [n for n, _ in want] and all(
                torch.equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True)
            )
            if not same:
                return False
    return True


def summarize(
    result: Any,
    *,
    name: str,
    fresh: Callable[[], torch.nn.Module],
    samples: list[torch.Tensor],
    batch: torch.Tensor,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checks above as one dict; printed by ``report`` as the example's last line."""
    parity = onnx_parity(result.model, Path(result.paths["onnx"]), samples)
    summary = {
        "example": name,
        "all_met": result.all_met,
        "budgets": budgets_of(result),
        "onnx_parity": parity,
        "parity_ok": all(v <= PARITY_TOLERANCE for v in parity.values()),
        "restore_identical": restore_identical(
            result, fresh=fresh, x=batch, path=Path(result.run_dir) / "pruned-saved.pt"
        ),
        "metrics": {k: dict(v) for k, v in result.metrics.items()},
        "score": {"dense": result.score_dense, "chosen": result.score_chosen},
        "params": {"dense": result.params_dense, "final": result.params_final},
        "evaluations": result.evaluations,
        "stage_seconds": {k: round(v, 2) for k, v in result.stage_seconds.items()},
        "run_dir": str(result.run_dir),
        **(extra or {}),
    }
    return summary


def report(summary: dict[str, Any]) -> None:
    """Human lines, then the summary as one JSON line (what tests/test_examples.py reads)."""
    for b in summary["budgets"]:
        verdict = "met" if b["met"] else "MISSED"
        print(f"budget {b['budget']} on {b['oracle']}: dense {b['dense']:.4g} {b['unit']}, "
              f"final {b['final']:.4g} {b['unit']} (bound {b['bound']:.4g}): {verdict}")  # fmt: skip
    for out, diff in summary["onnx_parity"].items():
        print(f"ONNX parity, output {out!r}: max |onnxruntime - torch| = {diff:.2e}")
    print(f"restore onto a fresh dense instance gives identical outputs: "
          f"{summary['restore_identical']}")  # fmt: skip
    print(json.dumps(summary, sort_keys=True))
