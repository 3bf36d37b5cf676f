"""The library's front door: prune, resume, save, restore, load_pruned.

Prune your own module with your own task::

    result = hwprune.prune(model, example_inputs=torch.randn(1, 3, 64, 64),
                           budgets=["latency<=50%"], task=my_task, out="runs/mine")
    hwprune.save(result.model, "pruned.pt")
    again = hwprune.restore(MyNet(), "pruned.pt")   # fresh dense instance + saved policy

or name everything: ``hwprune.prune(model="vgg11_cifar", weights="vgg.pt", data="digits",
budgets=[...], out="runs/vgg")``, or start from a ``PruneConfig`` as the CLI does
(``start(config, out=...)``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hwprune.budgets import Constraint
from hwprune.config import AUTO, PruneConfig, read_run_config, resolve_round_to
from hwprune.errors import CheckpointError, ConfigError
from hwprune.outputs import check_home
from hwprune.progress import ProgressFn
from hwprune.run.context import RunContext, check_run_dir, prepare_run_dir
from hwprune.run.result import PruneResult
from hwprune.tasks import TaskError

log = logging.getLogger(__name__)

__all__ = ["prune", "start", "resume", "save", "restore", "load_pruned", "model_input_shape"]


def _effective_oracles(config: PruneConfig) -> dict[str, str]:
    """The oracle overrides; sparse granularities count non-zero parameters."""
    oracles = dict(config.oracles)
    if (
        config.granularity != "channel"
        and "params" not in oracles
        and any(b.quantity == "params" for b in config.budgets)
    ):
        oracles["params"] = "params?nonzero=1"
    return oracles


def _check_runtime(config: PruneConfig) -> None:
    """The searcher, device and Ray address the config names exist here."""
    from hwprune.agents import SEARCHERS, list_searchers
    from hwprune.train import resolve_device

    if config.agent.lower() not in list_searchers():
        SEARCHERS.get(config.agent)  # raises UnknownNameError with a suggestion
    resolve_device(config.device)
    if config.ray is not None:
        from hwprune.evaluate.parallel import check_ray

        check_ray(config.ray)  # refused before any run folder exists


def _checked_inputs(config: PruneConfig) -> PruneConfig:
    """The model, weights and dataset the config names checked; the config with the weights and
    an image folder as absolute paths. Missing, a folder, a device, unreadable or pickled
    weights are refused before any folder exists."""
    if config.model is not None:
        from hwprune.models import MODELS, is_user_model

        if not is_user_model(config.model):
            MODELS.get(config.model)
    if config.weights is not None:
        from hwprune.models import read_checkpoint

        weights = Path(config.weights)
        read_checkpoint(weights)
        config = config.replace(weights=str(weights.resolve()))
    if config.model is not None:
        from hwprune.data import DATASETS, parse_dataset_name

        DATASETS.get(parse_dataset_name(config.data)[0])  # unknown name: refused now
    if config.data.startswith("imagefolder:"):
        path = Path(config.data.split(":", 1)[1]).expanduser()
        config = config.replace(data=f"imagefolder:{path.resolve()}")
    return config


def _checked(config: PruneConfig, *, objects: bool) -> tuple[PruneConfig, list[Constraint]]:
    """Every check that needs no run directory and that ``PruneConfig`` cannot make alone (names
    registered here, files, oracles); the config with resolved defaults and its constraints."""
    from hwprune.budgets import bind_constraints

    config.require_runnable(module_given=objects)
    config = config.replace(oracles=_effective_oracles(config))
    constraints = bind_constraints(config.budgets, oracles=config.oracles)
    _check_ray_client(config, constraints)  # before a cluster is tried
    _check_runtime(config)
    latency = [c.judge for c in constraints if c.name == "latency"]
    round_to = resolve_round_to(
        config.round_to, granularity=config.granularity, latency_oracles=latency,
        oracle_specs=[c.judge for c in constraints],
    )  # fmt: skip
    if config.round_to == AUTO and round_to != AUTO:
        log.info(
            "round_to 'auto' needs a latency budget on a channel granularity; "
            "channel counts use multiples of %d instead", round_to,
        )  # fmt: skip
    config = config.replace(round_to=round_to)
    return _checked_inputs(config), constraints


def _check_ray_client(config: PruneConfig, constraints: Sequence[Constraint]) -> None:
    """``ray://`` runs the search's driver on the cluster's head node, where a local timing
    oracle would time: refused, since the budget is the user's machine's."""
    if not (config.ray or "").startswith("ray://"):
        return
    local = [c.oracle for c in constraints if c.judge.timed and not c.judge.remote]
    if local:
        raise ConfigError(
            f"--ray {config.ray} runs the search on the cluster's head node, so the timing "
            f"oracle {local[0]!r} would time there, not on this machine; join the cluster "
            "with --ray HOST:PORT from this machine, or time on a served oracle "
            "(hwprune serve, then SPEC@http://HOST:PORT)"
        )


def start(
    config: PruneConfig,
    *,
    out: str | Path,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> PruneResult:
    """Run a new prune from a ``PruneConfig`` (the ``hwprune prune`` command's way in).

    ``config`` names the model (or a ``task`` factory), the budgets and every
    option, as ``PruneConfig.from_mapping`` or ``read_config_file`` read them;
    ``out`` is the run directory to create (an existing run in it is replaced
    only with ``overwrite``); ``progress`` receives the stages' progress events.
    Everything that needs no run directory is checked before ``out`` is
    created. Continue a stopped run with ``resume``.

    Example::

        config = PruneConfig(model="vgg11_cifar", budgets=("latency<=50%",), evaluations=20)
        result = hwprune.api.start(config, out="runs/vgg")
    """
    return _start(config, out=Path(out), resume=False, overwrite=overwrite, progress=progress,
                  objects=None)  # fmt: skip


def _start(
    config: PruneConfig,
    *,
    out: Path,
    resume: bool,
    overwrite: bool,
    progress: ProgressFn | None,
    objects: tuple[Any, Any, Any] | None,
    structure: Mapping[str, Any] | None = None,
) -> PruneResult:
    from hwprune.run import run

    # Where the run writes, checked before anything is imported, loaded or measured.
    check_run_dir(out, resume=resume, overwrite=overwrite)
    check_home()
    config, constraints = _checked(config, objects=objects is not None)
    if objects is None and config.task is not None:
        from hwprune.run.load import call_factory

        objects = call_factory(config.task)  # a failing factory leaves no run folder
    existed = out.exists()
    lock = prepare_run_dir(out, config, resume=resume, overwrite=overwrite)
    ctx = RunContext(config=config, run_dir=out, progress=progress, resumed=resume)
    try:
        return run(ctx, constraints=constraints, objects=objects, structure=structure)
    except TaskError as exc:
        if not resume and not _measured(out):
            _unclaim(out, created=not existed)  # refused before anything was measured
            raise
        raise TaskError(
            f"{exc}; everything measured is kept in {str(out)!r}: fix the task and resume "
            f"(hwprune prune --resume {out})"
        ) from exc
    except BaseException:
        if not resume:
            _unclaim(out, created=not existed)
        raise
    finally:
        lock.release()


def _measured(out: Path) -> bool:
    """Whether the run in ``out`` has measured anything (its episodes log is not empty)."""
    log_path = out / "episodes.jsonl"
    return log_path.is_file() and log_path.stat().st_size > 0


def _unclaim(out: Path, *, created: bool) -> None:
    """A new run that failed before measuring any candidate leaves no folder claiming it
    (so the retry is not refused as 'already holds a hwprune run')."""
    if _measured(out):
        return  # something was measured: keep it, resumable
    import shutil

    for name in ("config.json", "episodes.jsonl", "oracle-cache.sqlite", "oracle-cache.sqlite-wal",
                 "oracle-cache.sqlite-shm", "machine.json", "agent", ".hwprune.lock"):  # fmt: skip
        p = out / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()


def _not_in_a_spawned_import() -> None:
    """Stop a worker process that is importing the user's script and reached a prune call.

    Workers are spawned (``workers > 1``): each imports the main script again, and a script
    without an ``if __name__ == "__main__":`` guard would start a second run inside it. The
    worker exits at once with one line (``SystemExit``, no traceback); the parent process
    then says what to do (``hwprune.evaluate.parallel.WORKERS_DIED``).
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(
            "hwprune: this worker process is importing the script that started the run, and the "
            "script calls hwprune.prune at its top level; put that call under "
            '`if __name__ == "__main__":`'
        )


def prune(
    model: Any = None,
    *,
    budgets: Sequence[str] | str,
    out: str | Path,
    example_inputs: Any = None,
    task: Any = None,
    score: Any = None,
    calibrate: Any = None,
    finetune: Any = None,
    evaluate: Any = None,
    ignored_layers: Sequence[Any] | None = None,
    num_heads: Mapping[Any, int] | None = None,
    customized_pruners: Mapping[Any, Any] | None = None,
    unwrapped_parameters: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    **options: Any,
) -> PruneResult:
    """Prune ``model`` until every budget holds on its oracle, prove it on the final model, export.

    ``model``: an ``nn.Module`` (then ``example_inputs`` and a ``task``, or
    ``score=``/``calibrate=``/``finetune=``/``evaluate=`` callables, are
    needed), a registered model name or ``package.module:callable`` (scored
    by the built-in classification task on ``data``). ``task`` may also be a
    ``package.module:factory`` string returning (model, example_inputs, task).
    ``options`` are :class:`~hwprune.config.PruneConfig` fields (agent,
    evaluations, data, weights, finetune_epochs, seed, granularity, ...).
    ``ignored_layers`` (never pruned: a detection head), ``num_heads`` (prune
    whole attention heads), ``customized_pruners``/``unwrapped_parameters``
    go to Torch-Pruning for a module it cannot trace; ``restore`` needs the
    last two again.

    Raises InfeasibleBudgetError (the run directory is kept) when no allowed
    policy meets a budget, naming the smallest value measured.
    """
    _not_in_a_spawned_import()
    from torch import nn

    objects = None
    if isinstance(model, nn.Module):
        from hwprune.tasks import as_task

        if example_inputs is None:
            raise ConfigError(
                "example_inputs is required with an nn.Module, e.g. torch.randn(1, 3, 32, 32)"
            )
        bound = as_task(task, score=score, calibrate=calibrate, finetune=finetune,
                        evaluate=evaluate)  # fmt: skip
        objects = (model, example_inputs, bound)
        model = None
    elif task is not None and not isinstance(task, str):
        raise ConfigError("a task object goes with an nn.Module model; with a model name use data=")
    elif isinstance(task, str):
        options["task"] = task
    if model is not None:
        if not isinstance(model, str):
            raise ConfigError(
                f"model must be an nn.Module, a registered name or package.module:callable, "
                f"got {type(model).__name__}"
            )
        options["model"] = model
    config = PruneConfig.from_mapping({**options, "budgets": budgets})
    structure = {"ignored_layers": ignored_layers, "num_heads": num_heads,
                 "customized_pruners": customized_pruners,
                 "unwrapped_parameters": unwrapped_parameters}  # fmt: skip
    return _start(config, out=Path(out), resume=resume, overwrite=overwrite, progress=progress,
                  objects=objects, structure=structure)  # fmt: skip


def resume(
    run_dir: str | Path,
    *,
    progress: ProgressFn | None = None,
    evaluations: int | None = None,
    workers: int | None = None,
    ray: str | None = None,
    model: Any = None,
    example_inputs: Any = None,
    task: Any = None,
    **structure: Any,
) -> PruneResult:
    """Continue a stopped run with the options in its config.json (``evaluations`` may raise it;
    ``workers`` and ``ray`` may change how it is evaluated, not what it finds).

    A run of a module handed to ``prune`` needs ``model``, ``example_inputs``
    and ``task`` again (the same ones); a ``--task`` run imports its factory again.
    """
    config = read_run_config(run_dir, require_model=False)
    if evaluations is not None:
        config = config.replace(evaluations=evaluations)
    if workers is not None:
        config = config.replace(workers=workers)
    if ray is not None:
        config = config.replace(ray=ray)
    objects = None
    if model is not None:
        from hwprune.tasks import as_task

        objects = (model, example_inputs, as_task(task))
    elif config.model is None and config.task is None:
        raise ConfigError(
            f"{str(run_dir)!r} pruned a module handed to hwprune.prune; pass model=, "
            "example_inputs= and task= again to resume it"
        )
    return _start(config, out=Path(run_dir), resume=True, overwrite=False, progress=progress,
                  objects=objects, structure=structure)  # fmt: skip


# --------------------------------------------------------------------------- save / restore


def save(pruned: Any, path: str | Path) -> Path:
    """Save a pruned module returned by ``prune`` (``result.model``, or the PruneResult itself).

    The file holds the weights and the plain meta that rebuilds the pruned
    architecture from a fresh dense instance (``restore``): the policy and the
    space options. Nothing in it needs unpickling.
    """
    from torch import nn

    from hwprune.models import save_checkpoint
    from hwprune.run.output import PRUNED_ATTR

    module = pruned.model if isinstance(pruned, PruneResult) else pruned
    meta = vars(module).get(PRUNED_ATTR) if isinstance(module, nn.Module) else None
    if not isinstance(meta, Mapping):
        raise ConfigError(
            "save takes the pruned module returned by hwprune.prune (result.model) or by "
            f"hwprune.restore; got a {type(module).__name__} without its pruning record"
        )
    return save_checkpoint(module, path, meta=dict(meta))


def _pruned_checkpoint(path: str | Path) -> Any:
    from hwprune.models import read_checkpoint

    p = Path(path)
    if p.is_dir():
        p = p / "model.pt"
    ckpt = read_checkpoint(p)
    if not ckpt.meta.get("pruned") or "policy" not in ckpt.meta or "space" not in ckpt.meta:
        raise CheckpointError(
            f"{str(p)!r} is not a pruned model saved by hwprune (its meta has no policy); "
            "load a plain checkpoint with hwprune.models.model_from_checkpoint"
        )
    return ckpt


def _first_differing_unit(space: Any, saved: Mapping[str, Any]) -> str | None:
    mine = {u.id: int(u.channels) for u in space.units}
    for uid, channels in saved.items():
        if uid not in mine:
            return f"unit {uid!r} of the saved model is not a prunable unit of the base model"
        if int(channels) != mine[uid]:
            return (
                f"unit {uid!r} has {mine[uid]} channels in the base model, "
                f"{int(channels)} in the model that was pruned"
            )
    extra = [u for u in mine if u not in saved]
    if extra:
        return f"unit {extra[0]!r} of the base model was not in the model that was pruned"
    return None


def restore(
    base_model: Any,
    path: str | Path,
    *,
    customized_pruners: Mapping[Any, Any] | None = None,
    unwrapped_parameters: Any = None,
) -> Any:
    """The saved pruned model, rebuilt on ``base_model`` (a fresh dense instance), in eval mode.

    ``path``: a file written by ``save`` or a run directory (its model.pt).
    The saved policy and space options rebuild the pruned architecture; the
    weights load with ``torch.load(weights_only=True)``. A base model that
    does not match raises CheckpointError naming the first unit that differs.
    """
    from hwprune.models import check_state_dict
    from hwprune.run.load import build_space
    from hwprune.run.output import PRUNED_ATTR
    from hwprune.space import Policy

    ckpt = _pruned_checkpoint(path)
    meta = dict(ckpt.meta)
    from hwprune.inputs import ExampleInputs

    if isinstance(meta.get("example_inputs"), Mapping):
        inputs = ExampleInputs.from_json(meta["example_inputs"])
    else:
        inputs = ExampleInputs.from_shape(
            (1, *(int(s) for s in meta.get("input_shape") or (3, 32, 32)))
        )
    structure = {"ignored_layers": meta.get("ignored_layers"), "num_heads": meta.get("num_heads"),
                 "customized_pruners": customized_pruners,
                 "unwrapped_parameters": unwrapped_parameters}  # fmt: skip
    space = build_space(base_model.eval(), example_inputs=inputs, options=meta["space"],
                        structure=structure)  # fmt: skip
    if isinstance(meta.get("units"), Mapping):
        problem = _first_differing_unit(space, meta["units"])
        if problem is not None:
            raise CheckpointError(f"the base model does not match {str(ckpt.path)!r}: {problem}")
    try:
        policy = Policy.from_dict(meta["policy"], space=space)
    except ConfigError as exc:
        raise CheckpointError(f"the base model does not match {str(ckpt.path)!r}: {exc}") from None
    module = space.apply(policy)
    check_state_dict(module, ckpt.state_dict, where=str(ckpt.path))
    module.load_state_dict(ckpt.state_dict, strict=True)
    setattr(module, PRUNED_ATTR, meta)
    return module.eval()


def load_pruned(path: str | Path, *, allow_import: bool = False) -> Any:
    """The pruned nn.Module saved by ``prune`` (a model.pt or its run directory), in eval mode.

    Rebuilds the base model from the checkpoint's meta (a registered name, or
    user code: ``package.module:callable`` / a ``--task`` factory, imported
    only with ``allow_import=True``), then ``restore``s onto it. Nothing is
    unpickled. A module handed to ``prune`` directly: use ``restore``.
    """
    from hwprune.models import get_model, is_user_model

    ckpt = _pruned_checkpoint(path)
    meta = dict(ckpt.meta)
    name, task = meta.get("model"), meta.get("task")
    if name is None and task is None:
        raise CheckpointError(
            f"{str(ckpt.path)!r} was pruned from a module handed to hwprune.prune; rebuild it "
            "with hwprune.restore(MyModel(), path)"
        )
    if (task is not None or is_user_model(name)) and not allow_import:
        raise CheckpointError(
            f"{str(ckpt.path)!r} names user code {task or name!r}, which is not imported from a "
            "checkpoint; pass allow_import=True if you trust it"
        )
    if task is not None:
        from hwprune.run.load import call_factory

        base = call_factory(task)[0]
    else:
        shape = tuple(int(s) for s in meta.get("input_shape") or (3, 32, 32))
        base = get_model(
            name,
            num_classes=int(meta.get("num_classes", 10)),
            width=float(meta.get("width", 1.0)),
            input_size=int(meta.get("input_size") or shape[-1]),
        )
    return restore(base, ckpt.path)


def model_input_shape(path: str | Path) -> tuple[int, ...]:
    """The (C, H, W) input shape a pruned model.pt was built for."""
    from hwprune.models import read_checkpoint

    p = Path(path)
    if p.is_dir():
        p = p / "model.pt"
    meta = read_checkpoint(p).meta
    shape = meta.get("input_shape")
    if shape is None:
        size = int(meta.get("input_size") or 32)
        return (3, size, size)
    return tuple(int(s) for s in shape)
