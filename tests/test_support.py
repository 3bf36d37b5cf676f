"""benchmarks/support.py on one model per torchvision family at a tiny input (heavy ones slow)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _support():
    if "hwprune_support" in sys.modules:
        return sys.modules["hwprune_support"]
    spec = importlib.util.spec_from_file_location(
        "hwprune_support", ROOT / "benchmarks" / "support.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["hwprune_support"] = module
    spec.loader.exec_module(module)
    return module


TINY = (32, 48, 64, 70, 75, 96, 112, 128, 160, 192, 224, 299)
FAST = ["mobilenet_v3_small", "regnet_x_400mf"]  # depthwise + squeeze-excitation; grouped
SLOW = [
    "squeezenet1_1", "mnasnet0_5", "resnet18", "efficientnet_b0", "googlenet", "shufflenet_v2_x0_5", "densenet121",
    "convnext_tiny", "resnext50_32x4d", "wide_resnet50_2", "inception_v3", "efficientnet_v2_s",
    "regnet_y_400mf", "mobilenet_v2", "swin_t", "swin_v2_t", "maxvit_t", "vit_b_32", "alexnet",
    "vgg11",
]  # fmt: skip


def _check(name: str) -> None:
    row = _support().sweep_one(name, latency=False, steps=3, sizes=TINY)
    assert row["status"] == "pruned", row.get("error") or row.get("traceback")
    assert row["parity"] and row["parity_rel"] <= 1e-3
    assert row["flops_ratio"] <= 0.6 and row["params_after"] < row["params_dense"]
    assert row["output_max"] > 1e-3  # outputs with a scale: parity on them means something


@pytest.mark.parametrize("name", FAST)
def test_family_prunes_exports_and_matches(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_family_prunes_exports_and_matches_slow(name):
    _check(name)


def test_every_classifier_has_a_family_and_the_families_are_covered():
    support = _support()
    names = support.classifiers()
    assert len(names) == len(set(names)) >= 80
    families = {support.family(n) for n in names}
    assert families <= set(support.FAMILIES)
    covered = {support.family(n) for n in FAST + SLOW}
    assert covered == families


def test_table_and_counts_come_from_stored_rows(tmp_path, monkeypatch):
    support = _support()
    monkeypatch.setattr(support, "ROWS_DIR", tmp_path)
    support.store({"model": "resnet18", "family": "resnet", "status": "pruned", "parity": True,
                   "parity_rel": 1e-7, "flops_ratio": 0.55, "input": 64, "seconds": 3.0})  # fmt: skip
    support.store({"model": "swin_t", "family": "swin", "status": "refused", "input": 64,
                   "error": "nothing can be pruned", "seconds": 1.0})  # fmt: skip
    counts = support.counts(["resnet18", "swin_t", "vgg11"])
    assert counts == {"tried": 2, "pruned and matched": 1, "refused": 1, "too big": 0,
                      "failed": 0, "not run": 1}  # fmt: skip
    table = support.table(["resnet18", "swin_t", "vgg11"])
    assert "| resnet18 | 64 | pruned | 55% |" in table
    assert "nothing can be pruned" in table and "| vgg11 | - | not run |" in table
