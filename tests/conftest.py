"""Shared fixtures; skips ``gpu``/``tensorrt`` tests where the hardware or package is missing."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

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


@pytest.fixture
def cli_refusal(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """``cli_refusal(argv)`` runs the CLI in this process and checks that it refused: exit
    status 2, one line on stderr and no traceback. Returns that line, spaces collapsed."""
    from hwprune.cli import main

    def run(argv: list[str]) -> str:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        return " ".join(err.split())

    return run
