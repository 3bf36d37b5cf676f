"""The product's main job: prune a model until it meets measured budgets, prove them, export, report.

``prune(...)`` runs the stages in order, each leaving its files in the run
directory so a stopped run resumes (``resume=True``) without measuring a
candidate twice::

    RUN/config.json          every option needed to rerun
    RUN/episodes.jsonl       every evaluated candidate, appended as it completes
    RUN/oracle-cache.sqlite  the oracles' measurements, keyed by graph and machine
    RUN/agent/               the searcher's checkpoint
    RUN/policy.json          the chosen keep ratios
    RUN/model.pt             pruned weights + policy + base model meta (see load_pruned)
    RUN/model.onnx           the verified export (model.engine where TensorRT is installed)
    RUN/report.md, RUN/report.json, RUN/plots/*.png

Library code never prints: progress is reported through ``progress(event)``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hwprune.errors import (
    CheckpointError,
    ConfigError,
    HwpruneError,
    InfeasibleBudgetError,
    RunDirError,
)

log = logging.getLogger(__name__)

__all__ = [
    "PruneResult",
    "ProgressEvent",
    "prune",
    "resume",
    "load_pruned",
    "load_config",
    "read_config_file",
    "OPTION_NAMES",
    "GPU_ORACLE_PREFIXES",
]

CONFIG_VERSION = 1
GRANULARITIES = ("channel", "weight", "2:4")
# Oracle specs that time a GPU: channel counts in multiples of 8 suit their tensor cores.
GPU_ORACLE_PREFIXES = ("torch:cuda", "onnxruntime:cuda", "onnxruntime:tensorrt", "tensorrt")
# How many more candidates verification may try before giving up on a missed budget.
MAX_REPAIRS = 4

# Options saved in config.json; a config file may hold any of them.
OPTION_NAMES = (
    "model", "weights", "width", "data", "data_root", "budgets", "oracles", "agent",
    "evaluations", "finetune_epochs", "finetune_lr", "finetune_batch_size", "distill", "seed",
    "round_to", "min_keep", "granularity", "importance", "device", "opset", "tensorrt",
)  # fmt: skip
# Fine-tuning recipe defaults; a run directory written before these options existed used them.
FINETUNE_LR = 0.01
FINETUNE_BATCH_SIZE = 128


@dataclass(frozen=True)
class ProgressEvent:
    """One step of one stage, for a progress bar: ``stage`` is dense/search/finetune/verify/export."""

    stage: str
    done: int
    total: int | None
    message: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetCheck:
    """One budget on the final model: dense value, absolute bound, re-measured value, margin."""

    budget: str
    quantity: str
    oracle: str
    unit: str
    dense: float
    bound: float
    final: float
    met: bool
    margin: float  # 1 - final / bound: the fraction of the bound left unused


@dataclass(frozen=True)
class PruneResult:
    """What a prune run produced: the chosen policy, the proven budgets, accuracies, timings, files."""

    run_dir: Path
    policy: Any
    budgets: tuple[BudgetCheck, ...]
    dense: Mapping[str, float]
    final: Mapping[str, float]
    met: Mapping[str, bool]
    accuracy_dense: float
    accuracy_pruned: float
    accuracy_finetuned: float
    params_dense: int
    params_final: int
    stage_seconds: Mapping[str, float]
    paths: Mapping[str, Path]
    searcher: str
    evaluations: int
    first_feasible_evaluation: int | None
    repairs: int
    export_max_abs_diff: float | None
    tensorrt: str

    @property
    def all_met(self) -> bool:
        return all(self.met.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "policy": self.policy.to_dict() if hasattr(self.policy, "to_dict") else self.policy,
            "budgets": [asdict(b) for b in self.budgets],
            "dense": dict(self.dense),
            "final": dict(self.final),
            "met": dict(self.met),
            "all_met": self.all_met,
            "accuracy": {
                "dense": self.accuracy_dense,
                "pruned": self.accuracy_pruned,
                "finetuned": self.accuracy_finetuned,
            },
            "params": {"dense": self.params_dense, "final": self.params_final},
            "stage_seconds": dict(self.stage_seconds),
            "paths": {k: str(v) for k, v in self.paths.items()},
            "search": {
                "searcher": self.searcher,
                "evaluations": self.evaluations,
                "first_feasible_evaluation": self.first_feasible_evaluation,
                "repairs": self.repairs,
            },
            "export": {"max_abs_diff": self.export_max_abs_diff, "tensorrt": self.tensorrt},
        }


# --------------------------------------------------------------------------- config


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a TOML file (or YAML when pyyaml is installed), checked against OPTION_NAMES."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {str(p)!r}")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(
                f"config file {str(p)!r} is YAML, which needs pyyaml (pip install pyyaml); "
                "or write it as TOML"
            ) from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a table of options")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    if "budget" in data and "budgets" not in data:
        data["budgets"] = data.pop("budget")
    if isinstance(data.get("budgets"), str):
        data["budgets"] = [data["budgets"]]
    allowed = set(OPTION_NAMES) | {"out", "overwrite"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"config file {str(p)!r} has unknown option {unknown[0]!r}; "
            f"accepted: {', '.join(sorted(allowed))}"
        )
    return data


def load_config(run_dir: str | Path) -> dict[str, Any]:
    """The options a run directory was started with (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunDirError(
            f"cannot resume {str(run_dir)!r}: it has no config.json (not a hwprune run directory)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(
            f"cannot resume {str(run_dir)!r}: config.json is unreadable ({exc})"
        ) from exc
    return dict(data.get("options", data))


def _default_round_to(oracle_specs: Sequence[str]) -> int:
    return 8 if any(s.lower().startswith(GPU_ORACLE_PREFIXES) for s in oracle_specs) else 1


def _prepare_run_dir(out: Path, options: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("give either resume or overwrite, not both")
    config_path = out / "config.json"
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output {str(out)!r} is a file, expected a folder for the run")
    occupied = out.is_dir() and any(out.iterdir())
    if resume:
        if not config_path.is_file():
            raise RunDirError(
                f"cannot resume {str(out)!r}: it has no config.json (not a hwprune run directory)"
            )
        return
    if occupied:
        if not overwrite:
            what = "a hwprune run" if config_path.is_file() else "other files"
            raise RunDirError(
                f"output folder {str(out)!r} already holds {what}; pass --resume to continue "
                "it, --overwrite to replace it, or choose another --out"
            )
        if not config_path.is_file():
            raise RunDirError(
                f"refusing to overwrite {str(out)!r}: it is not a hwprune run directory "
                "(no config.json); choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"version": CONFIG_VERSION, "created": time.time(), "options": options}
    tmp = config_path.with_name("config.json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(config_path)


# --------------------------------------------------------------------------- building blocks


def _load_model(options: dict[str, Any], *, num_classes: int, input_size: int) -> tuple[Any, dict]:
    """The dense model and the meta that rebuilds it (name, classes, width, input size)."""
    from hwprune.models import get_model, load_checkpoint, read_checkpoint

    name, width, weights = (
        options["model"],
        float(options.get("width") or 1.0),
        options.get("weights"),
    )
    ckpt_meta: dict[str, Any] = {}
    if weights is not None:
        ckpt_meta = dict(read_checkpoint(weights).meta)
        if ckpt_meta.get("pruned"):
            raise CheckpointError(
                f"checkpoint {str(weights)!r} holds a pruned model; prune the base model's "
                "checkpoint, or load this one with hwprune.load_pruned"
            )
        if ckpt_meta.get("width") is not None and options.get("width") is None:
            width = float(ckpt_meta["width"])
        meta_classes = ckpt_meta.get("num_classes")
        if meta_classes is not None and int(meta_classes) != num_classes:
            raise CheckpointError(
                f"checkpoint {str(weights)!r} was trained for {int(meta_classes)} classes, "
                f"but dataset {options['data']!r} has {num_classes}"
            )
    model = get_model(name, num_classes=num_classes, width=width, input_size=input_size)
    if weights is not None:
        load_checkpoint(model, weights)
    meta = {"model": name, "num_classes": num_classes, "width": width, "input_size": input_size}
    return model.eval(), meta


def _build_space(model: Any, *, input_shape: tuple[int, ...], options: Mapping[str, Any]) -> Any:
    """The prune space of ``model`` for the run's granularity (channels, or weight sparsity)."""
    from hwprune import space as space_mod

    example = (1, *tuple(input_shape))
    granularity = options["granularity"]
    if granularity == "channel":
        return space_mod.ChannelSpace(
            model,
            example_input_shape=example,
            round_to=int(options["round_to"]),
            min_keep=float(options["min_keep"]),
            importance=options["importance"],
        )
    pattern = "2:4" if granularity == "2:4" else "unstructured"
    return space_mod.WeightSpace(
        model, example_input_shape=example, min_keep=float(options["min_keep"]), pattern=pattern
    )


def _oracle_overrides(options: Mapping[str, Any]) -> dict[str, str]:
    from hwprune.constraints import parse_oracle_overrides

    oracles = dict(parse_oracle_overrides(options.get("oracles")))
    budgets = options.get("budgets") or []
    # Zeros do not shrink a dense tensor's count: sparse granularities count non-zeros.
    if (
        options["granularity"] != "channel"
        and "params" not in oracles
        and any(str(b).strip().lower().startswith(("params", "parameters")) for b in budgets)
    ):
        oracles["params"] = "params?nonzero=1"
    return oracles


def _searcher(options: Mapping[str, Any], run_dir: Path) -> Any:
    import importlib.util
    import inspect

    from hwprune.agents import SEARCHERS, get_searcher

    cls = SEARCHERS.get(options["agent"]) if options["agent"] in SEARCHERS else None
    kwargs: dict[str, Any] = {"seed": int(options["seed"])}
    if cls is not None and importlib.util.find_spec("tensorboard") is not None:
        params = inspect.signature(cls.__init__).parameters
        for name in ("tensorboard_log", "tensorboard_dir", "tensorboard"):
            if name in params:
                kwargs[name] = str(run_dir / "tensorboard")
                break
    return get_searcher(options["agent"], **kwargs)


def _count_params(module: Any, *, nonzero: bool = False) -> int:
    if nonzero:
        return int(sum(int((p != 0).sum()) for p in module.parameters()))
    return int(sum(p.numel() for p in module.parameters()))


def _finetune(
    module: Any,
    data: Any,
    *,
    options: Mapping[str, Any],
    teacher: Any | None,
    progress: Callable[[ProgressEvent], None] | None,
) -> Any:
    """Fine-tune the pruned module in place (distilling from ``teacher`` when given)."""
    from hwprune.train import finetune

    epochs = int(options["finetune_epochs"])
    if epochs <= 0:
        return module

    def on_step(p: Any) -> None:
        if p.epoch_done:
            _emit(
                progress,
                "finetune",
                p.epoch,
                p.epochs,
                info={"search_accuracy": p.search_accuracy, "loss": p.loss},
            )

    # Sparse granularities: pruned weights must stay zero, or fine-tuning refills them and the
    # non-zero count returns to dense. A zero gradient keeps them zero under SGD, momentum and
    # weight decay (the decay term is w * wd = 0).
    hooks = []
    if options.get("granularity", "channel") != "channel":
        import torch

        for m in module.modules():
            if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
                keep = (m.weight.detach() != 0).to(m.weight.dtype)
                hooks.append(m.weight.register_hook(lambda g, keep=keep: g * keep.to(g.device)))
    try:
        finetune(
            module,
            data,
            epochs=epochs,
            lr=float(options.get("finetune_lr", FINETUNE_LR)),
            batch_size=int(options.get("finetune_batch_size", FINETUNE_BATCH_SIZE)),
            teacher=teacher,
            device=options["device"],
            seed=int(options["seed"]),
            progress=on_step if progress is not None else None,
        )
    finally:
        for h in hooks:
            h.remove()
    return module


def _test_accuracy(module: Any, data: Any, device: str) -> float:
    from hwprune.train import accuracy

    return float(accuracy(module, data.test, device=device))


# --------------------------------------------------------------------------- the job


def prune(
    *,
    model: str,
    weights: str | Path | None = None,
    width: float | None = None,
    data: str = "digits",
    data_root: str | Path | None = None,
    budgets: Sequence[str] | str,
    oracles: Mapping[str, str] | Sequence[str] | None = None,
    agent: str = "ppo-lagrangian",
    evaluations: int = 100,
    finetune_epochs: int = 5,
    finetune_lr: float = FINETUNE_LR,
    finetune_batch_size: int = FINETUNE_BATCH_SIZE,
    distill: bool = False,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    round_to: int | None = None,
    min_keep: float = 0.1,
    granularity: str = "channel",
    importance: str = "l2",
    device: str = "cpu",
    opset: int = 17,
    tensorrt: bool = True,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> PruneResult:
    """Prune ``model`` until every budget holds on its oracle, prove it on the final model, export.

    Example::

        result = hwprune.prune(model="vgg11_cifar", weights="vgg.pt", data="digits",
                               budgets=["latency<=50%"], out="runs/vgg")
        result.met  # {"latency": True}

    Raises InfeasibleBudgetError (the run directory is kept) when no allowed
    policy meets a budget, naming the smallest value measured.
    """
    from hwprune.constraints import bind_constraints

    if isinstance(budgets, str):
        budgets = [budgets]
    if granularity not in GRANULARITIES:
        raise ConfigError(
            f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}"
        )
    if not isinstance(evaluations, int) or isinstance(evaluations, bool) or evaluations < 1:
        raise ConfigError(f"evaluations must be a positive integer, got {evaluations!r}")
    if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ConfigError(
            f"finetune_epochs must be a non-negative integer, got {finetune_epochs!r}"
        )
    if isinstance(finetune_lr, bool) or not (
        isinstance(finetune_lr, (int, float)) and 0.0 < float(finetune_lr) < 10.0
    ):
        raise ConfigError(f"finetune_lr must be a learning rate in (0, 10), got {finetune_lr!r}")
    if (
        not isinstance(finetune_batch_size, int)
        or isinstance(finetune_batch_size, bool)
        or finetune_batch_size < 1
    ):
        raise ConfigError(
            f"finetune_batch_size must be a positive integer, got {finetune_batch_size!r}"
        )
    if not 0.0 < float(min_keep) <= 1.0:
        raise ConfigError(f"min_keep must lie in (0, 1], got {min_keep!r}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    if weights is not None and not Path(weights).is_file():
        raise CheckpointError(f"checkpoint file not found: {str(weights)!r}")
    options: dict[str, Any] = {
        "model": str(model),
        "weights": str(Path(weights).resolve()) if weights is not None else None,
        "width": width,
        "data": str(data),
        "data_root": str(data_root) if data_root is not None else None,
        "budgets": [str(b) for b in budgets],
        "oracles": None,
        "agent": str(agent),
        "evaluations": int(evaluations),
        "finetune_epochs": int(finetune_epochs),
        "finetune_lr": float(finetune_lr),
        "finetune_batch_size": int(finetune_batch_size),
        "distill": bool(distill),
        "seed": int(seed),
        "round_to": round_to,
        "min_keep": float(min_keep),
        "granularity": granularity,
        "importance": str(importance),
        "device": str(device),
        "opset": int(opset),
        "tensorrt": bool(tensorrt),
    }
    options["oracles"] = _oracle_overrides({**options, "oracles": oracles})
    # Validate names and budgets before touching the output folder.
    from hwprune.agents import list_searchers

    if options["agent"].lower() not in list_searchers():
        from hwprune.agents import SEARCHERS

        SEARCHERS.get(options["agent"])  # raises UnknownNameError with a suggestion
    constraints = bind_constraints(options["budgets"], oracles=options["oracles"])
    if options["round_to"] is None:
        options["round_to"] = _default_round_to([c.oracle for c in constraints])
    from hwprune.models import MODELS, is_user_model

    if not is_user_model(options["model"]):
        MODELS.get(options["model"])
    out = Path(out)
    if resume:
        saved = load_config(out)
        if not saved:
            raise RunDirError(f"cannot resume {str(out)!r}: config.json holds no options")
    _prepare_run_dir(out, options, resume=resume, overwrite=overwrite)
    return _run(out, options, constraints=constraints, progress=progress)


def resume(
    run_dir: str | Path,
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
    evaluations: int | None = None,
) -> PruneResult:
    """Continue a stopped run with the options in its config.json (``evaluations`` may raise the budget)."""
    options = load_config(run_dir)
    if evaluations is not None:
        options["evaluations"] = int(evaluations)
    kwargs = {k: options[k] for k in OPTION_NAMES if k in options}
    return prune(**kwargs, out=run_dir, resume=True, progress=progress)


def _emit(progress: Callable[[ProgressEvent], None] | None, *args: Any, **kwargs: Any) -> None:
    if progress is not None:
        progress(ProgressEvent(*args, **kwargs))


def _run(
    run_dir: Path,
    options: dict[str, Any],
    *,
    constraints: list,
    progress: Callable[[ProgressEvent], None] | None,
) -> PruneResult:
    import copy

    import torch

    from hwprune.data import get_dataset
    from hwprune.evaluate import Evaluator
    from oracles import MeasurementCache

    torch.manual_seed(int(options["seed"]))
    stages: dict[str, float] = {}
    device = options["device"]

    # ---- load: data, model, space
    t0 = time.perf_counter()
    _emit(progress, "load", 0, 1, "loading data and model")
    kwargs: dict[str, Any] = {"seed": int(options["seed"])}
    if options.get("data_root") is not None:
        kwargs["root"] = options["data_root"]
    data = get_dataset(options["data"], **kwargs)
    input_shape = tuple(int(s) for s in data.input_shape)
    dense_model, base_meta = _load_model(
        options, num_classes=int(data.num_classes), input_size=int(input_shape[-1])
    )
    base_meta["input_shape"] = list(input_shape)
    space = _build_space(dense_model, input_shape=input_shape, options=options)
    stages["load"] = time.perf_counter() - t0

    # ---- dense baseline with every constraint's oracle
    t0 = time.perf_counter()
    _emit(progress, "dense", 0, len(constraints), "measuring the dense model")
    cache = MeasurementCache(run_dir / "oracle-cache.sqlite")
    evaluator = Evaluator(
        space=space,
        data=data,
        constraints=constraints,
        cache=cache,
        log_path=str(run_dir / "episodes.jsonl"),
        device=device,
        seed=int(options["seed"]),
    )
    resumed = evaluator.evaluations
    constraints = evaluator.calibrate()
    accuracy_dense = _test_accuracy(dense_model, data, device)
    stages["dense"] = time.perf_counter() - t0
    _emit(
        progress,
        "dense",
        len(constraints),
        len(constraints),
        "dense model measured",
        info={"values": {c.name: c.dense_value for c in constraints}, "resumed": resumed},
    )

    # ---- search
    t0 = time.perf_counter()
    total = int(options["evaluations"])
    remaining = max(0, total - resumed)
    best_acc: list[float | None] = [None]
    done = [resumed]

    def on_outcome(outcome: Any) -> None:
        if not outcome.cached:
            done[0] += 1
        if outcome.feasible and (best_acc[0] is None or outcome.accuracy > best_acc[0]):
            best_acc[0] = outcome.accuracy
        _emit(
            progress,
            "search",
            min(done[0], total),
            total,
            info={
                "best_feasible_accuracy": best_acc[0],
                "values": dict(outcome.values),
                "feasible": outcome.feasible,
                "accuracy": outcome.accuracy,
            },
        )

    for o in evaluator.history:
        if o.feasible and (best_acc[0] is None or o.accuracy > best_acc[0]):
            best_acc[0] = o.accuracy
    _emit(progress, "search", resumed, total, info={"best_feasible_accuracy": best_acc[0]})
    searcher = _searcher(options, run_dir)
    if remaining > 0:
        result = searcher.search(
            space=space,
            evaluator=evaluator,
            evaluations=remaining,
            progress=on_outcome,
            checkpoint_dir=run_dir / "agent",
        )
        search_extra = dict(result.extra)
        first_feasible = result.first_feasible_evaluation
        if first_feasible is not None:
            first_feasible += resumed
        best = result.best
        infeasible = result.infeasible
    else:
        # The search had finished before a resume: choose from its history as the search
        # does, fresh confirmation included.
        from hwprune.agents import confirm_best, repair

        best, confirmations = confirm_best(space, evaluator, evaluator.history)
        search_extra = {"confirmations": confirmations} if confirmations else {}
        first_feasible = next((i + 1 for i, o in enumerate(evaluator.history) if o.feasible), None)
        infeasible = best is None
        if best is None:
            start = (
                max(evaluator.history, key=lambda o: o.accuracy).policy
                if evaluator.history
                else None
            )
            best = repair(space, evaluator.evaluate, start)
            infeasible = best is None
    stages["search"] = time.perf_counter() - t0
    if best is None or infeasible:
        smallest = evaluator.smallest()
        by_name = {c.name: c for c in constraints}
        missed = []
        for name, value in smallest.items():
            c = by_name[name]
            if value > c.bound:
                missed.append(
                    f"{c.budget.text} on {c.oracle}: the smallest {name} measured was "
                    f"{_fmt(value, c.unit)} against a bound of {_fmt(c.bound, c.unit)}"
                )
        detail = "; ".join(missed) or "no candidate met every budget at once"
        raise InfeasibleBudgetError(
            f"no allowed policy meets the budgets ({detail}, with min_keep={options['min_keep']}); "
            f"loosen the budget or lower min_keep (everything measured is kept in {str(run_dir)!r})",
            smallest=smallest,
        )

    # ---- fine-tune, verify, repair
    teacher = copy.deepcopy(dense_model).eval() if options["distill"] else None
    tried: set[str] = set()
    repairs = 0
    finetune_seconds = verify_seconds = 0.0
    candidate = best
    while True:
        tried.add(candidate.key)
        t0 = time.perf_counter()
        _emit(progress, "finetune", 0, int(options["finetune_epochs"]), "fine-tuning")
        module = space.apply(candidate.policy)
        accuracy_pruned = _test_accuracy(_reestimated(module, data, device), data, device)
        module = _finetune(module, data, options=options, teacher=teacher, progress=progress)
        module = module.to("cpu").eval()
        accuracy_final = _test_accuracy(module, data, device)
        module = module.to("cpu").eval()
        finetune_seconds += time.perf_counter() - t0
        _emit(
            progress,
            "finetune",
            int(options["finetune_epochs"]),
            int(options["finetune_epochs"]),
            info={"accuracy": accuracy_final},
        )

        t0 = time.perf_counter()
        _emit(progress, "verify", 0, len(constraints), "re-measuring the final model")
        final = _verify(evaluator, module)
        verify_seconds += time.perf_counter() - t0
        met = {c.name: c.met(final[c.name].value) for c in constraints}
        _emit(
            progress,
            "verify",
            len(constraints),
            len(constraints),
            info={"values": {k: m.value for k, m in final.items()}, "met": met},
        )
        if all(met.values()):
            break
        if repairs >= MAX_REPAIRS:
            missed = [c for c in constraints if not met[c.name]]
            c = missed[0]
            raise InfeasibleBudgetError(
                f"the final model misses {c.budget.text} on {c.oracle} "
                f"({_fmt(final[c.name].value, c.unit)} > {_fmt(c.bound, c.unit)}) after "
                f"{repairs} repairs; the measurement is too noisy at this bound, or the bound "
                "is at the edge of what the space allows",
                smallest=evaluator.smallest(),
            )
        repairs += 1
        worst = max(c.cost(final[c.name].value) for c in constraints)
        log.warning("final model misses a budget (worst cost %.3f); repairing (%d)", worst, repairs)
        candidate = _repair_candidate(evaluator, space, candidate, worst=worst, tried=tried)
        if candidate is None:
            raise InfeasibleBudgetError(
                "the final model misses a budget on re-measurement and no candidate with more "
                "margin can be found; loosen the budget or lower min_keep",
                smallest=evaluator.smallest(),
            )
    stages["finetune"] = finetune_seconds
    stages["verify"] = verify_seconds

    # ---- save and export
    t0 = time.perf_counter()
    _emit(progress, "export", 0, 2, "exporting")
    from hwprune.export.final import final_export
    from hwprune.models import save_checkpoint

    policy = candidate.policy
    policy_path = run_dir / "policy.json"
    policy_dict = _policy_dict(policy, space)
    policy_path.write_text(json.dumps(policy_dict, indent=2) + "\n", encoding="utf-8")
    model_path = run_dir / "model.pt"
    meta = {
        **base_meta,
        "pruned": True,
        "policy": policy_dict,
        "space": {k: options[k] for k in ("granularity", "round_to", "min_keep", "importance")},
        "accuracy": accuracy_final,
    }
    save_checkpoint(module, model_path, meta=meta)
    exported = final_export(
        module,
        input_shape=(1, *input_shape),
        onnx_path=run_dir / "model.onnx",
        engine_path=(run_dir / "model.engine") if options.get("tensorrt", True) else None,
        opset=int(options.get("opset", 17)),
        seed=int(options["seed"]),
    )
    stages["export"] = time.perf_counter() - t0
    _emit(progress, "export", 2, 2, info={"max_abs_diff": exported.max_abs_diff})

    checks = tuple(
        BudgetCheck(
            budget=c.budget.text,
            quantity=c.name,
            oracle=c.oracle,
            unit=c.unit,
            dense=float(c.dense_value),
            bound=float(c.bound),
            final=float(final[c.name].value),
            met=bool(met[c.name]),
            margin=1.0 - float(final[c.name].value) / float(c.bound),
        )
        for c in constraints
    )
    paths = {
        "run_dir": run_dir,
        "config": run_dir / "config.json",
        "episodes": run_dir / "episodes.jsonl",
        "policy": policy_path,
        "model": model_path,
        "onnx": exported.onnx_path,
        "report_md": run_dir / "report.md",
        "report_json": run_dir / "report.json",
    }
    if exported.engine_path is not None:
        paths["engine"] = exported.engine_path
    sparse = options["granularity"] != "channel"
    result = PruneResult(
        run_dir=run_dir,
        policy=policy,
        budgets=checks,
        dense={c.name: float(c.dense_value) for c in constraints},
        final={c.name: float(final[c.name].value) for c in constraints},
        met=met,
        accuracy_dense=accuracy_dense,
        accuracy_pruned=accuracy_pruned,
        accuracy_finetuned=accuracy_final,
        params_dense=_count_params(dense_model),
        params_final=_count_params(module, nonzero=sparse),
        stage_seconds=dict(stages),
        paths=paths,
        searcher=getattr(searcher, "name", options["agent"]),
        evaluations=evaluator.evaluations,
        first_feasible_evaluation=first_feasible,
        repairs=repairs,
        export_max_abs_diff=exported.max_abs_diff,
        tensorrt=exported.tensorrt_message,
    )
    t0 = time.perf_counter()
    from hwprune.report import write_report

    plots = write_report(
        run_dir,
        result=result,
        history=evaluator.history,
        chosen_key=candidate.key,
        constraints=constraints,
        unit_names=_unit_names(space),
        lagrange=search_extra.get("lagrange"),
        options=options,
    )
    stages["report"] = time.perf_counter() - t0
    paths.update({f"plot:{p.stem}": p for p in plots})
    # Re-write report.json with the report stage's time included.
    from dataclasses import replace

    result = replace(result, stage_seconds=dict(stages), paths=paths)
    from hwprune.report import write_report_json

    write_report_json(run_dir, result=result, options=options)
    return result


def _fmt(value: float, unit: str) -> str:
    from hwprune.constraints import format_value

    return format_value(value, unit)


def _policy_dict(policy: Any, space: Any) -> dict[str, Any]:
    try:
        return policy.to_dict(space)
    except (TypeError, HwpruneError):
        return policy.to_dict()


def _unit_names(space: Any) -> list[str]:
    units = getattr(space, "units", None) or []
    names = []
    for i, u in enumerate(units):
        names.append(str(getattr(u, "name", None) or getattr(u, "id", None) or f"unit {i}"))
    return names


def _reestimated(module: Any, data: Any, device: str) -> Any:
    """The pruned module with BN statistics re-estimated (what the search's proxy saw)."""
    try:
        from hwprune.train import reestimate_bn
    except ImportError:
        return module
    import torch

    g = torch.Generator().manual_seed(0)
    n = min(len(data.train), 512)
    subset = torch.utils.data.Subset(
        data.train, torch.randperm(len(data.train), generator=g)[:n].tolist()
    )
    reestimate_bn(module.to(device), subset, batches=8, batch_size=64, device=device)
    return module


def _verify(evaluator: Any, module: Any) -> dict[str, Any]:
    """Every constraint's oracle on the final module, measured afresh (no cache): a timed
    oracle keeps the median of 3 calls, as the dense baseline did."""
    return evaluator.remeasure(module)


def _repair_candidate(
    evaluator: Any, space: Any, failed: Any, *, worst: float, tried: set[str]
) -> Any | None:
    """The best of: the earlier candidates with more margin, and the failed policy scaled
    down until it has that margin.

    ``worst`` is the failed model's largest re-measured cost. Timing noise is a
    factor (a busy machine slows every model alike), so the margin is one too:
    the failed model measured ``worst / failed.max_cost`` times its search value,
    and a replacement must have been measured that much under its bounds, with
    2% to spare. Earlier candidates with that margin may all be far smaller (a
    bisection leaves one near the bound and the rest near the floor), while a
    slightly smaller version of the failed policy usually keeps its accuracy;
    the scaling costs a few evaluations, and repairs are rare.

    Best: the first of :func:`~hwprune.evaluate.rank_feasible`, the rule the
    search's own choice follows (most accurate; within sampling noise of it,
    the least pruned).
    """
    from dataclasses import replace

    from hwprune.agents import repair
    from hwprune.evaluate import rank_feasible

    limit = 0.98 * failed.max_cost / max(worst, 1.0)
    pool = [
        o for o in evaluator.history if o.feasible and o.key not in tried and o.max_cost <= limit
    ]

    def strict(policy: Any) -> Any:
        outcome = evaluator.evaluate(policy)
        ok = outcome.feasible and outcome.max_cost <= limit and outcome.key not in tried
        return replace(outcome, feasible=ok)

    found = repair(space, strict, failed.policy)
    if found is not None:
        pool.append(evaluator._by_key.get(found.key, found))
    if not pool:
        return None
    return rank_feasible(pool, samples=evaluator.eval_samples)[0]


# --------------------------------------------------------------------------- loading


def load_pruned(path: str | Path, *, allow_import: bool = False) -> Any:
    """The pruned nn.Module saved by ``prune`` (a model.pt or its run directory), in eval mode.

    Rebuilds the base model from the checkpoint's meta, applies the saved policy
    to get the pruned architecture, then loads the weights with
    ``torch.load(weights_only=True)``. Nothing is unpickled; user models
    (``package.module:callable``) are imported only with ``allow_import=True``.
    """
    from hwprune.models import check_state_dict, get_model, is_user_model, read_checkpoint
    from hwprune.space import Policy

    p = Path(path)
    if p.is_dir():
        p = p / "model.pt"
    ckpt = read_checkpoint(p)
    meta = dict(ckpt.meta)
    if not meta.get("pruned") or "policy" not in meta or "model" not in meta:
        raise CheckpointError(
            f"{str(p)!r} is not a pruned model saved by hwprune prune (its meta has no policy); "
            "load a plain checkpoint with hwprune.models.model_from_checkpoint"
        )
    name = meta["model"]
    if is_user_model(name) and not allow_import:
        raise CheckpointError(
            f"{str(p)!r} names user code {name!r}, which is not imported from a checkpoint; "
            "pass allow_import=True if you trust it"
        )
    input_shape = tuple(int(s) for s in meta.get("input_shape") or (3, 32, 32))
    base = get_model(
        name,
        num_classes=int(meta.get("num_classes", 10)),
        width=float(meta.get("width", 1.0)),
        input_size=int(meta.get("input_size") or input_shape[-1]),
    ).eval()
    space = _build_space(base, input_shape=input_shape, options=meta["space"])
    module = space.apply(Policy.from_dict(meta["policy"], space=space))
    check_state_dict(module, ckpt.state_dict, where=ckpt.path)
    module.load_state_dict(ckpt.state_dict, strict=True)
    return module.eval()


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


def _is_hwprune_error(exc: BaseException) -> bool:
    return isinstance(exc, HwpruneError)
