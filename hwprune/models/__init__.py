"""Models by name: torchvision classifiers, CIFAR-style VGG/ResNet, and ``package.module:callable``.

Example::

    model = get_model("vgg11_cifar", num_classes=10, width=0.5)
    model = get_model("resnet18", num_classes=100)          # torchvision, random init
    model = get_model("mypkg.nets:build", num_classes=5)     # your own builder
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from hwprune.errors import CheckpointError, ConfigError
from hwprune.models.checkpoint import (
    Checkpoint,
    check_state_dict,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from hwprune.models.cifar import VGG_CONFIGS, ResNetCifar, VGGCifar
from hwprune.registry import Registry, UserExitError, call_user, import_callable

__all__ = [
    "MODELS",
    "Checkpoint",
    "check_state_dict",
    "default_input_size",
    "get_model",
    "is_user_model",
    "list_models",
    "load_checkpoint",
    "model_from_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

# A builder takes (num_classes, width, input_size) and returns a fresh, randomly initialised module.
Builder = Callable[..., nn.Module]

MODELS: Registry[Builder] = Registry("model")
_INPUT_SIZE: dict[str, int] = {}


def _register(name: str, builder: Builder, *, input_size: int) -> None:
    MODELS.register(name, builder)
    _INPUT_SIZE[name] = input_size


def _vgg_builder(config: tuple[int | str, ...]) -> Builder:
    def build(*, num_classes: int, width: float, input_size: int | None) -> nn.Module:
        return VGGCifar(config, num_classes=num_classes, width=width)

    return build


def _resnet_builder(blocks: tuple[int, ...], channels: tuple[int, ...]) -> Builder:
    def build(*, num_classes: int, width: float, input_size: int | None) -> nn.Module:
        return ResNetCifar(blocks=blocks, channels=channels, num_classes=num_classes, width=width)

    return build


for _name, _cfg in VGG_CONFIGS.items():
    _register(f"{_name}_cifar", _vgg_builder(_cfg), input_size=32)
# He et al. 2016, section 4.2: 6n+2 layers, three stages of n blocks at 16/32/64 channels.
_register("resnet20_cifar", _resnet_builder((3, 3, 3), (16, 32, 64)), input_size=32)
_register("resnet32_cifar", _resnet_builder((5, 5, 5), (16, 32, 64)), input_size=32)
_register("resnet56_cifar", _resnet_builder((9, 9, 9), (16, 32, 64)), input_size=32)
# The 11M-parameter CIFAR ResNet-18: ImageNet widths, 3x3 stem, no max pool.
_register("resnet18_cifar", _resnet_builder((2, 2, 2, 2), (64, 128, 256, 512)), input_size=32)


def _torchvision_builder(name: str) -> Builder:
    def build(*, num_classes: int, width: float, input_size: int | None) -> nn.Module:
        import torchvision

        if width != 1.0:
            raise ConfigError(
                f"width={width} is not supported for the torchvision model {name!r}; "
                "width multipliers apply to the *_cifar models only"
            )
        kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
        if input_size is not None and name.startswith("vit_"):
            kwargs["image_size"] = input_size
        if name in ("inception_v3", "googlenet"):
            # Auxiliary heads only matter when training from scratch the original way; a
            # plain classifier keeps pruning and export simple.
            kwargs.update(aux_logits=False, init_weights=True)
        return torchvision.models.get_model(name, **kwargs)

    return build


def _register_torchvision() -> None:
    import torchvision

    for name in torchvision.models.list_models(module=torchvision.models):
        size = 299 if name == "inception_v3" else 224
        _register(name, _torchvision_builder(name), input_size=size)


# Importing torchvision takes seconds (it imports torch._dynamo): done at the first lookup, so
# a parallel worker that only unpickles a *_cifar model never imports it.
MODELS.defer(_register_torchvision)


def list_models() -> list[str]:
    """Every registered model name (``package.module:callable`` is accepted besides these)."""
    return MODELS.names()


def is_user_model(name: str) -> bool:
    """Whether ``name`` names user code (``package.module:callable``) rather than a registered model."""
    return ":" in str(name)


def default_input_size(name: str) -> int:
    """The image side a model expects by default: 32 for *_cifar, 224 for torchvision (299 inception)."""
    if is_user_model(name):
        return 224
    MODELS.get(name)  # raises UnknownNameError with a suggestion
    return _INPUT_SIZE[str(name).lower()]


def _user_model(spec: str, *, num_classes: int, width: float) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"expected a user model as 'package.module:callable', got {spec!r}")
    target = import_callable(
        spec,
        kind="model",
        not_callable=f"{spec!r} is not callable; expected a function or class returning nn.Module",
    )
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "num_classes" in params or takes_any:
        kwargs["num_classes"] = num_classes
    if width != 1.0:
        if "width" not in params and not takes_any:
            raise ConfigError(f"width={width} given, but {spec!r} takes no 'width' argument")
        kwargs["width"] = width
    try:
        model = call_user(target, spec=spec, doing="building the model", **kwargs)
    except UserExitError:
        raise
    except Exception as exc:
        raise ConfigError(f"calling {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec!r} returned a {type(model).__name__}, expected a torch.nn.Module")
    return model


def get_model(
    name: str,
    *,
    num_classes: int = 10,
    width: float = 1.0,
    weights: str | Path | None = None,
    input_size: int | None = None,
) -> nn.Module:
    """Build a model by name, randomly initialised unless ``weights`` names a checkpoint file.

    ``name`` is a registered name (see ``list_models()``) or ``package.module:callable``
    (called with ``num_classes=`` and ``width=`` when it accepts them). ``width``
    multiplies the channel counts of the *_cifar models. ``input_size`` is the image
    side for models that need it (ViT); the CIFAR models accept any size. Nothing is
    downloaded: torchvision models are built with ``weights=None``.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(width, (int, float)) or not 0.0 < float(width) <= 16.0:
        raise ConfigError(f"width must be a number in (0, 16], got {width!r}")
    if input_size is not None and (not isinstance(input_size, int) or input_size < 8):
        raise ConfigError(f"input_size must be an integer >= 8, got {input_size!r}")
    width = float(width)
    if is_user_model(name):
        model = _user_model(str(name), num_classes=num_classes, width=width)
    else:
        model = MODELS.get(name)(num_classes=num_classes, width=width, input_size=input_size)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(
                f"weights must be a checkpoint file saved by hwprune or a state dict, "
                f"got {str(weights)!r}, which is not a file (pretrained downloads are not supported)"
            )
        load_checkpoint(model, path)
    return model


