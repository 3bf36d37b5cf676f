"""Models by name, user builders, and safe checkpoints."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from hwprune.errors import CheckpointError, ConfigError, UnknownNameError
from hwprune.models import (
    default_input_size,
    get_model,
    list_models,
    load_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

CIFAR = ["vgg11_cifar", "vgg13_cifar", "vgg16_cifar", "vgg19_cifar", "resnet18_cifar",
         "resnet20_cifar", "resnet56_cifar"]  # fmt: skip


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_cifar_and_torchvision_models():
    names = list_models()
    for name in CIFAR + ["resnet18", "mobilenet_v2", "vgg16_bn", "vit_b_16"]:
        assert name in names
    assert default_input_size("vgg11_cifar") == 32
    assert default_input_size("resnet50") == 224


def test_torchvision_is_imported_at_the_first_lookup_not_with_a_cifar_model(tmp_path):
    """A parallel worker unpickles a *_cifar model (which imports hwprune.models): torchvision,
    which imports torch._dynamo, would cost every worker seconds and is not needed there."""
    import os
    import pickle
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(get_model("vgg11_cifar", num_classes=10, width=0.25)))
    code = textwrap.dedent(f"""
        import pickle, sys
        pickle.loads(open({str(path)!r}, "rb").read())
        before = "torchvision" in sys.modules
        from hwprune.models import MODELS
        assert "resnet18" in MODELS  # the first lookup registers torchvision's models
        print(before, "torchvision" in sys.modules)
    """)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_models_forward_32x32(name):
    model = get_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_known_parameter_counts():
    # CIFAR ResNet-18 has about 11.2M parameters; ResNet-56 (projection shortcuts) about 0.86M.
    assert 11.0e6 < n_params(get_model("resnet18_cifar")) < 11.3e6
    assert 0.85e6 < n_params(get_model("resnet56_cifar")) < 0.87e6
    assert 0.26e6 < n_params(get_model("resnet20_cifar")) < 0.28e6


def test_width_scales_channels():
    full, half = get_model("vgg11_cifar"), get_model("vgg11_cifar", width=0.5)
    convs = [m for m in half.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 256, 256, 256, 256]
    assert n_params(half) < n_params(full) / 3.5


def test_torchvision_model_without_download():
    model = get_model("resnet18", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ConfigError, match="width=0.5 is not supported"):
        get_model("resnet18", width=0.5)


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match="Did you mean 'vgg11_cifar'"):
        get_model("vgg11_cifr")
    with pytest.raises(UnknownNameError, match="unknown model 'resnet56'"):
        get_model("resnet56")


def test_bad_arguments():
    with pytest.raises(ConfigError, match="num_classes must be a positive integer, got 0"):
        get_model("vgg11_cifar", num_classes=0)
    with pytest.raises(ConfigError, match="width must be a number"):
        get_model("vgg11_cifar", width=-1)
    with pytest.raises(ConfigError, match="not a file"):
        get_model("vgg11_cifar", weights="DEFAULT")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_nets.py").write_text(
        textwrap.dedent(
            """
            import torch.nn as nn

            def build(num_classes=10, width=1.0):
                c = max(1, int(8 * width))
                return nn.Sequential(nn.Conv2d(3, c, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(c, num_classes))

            def not_a_model():
                return "hello"

            def fixed():
                return nn.Linear(4, 2)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_user_nets"


def test_user_model_callable(user_module):
    model = get_model(f"{user_module}:build", num_classes=4, width=2.0)
    assert model[0].out_channels == 16 and model[-1].out_features == 4
    assert isinstance(get_model(f"{user_module}:fixed"), nn.Linear)


def test_user_model_errors(user_module):
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg_xyz.nets'"):
        get_model("no_such_pkg_xyz.nets:build")
    with pytest.raises(ConfigError, match="returned a str, expected a torch.nn.Module"):
        get_model(f"{user_module}:not_a_model")
    with pytest.raises(ConfigError, match="has no attribute 'missing'"):
        get_model(f"{user_module}:missing")
    with pytest.raises(ConfigError, match="takes no 'width' argument"):
        get_model(f"{user_module}:fixed", width=0.5)


def test_checkpoint_round_trip(tmp_path):
    model = get_model("resnet20_cifar", num_classes=3, width=0.5)
    # Make the running stats non-default so the round trip is not trivially equal.
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    meta = {"model": "resnet20_cifar", "num_classes": 3, "width": 0.5, "input_size": 32,
            "accuracy": 0.5}  # fmt: skip
    path = save_checkpoint(model, tmp_path / "sub" / "ck.pt", meta=meta)
    assert read_checkpoint(path).meta == meta

    rebuilt = model_from_checkpoint(path)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))

    fresh = get_model("resnet20_cifar", num_classes=3, width=0.5)
    assert load_checkpoint(fresh, path)["accuracy"] == 0.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])
    loaded = get_model("resnet20_cifar", num_classes=3, width=0.5, weights=path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_bare_and_dataparallel_state_dicts_load(tmp_path):
    model = get_model("vgg11_cifar", width=0.25)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "dp.pt")
    for name in ("bare.pt", "dp.pt"):
        other = get_model("vgg11_cifar", width=0.25)
        assert load_checkpoint(other, tmp_path / name) == {}
        assert torch.equal(other.classifier.weight, model.classifier.weight)


class _Payload:
    def __init__(self):
        self.x = 1


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "meta": {"obj": _Payload()}}, path)
    with pytest.raises(CheckpointError, match="can only be loaded with weights_only=True"):
        load_checkpoint(get_model("vgg11_cifar", width=0.25), path)
    whole = tmp_path / "whole_model.pt"
    torch.save(get_model("resnet20_cifar", width=0.25), whole)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        model_from_checkpoint(whole)


def test_key_and_shape_mismatch(tmp_path):
    path = save_checkpoint(get_model("vgg11_cifar", width=0.5), tmp_path / "a.pt", meta={})
    with pytest.raises(CheckpointError, match=r"shape mismatches \('features.0.weight"):
        load_checkpoint(get_model("vgg11_cifar", width=0.25), path)
    with pytest.raises(CheckpointError, match="missing keys .*unexpected keys"):
        load_checkpoint(get_model("resnet20_cifar"), path)
    with pytest.raises(CheckpointError, match="has no 'model' name"):
        model_from_checkpoint(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="meta accepts only"):
        save_checkpoint(get_model("resnet20_cifar"), tmp_path / "x.pt", meta={"o": object()})


def test_user_code_named_in_checkpoint_is_not_imported(tmp_path, user_module):
    model = get_model(f"{user_module}:build")
    path = save_checkpoint(model, tmp_path / "u.pt", meta={"model": f"{user_module}:build"})
    with pytest.raises(CheckpointError, match="is not imported from a checkpoint"):
        model_from_checkpoint(path)
    assert isinstance(model_from_checkpoint(path, allow_import=True), nn.Sequential)
