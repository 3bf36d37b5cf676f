"""Stage ``load``: the dense model, its example inputs, the task and the prune space.

From a config (``--model``/``--data`` or ``--task``), or from objects the API
was handed (``Loaded.from_objects``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hwprune.config import PruneConfig
from hwprune.errors import CheckpointError, ConfigError
from hwprune.run.context import RunContext
from hwprune.tasks import BoundTask, ClassificationTask, as_task

log = logging.getLogger(__name__)

__all__ = [
    "Loaded", "load", "build_space", "check_calibration", "inputs_of", "import_factory",
    "call_factory", "check_export",
]  # fmt: skip


@dataclass
class Loaded:
    """What the later stages prune and how they judge it."""

    model: Any  # the dense nn.Module, eval mode, never modified
    example_inputs: Any
    task: BoundTask
    space: Any
    structure: dict[str, Any] = field(default_factory=dict)  # Torch-Pruning options as given
    meta: dict[str, Any] = field(default_factory=dict)  # rebuilds the base model (load_pruned)
    finetune_text: str | None = None  # the recipe in words, for the report


def inputs_of(example_inputs: Any, *, model: Any = None) -> Any:
    """``example_inputs`` (a tensor, a tuple of tensors, a list, a dict of named tensors) as
    ExampleInputs; ``model`` tells whether a list is its one argument."""
    from hwprune.inputs import ExampleInputs

    return ExampleInputs.from_user(example_inputs, model=model)


def space_options(config: PruneConfig, space: Any = None) -> dict[str, Any]:
    """The space options saved beside a pruned model (enough to rebuild its architecture).

    ``round_to`` 'auto' builds its staircase space on a round_to=1 space; the
    allowed counts it chose (``space.channel_choices``) are saved with it.
    """
    options: dict[str, Any] = {
        "granularity": config.granularity,
        "round_to": config.round_to if isinstance(config.round_to, int) else 1,
        "min_keep": config.min_keep,
        "importance": config.importance,
        "allow_output_change": config.allow_output_change,
    }
    channel_space = space is not None and space.granularity == "channel"
    choices = space.channel_choices if channel_space else None
    if choices:
        options["channel_choices"] = {k: [int(c) for c in v] for k, v in choices.items()}
    return options


def build_space(
    model: Any,
    *,
    example_inputs: Any,
    options: Mapping[str, Any],
    structure: Mapping[str, Any] | None = None,
) -> Any:
    """The prune space of ``model`` for the run's granularity (channels, or weight sparsity).

    ``structure``: Torch-Pruning's options for the user's module (ignored_layers,
    num_heads, customized_pruners, unwrapped_parameters), passed as given.
    """
    from hwprune import space as space_mod

    structure = {k: v for k, v in (structure or {}).items() if v is not None}
    granularity = options["granularity"]
    if granularity == "channel":
        return space_mod.ChannelSpace(
            model,
            example_inputs=example_inputs,
            round_to=int(options["round_to"]),
            min_keep=float(options["min_keep"]),
            importance=options["importance"],
            channel_choices=options.get("channel_choices"),
            # Absent in a model saved before outputs kept their shape: it was built without.
            allow_output_change=bool(options.get("allow_output_change", True)),
            **structure,
        )
    pattern = "2:4" if granularity == "2:4" else "unstructured"
    extra = {k: v for k, v in structure.items() if k == "ignored_layers"}
    return space_mod.WeightSpace(
        model,
        example_inputs=example_inputs,
        min_keep=float(options["min_keep"]),
        pattern=pattern,
        **extra,
    )


def import_factory(spec: str) -> Any:
    """The callable named ``package.module:attr`` (user code: imported because the user named it)."""
    from hwprune.registry import import_callable

    return import_callable(
        spec,
        kind="task",
        not_callable=f"task {spec!r} is not callable; expected a factory function",
    )


def call_factory(spec: str) -> tuple[Any, Any, Any]:
    """(model, example_inputs, task) from the user's factory ``spec``, checked."""
    from torch import nn

    from hwprune.registry import UserExitError, call_user

    factory = import_factory(spec)
    try:
        made = call_user(factory, spec=spec, doing="building the model, its inputs and the task")
    except UserExitError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"task factory {spec!r} raised {type(exc).__name__}: {first}") from None
    if isinstance(made, Mapping):
        made = (made.get("model"), made.get("example_inputs"), made.get("task"))
    if not isinstance(made, (tuple, list)) or len(made) != 3:
        raise ConfigError(
            f"task factory {spec!r} must return (model, example_inputs, task), "
            f"got {type(made).__name__}"
        )
    model, example_inputs, task = made
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"task factory {spec!r} returned a {type(model).__name__} as its model, "
            "expected a torch.nn.Module"
        )
    return model, example_inputs, task


def _dense_from_config(config: PruneConfig, *, num_classes: int, input_size: int) -> tuple:
    from hwprune.models import get_model, load_checkpoint, read_checkpoint

    width, weights = config.width, config.weights
    if weights is not None:
        ckpt_meta = dict(read_checkpoint(weights).meta)
        if ckpt_meta.get("pruned"):
            raise CheckpointError(
                f"checkpoint {str(weights)!r} holds a pruned model; prune the base model's "
                "checkpoint, or load this one with hwprune.load_pruned"
            )
        if ckpt_meta.get("width") is not None and width is None:
            width = float(ckpt_meta["width"])
        meta_classes = ckpt_meta.get("num_classes")
        if meta_classes is not None and int(meta_classes) != num_classes:
            raise CheckpointError(
                f"checkpoint {str(weights)!r} was trained for {int(meta_classes)} classes, "
                f"but dataset {config.data!r} has {num_classes}"
            )
    width = 1.0 if width is None else float(width)
    model = get_model(config.model, num_classes=num_classes, width=width, input_size=input_size)
    if weights is not None:
        load_checkpoint(model, weights)
    meta = {"model": config.model, "num_classes": num_classes, "width": width,
            "input_size": input_size}  # fmt: skip
    return model.eval(), meta