def model_from_checkpoint(path: str | Path, *, allow_import: bool = False) -> nn.Module:
    """Rebuild the model a checkpoint's meta names, load its weights, and return it in eval mode.

    A checkpoint whose meta names user code (``package.module:callable``) is refused
    unless ``allow_import`` is set: loading a file must never run code it names.
    """
    ckpt = read_checkpoint(path)
    meta = ckpt.meta
    name = meta.get("model")
    if not isinstance(name, str) or not name:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no 'model' name in its meta; build the model with "
            "get_model(...) and call load_checkpoint(model, path)"
        )
    if is_user_model(name) and not allow_import:
        raise CheckpointError(
            f"checkpoint {str(path)!r} names user code {name!r}; it is not imported from a "
            "checkpoint. Build the model yourself (e.g. --model with that name) and load the weights"
        )
    size = meta.get("input_size")
    if isinstance(size, (list, tuple)):  # (C, H, W) -> H
        size = size[-2] if len(size) >= 2 else None
    model = get_model(
        name,
        num_classes=int(meta.get("num_classes", 10)),
        width=float(meta.get("width", 1.0)),
        input_size=int(size) if isinstance(size, (int, float)) else None,
    )
    check_state_dict(model, ckpt.state_dict, where=ckpt.path)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval()
