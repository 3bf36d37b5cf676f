"""Shared fixtures; skips ``gpu``/``tensorrt`` tests where the hardware or package is missing."""

from __future__ import annotations

import importlib.util

import pytest


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and _has_cuda()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = tensorrt = None
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            cuda = _has_cuda() if cuda is None else cuda
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if item.get_closest_marker("tensorrt") is not None:
            tensorrt = _has_tensorrt() if tensorrt is None else tensorrt
            if not tensorrt:
                item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA GPU"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own oracle cache, never the user's."""
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path_factory.mktemp("cache") / "oracles.sqlite"))
    monkeypatch.setenv("HWPRUNE_HOME", str(tmp_path_factory.mktemp("home")))