def checkpoint_input_size(weights: str | None) -> int | None:
    """The input size a checkpoint's meta says its model was trained at (None: not said)."""
    if weights is None:
        return None
    from hwprune.models import read_checkpoint

    size = read_checkpoint(weights).meta.get("input_size")
    return int(size) if isinstance(size, int) and not isinstance(size, bool) else None


def _builtin(ctx: RunContext) -> Loaded:
    from hwprune.data import get_dataset
    from hwprune.inputs import ExampleInputs

    config = ctx.config
    input_size = config.input_size or checkpoint_input_size(config.weights)
    kwargs: dict[str, Any] = {"seed": config.seed}
    if config.data_root is not None:
        kwargs["root"] = config.data_root
    if input_size is not None:
        kwargs["input_size"] = input_size
    data = get_dataset(config.data, **kwargs)
    input_shape = tuple(int(s) for s in data.input_shape)
    model, meta = _dense_from_config(
        config, num_classes=int(data.num_classes), input_size=int(input_shape[-1])
    )
    meta["input_shape"] = list(input_shape)
    inputs = ExampleInputs.from_shape((1, *input_shape), seed=config.seed)
    task = ClassificationTask(
        data,
        device=config.device,
        seed=config.seed,
        finetune_epochs=config.finetune_epochs,
        finetune_lr=config.finetune_lr,
        finetune_batch_size=config.finetune_batch_size,
        distill=config.distill,
        keep_zeros=config.granularity != "channel",
        proxy=config.proxy,
        bn_settle=config.bn_settle,
        teacher=model,
        progress=ctx.progress,
    )
    space = build_space(model, example_inputs=inputs, options=space_options(config))
    bound = as_task(task)
    return Loaded(model=model, example_inputs=inputs, task=bound, space=space, meta=meta,
                  finetune_text=bound.finetune_text())  # fmt: skip


def structure_meta(model: Any, structure: Mapping[str, Any]) -> dict[str, Any]:
    """ignored_layers and num_heads by module name, for the checkpoint (restore rebuilds them)."""
    names = {m: n for n, m in model.named_modules()}
    out: dict[str, Any] = {}
    if structure.get("ignored_layers"):
        out["ignored_layers"] = [m if isinstance(m, str) else names.get(m, "?")
                                 for m in structure["ignored_layers"]]  # fmt: skip
    if structure.get("num_heads"):
        out["num_heads"] = {k if isinstance(k, str) else names.get(k, "?"): int(v)
                            for k, v in structure["num_heads"].items()}  # fmt: skip
    return out


def from_objects(
    ctx: RunContext,
    model: Any,
    example_inputs: Any,
    task: Any,
    *,
    meta: dict,
    structure: Mapping[str, Any] | None = None,
) -> Loaded:
    """Loaded from the user's own module, example inputs and task."""
    model = model.eval()
    inputs = inputs_of(example_inputs, model=model)
    bound = as_task(task)
    structure = dict(structure or {})
    meta = {**meta, "input_shape": list(inputs.first_shape[1:]),
            "example_inputs": inputs.to_json(), **structure_meta(model, structure)}  # fmt: skip
    space = build_space(model, example_inputs=inputs, options=space_options(ctx.config),
                        structure=structure)  # fmt: skip
    return Loaded(model=model, example_inputs=inputs, task=bound, space=space, meta=meta,
                  structure=structure, finetune_text=bound.finetune_text())  # fmt: skip


def load(
    ctx: RunContext,
    *,
    objects: tuple[Any, Any, Any] | None = None,
    structure: Mapping[str, Any] | None = None,
) -> Loaded:
    """Stage ``load``: the model, example inputs, task and space the run prunes."""
    import torch

    torch.manual_seed(ctx.config.seed)
    with ctx.stage("load", 1, "loading data and model") as step:
        meta = {"task": ctx.config.task} if ctx.config.task else {"model": None}
        if objects is None and ctx.config.task is not None:
            objects = call_factory(ctx.config.task)
        if objects is not None:
            loaded = from_objects(ctx, *objects, meta=meta, structure=structure)
        else:
            loaded = _builtin(ctx)
        check_calibration(loaded)
        step(1)
    return loaded


def check_calibration(loaded: Loaded) -> None:
    """The task's calibrate once, on a copy of the dense model, before anything is measured.

    A calibration that sees no batch (an empty loader) or leaves a BatchNorm layer reset is
    refused here, in one line, rather than at the first candidate or in the shipped model.
    """
    import copy

    from torch import nn

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in loaded.model.modules()):
        return  # nothing a calibration could wipe
    probe = copy.deepcopy(loaded.model)
    loaded.task.checked_calibrate(probe, what="a copy of the dense model, before the search")


def check_export(config: Any, space: Any) -> None:
    """Export the dense model once, for nothing but its refusals (ExportError).

    The run ends with an ONNX export of the chosen model; a forward that cannot be
    exported faithfully (a branch on its input's values: hwprune.export.trace) or an
    operator ONNX lacks is refused here, before any time goes into the search. Where an
    oracle takes ONNX, the dense model's measurement exports it first anyway.
    """
    from hwprune.export.onnx import export_onnx

    export_onnx(space.model, example_inputs=space.example_inputs, opset=config.opset,
                fold_shapes=False, allow_trace_warnings=config.allow_trace_warnings)  # fmt: skip
