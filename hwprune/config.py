"""The run's configuration: one frozen, typed ``PruneConfig`` that owns every default and check.

The CLI's ``hwprune prune`` options are built from these fields (their
``metadata`` carries the flag's help), config files (TOML, or YAML with
pyyaml) and ``config.json`` in a run directory are read through
``PruneConfig.from_mapping``, and ``to_dict`` writes what ``from_mapping``
reads back. Nothing here imports torch.

Example::

    cfg = PruneConfig(model="vgg11_cifar", budgets=("latency<=50%",))
    PruneConfig.from_mapping(cfg.to_dict()) == cfg  # True
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwprune.budgets import Budget, parse_budgets, parse_oracle_overrides
from hwprune.errors import ConfigError, RunDirError

if TYPE_CHECKING:
    from oracles import Oracle

__all__ = [
    "AUTO",
    "PruneConfig",
    "GRANULARITIES",
    "SURROGATE_MODES",
    "DEFAULT_OPSET",
    "OPSET_RANGE",
    "CONFIG_VERSION",
    "PROXIES",
    "ProxySpec",
    "parse_proxy",
    "read_config_file",
    "read_run_config",
    "resolve_round_to",
    "write_run_config",
]

CONFIG_VERSION = 1
# ``round_to`` value that snaps channel counts to the measured latency staircase.
AUTO = "auto"
# What a run prunes: channels (physically removed), unstructured weights, or 2:4 weight blocks.
GRANULARITIES = ("channel", "weight", "2:4")
# Whether timed budgets may be predicted by a surrogate learned during the search
# (hwprune.evaluate.surrogate): auto turns it on for slow oracles only.
SURROGATE_MODES = ("auto", "on", "off")
# The ONNX opset of every export a run makes (search candidates, the final model).
DEFAULT_OPSET = 17
# Opsets torch's exporter and the ONNX checker both accept here.
OPSET_RANGE = (9, 21)
# More worker processes than this is a typo, not a machine.
MAX_WORKERS = 1024
# Seeds numpy's legacy generator takes (Stable-Baselines3 seeds it): 0 to 2**32 - 1.
SEED_RANGE = (0, 2**32 - 1)
# Upper ends of the counting options: beyond them a value is a typo, and the libraries the
# run hands it to (numpy, torch, SB3) overflow on it with a traceback instead.
MAX_EVALUATIONS = 10_000_000
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20

# The search proxies of the built-in classification task (hwprune.train.proxy computes them).
PROXIES = ("bn", "kd", "recover:STEPS")
# recover:STEPS holds STEPS fixed training batches and their teacher logits in memory.
MAX_RECOVER_STEPS = 10_000


@dataclass(frozen=True)
class ProxySpec:
    """A parsed proxy option: ``kind`` is "bn", "kd" or "recover"; ``steps`` for recover."""

    kind: str
    steps: int = 0

    def __str__(self) -> str:
        return f"recover:{self.steps}" if self.kind == "recover" else self.kind


def parse_proxy(spec: str) -> ProxySpec:
    """``"bn"``, ``"kd"`` or ``"recover:STEPS"`` (STEPS from 1 to 10000) as a ProxySpec.

    Anything else raises one ConfigError saying what is accepted.
    """
    text = str(spec).strip().lower()
    kind, sep, arg = text.partition(":")
    if kind in ("bn", "kd") and not sep:
        return ProxySpec(kind)
    if kind == "recover" and arg.isdigit() and 1 <= int(arg) <= MAX_RECOVER_STEPS:
        return ProxySpec("recover", int(arg))
    raise ConfigError(
        f"proxy must be bn, kd or recover:STEPS (STEPS a whole number of SGD steps from 1 to "
        f"{MAX_RECOVER_STEPS}, as in recover:50), got {spec!r}"
    )


_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _opt(default: Any, help: str, *, kind: str, **extra: Any) -> Any:
    """A config field: its default, the CLI help, and the kind of value it takes."""
    meta = {"help": help, "kind": kind, **extra}
    if isinstance(default, (list, dict, tuple)) and default != ():
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class PruneConfig:
    """Every option of a prune run, with its default; checked when built."""

    model: str | None = _opt(None, "registered model name or package.module:callable", kind="str")
    task: str | None = _opt(
        None,
        "package.module:factory returning (model, example_inputs, task): prune your own model "
        "with your own score/calibrate/finetune (instead of --model/--data)",
        kind="str",
    )
    weights: str | None = _opt(None, "checkpoint of the dense model (weights only)", kind="path")
    width: float | None = _opt(
        None, "width multiplier of *_cifar models (default: the checkpoint's, else 1)", kind="float"
    )
    data: str = _opt(
        "digits",
        "dataset: digits (built in), fashion-mnist[:PATH][?train=N] (Debian's "
        "dataset-fashion-mnist), cifar10, cifar100, imagefolder:PATH",
        kind="str",
    )
    data_root: str | None = _opt(None, "folder of downloadable datasets", kind="path")
    input_size: int | None = _opt(
        None,
        "square image side the model takes (default: the checkpoint's meta, else the dataset's)",
        kind="int",
        range=(8, 4096),
        accepts="an image side in [8, 4096]",
    )
    budgets: tuple[Budget, ...] = _opt(
        (),
        "budget such as 'latency<=50%', 'latency<=2.5ms', 'params<=1M' (repeatable)",
        kind="strs",
        parse=parse_budgets,
        flag="--budget",
        metavar="B",
    )
    oracles: dict[str, str] = _opt(
        {},
        "oracle judging a quantity, e.g. latency=onnxruntime:cpu?threads=1 (repeatable)",
        kind="oracles",
        flag="--oracle",
        metavar="QUANTITY=SPEC",
    )
    agent: str = _opt(
        "knapsack-ppo",
        "searcher: knapsack-ppo (PPO-Lagrangian started from the latency knapsack's policy), "
        "ppo-lagrangian, qlp, amc, uniform, global-magnitude, random, latency-knapsack, "
        "knapsack-amc",
        kind="str",
    )
    evaluations: int = _opt(100, "candidates to evaluate", kind="int", range=(1, MAX_EVALUATIONS))
    finetune_epochs: int = _opt(
        5, "fine-tuning epochs (built-in task)", kind="int", range=(0, MAX_EPOCHS)
    )
    finetune_lr: float = _opt(0.01, "peak learning rate of fine-tuning (cosine)", kind="float")
    finetune_batch_size: int = _opt(
        128, "fine-tuning batch size", kind="int", range=(1, MAX_BATCH_SIZE)
    )
    distill: bool = _opt(False, "distil from the dense model while fine-tuning", kind="bool")
    proxy: str = _opt(
        "bn",
        "search score of the built-in task: bn (accuracy after BatchNorm re-estimation; a "
        "candidate scored at chance is ranked, and rewarded, by its size), kd "
        "(agreement with the dense model: exp(-KL) of their softened outputs), or recover:STEPS "
        "(kd after STEPS SGD steps distilling from the dense model)",
        kind="str",
    )
    proxy_racing: bool = _opt(
        False,
        "score a candidate on a growing sample and stop once it is clearly worse than the best "
        "feasible one (one worker; off by default until measured)",
        kind="bool",
    )
    bn_settle: float | None = _opt(
        None,
        "re-estimate BatchNorm until its statistics change by less than TOL, e.g. 0.05 (off by "
        "default until measured)",
        kind="float",
        metavar="TOL",
    )
    seed: int = _opt(
        0, "seed of the data split, the searcher and fine-tuning", kind="int", range=SEED_RANGE
    )
    round_to: int | str | None = _opt(
        None,
        "channel counts: 'auto' (measure each unit's latency staircase on the latency "
        "budget's oracle and build the most channels of each step; the default where a "
        "latency budget exists) or a fixed multiple N (default without a latency budget: 1; "
        "8 for GPU oracles)",
        kind="round_to",
        metavar="auto|N",
    )
    staircase_seconds: float = _opt(
        600.0,
        "time budget of the round_to 'auto' staircase probe: past it, the units probed keep "
        "the steps found so far and the rest are built at the fixed multiple (8 for GPU "
        "oracles, else not rounded). Matters for slow oracles: a TensorRT engine build per "
        "probed layer; ONNX Runtime on a CPU takes 1-3 minutes for a VGG. 0: no limit",
        kind="float",
    )
    min_keep: float = _opt(0.1, "smallest fraction kept per unit", kind="float")
    granularity: str = _opt("channel", "what is pruned", kind="str", choices=GRANULARITIES)
    importance: str = _opt("l2", "channel importance: l1, l2, taylor, random", kind="str")
    allow_output_change: bool = _opt(
        False,
        "let channel pruning change the shape of the model's outputs: returned features (an "
        "FPN level, a neck output) may lose channels; by default every channel group whose "
        "pruning would change an output's shape is left whole, and the final model's output "
        "shapes are checked against the dense model's",
        kind="bool",
    )
    surrogate: str = _opt(
        "auto",
        "predict timed budgets with a model learned from the run's own measurements, measuring "
        "a sample and any sure verdict on a candidate that would be the best so far; a value "
        "whose interval straddles the bound is measured only if the final choice reaches it. "
        "The dense model, the confirmation and the final proof are always measured. "
        "auto: on for slow oracles (TensorRT engines, remote SPEC@http oracles, calls over 2 s)",
        kind="str",
        choices=SURROGATE_MODES,
    )
    device: str = _opt("cpu", "training/evaluation device: cpu, cuda, cuda:N", kind="str")
    opset: int = _opt(
        DEFAULT_OPSET,
        "ONNX opset of the export",
        kind="int",
        range=OPSET_RANGE,
        accepts=f"an ONNX opset from {OPSET_RANGE[0]} to {OPSET_RANGE[1]}",
    )
    allow_trace_warnings: bool = _opt(
        False,
        "export a model whose forward branches on values computed from its input, or turns "
        "them into Python numbers (the ONNX graph keeps the example input's branch and "
        "values; refused by default, naming the file and line; the final comparison with "
        "torch still applies)",
        kind="bool",
    )
    workers: int = _opt(
        1,
        "candidates prepared and scored at once (worker processes, or Ray tasks with --ray); "
        "each timed oracle times one candidate at a time on a core of its own",
        kind="int",
        range=(1, MAX_WORKERS),
        accepts=f"a whole number of worker processes from 1 to {MAX_WORKERS}",
    )
    ray: str | None = _opt(
        None,
        "evaluate on a Ray cluster: 'auto' joins a running one, 'local' starts one here, "
        'or a cluster address (needs pip install "hwprune[ray]")',
        kind="str",
        metavar="ADDRESS",
    )
    tensorrt: bool = _opt(
        True,
        "build a TensorRT engine where TensorRT is installed",
        kind="bool",
        flag="--no-tensorrt",
        negate=True,
    )

    def __post_init__(self) -> None:
        given = vars(self)
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f, given[f.name]))
        self._check()

    # ---------------------------------------------------------------- checks
    def _check(self) -> None:
        def bad(name: str, what: str) -> ConfigError:
            return ConfigError(f"{name} must be {what}, got {vars(self)[name]!r}")

        if self.task is not None and not _SPEC.match(self.task):
            raise bad("task", "a factory written package.module:callable")
        if self.model is not None and self.task is not None:
            raise ConfigError("give either model (with data) or task, not both")
        if self.width is not None and not (0.0 < self.width <= 16.0):
            raise bad("width", "a multiplier in (0, 16]")
        if not 0.0 < self.finetune_lr < 10.0:
            raise ConfigError(
                f"finetune_lr must be a learning rate in (0, 10), got {self.finetune_lr!r}"
            )
        if self.staircase_seconds < 0:
            raise ConfigError(
                f"staircase_seconds must be 0 (no limit) or positive, got {self.staircase_seconds!r}"
            )
        if not 0.0 < self.min_keep <= 1.0:
            raise ConfigError(f"min_keep must lie in (0, 1], got {self.min_keep!r}")
        if self.granularity not in GRANULARITIES:
            raise bad("granularity", f"one of {', '.join(GRANULARITIES)}")
        if self.surrogate not in SURROGATE_MODES:
            raise bad("surrogate", f"one of {', '.join(SURROGATE_MODES)}")
        if not _DEVICE.match(self.device):
            raise bad("device", "'cpu', 'cuda' or 'cuda:N'")
        object.__setattr__(self, "proxy", str(parse_proxy(self.proxy)))
        if self.bn_settle is not None and not 0.0 < self.bn_settle < 1.0:
            raise bad("bn_settle", "a fraction between 0 and 1 such as 0.05")
        if self.proxy_racing and (self.workers > 1 or self.ray is not None):
            raise ConfigError(
                "proxy_racing needs one worker: parallel workers score every candidate in "
                "full (drop --proxy-racing, or give --workers 1 without --ray)"
            )
        if self.surrogate == "on" and (self.workers > 1 or self.ray is not None):
            raise ConfigError(
                "surrogate 'on' needs one worker: a parallel evaluation measures every "
                "candidate (give --surrogate off or auto, or --workers 1 without --ray)"
            )

    def require_runnable(self, *, module_given: bool = False) -> None:
        """ConfigError unless the config names what to prune, a budget and how to score.

        ``module_given``: the caller hands the model and its task as objects (``hwprune.prune``
        with an nn.Module), so no model name or task factory is needed, and the built-in
        task's ``proxy`` is not used.
        """
        if not module_given and self.model is None and self.task is None:
            raise ConfigError(
                "--model (a registered name or package.module:callable) or --task "
                "(package.module:factory) is required"
            )
        if not self.budgets:
            raise ConfigError("at least one --budget is required, e.g. --budget 'latency<=50%'")
        if (module_given or self.task is not None) and self.bn_settle is not None:
            raise ConfigError(
                "bn_settle is an option of the built-in task (--model/--data); your task's "
                "calibrate(model) re-estimates BatchNorm"
            )
        if (module_given or self.task is not None) and self.proxy != default("proxy"):
            raise ConfigError(
                f"proxy {self.proxy!r} is an option of the built-in task (--model/--data); "
                "your task's score(model) is the search's proxy"
            )

    # ------------------------------------------------------------ round trip
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; ``from_mapping`` reads them back to an equal config."""
        out: dict[str, Any] = {}
        for name, v in vars(self).items():
            if isinstance(v, tuple):
                v = [str(x) for x in v]  # budgets as the text they were parsed from
            out[name] = dict(v) if isinstance(v, dict) else v
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "") -> PruneConfig:
        """A config from a mapping of options (``budget`` and dashed names accepted).

        Unknown names and values of the wrong type raise ConfigError naming
        ``where`` (a file) when given.
        """
        prefix = f"{where}: " if where else ""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix}expected a table of options, got {type(data).__name__}")
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        if "budget" in data and "budgets" not in data:
            data["budgets"] = data.pop("budget")
        if "oracle" in data and "oracles" not in data:
            data["oracles"] = data.pop("oracle")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{prefix}unknown option {unknown[0]!r}; accepted: {', '.join(sorted(names))}"
            )
        try:
            return cls(**data)
        except ConfigError as exc:
            if not prefix:
                raise
            raise type(exc)(f"{prefix}{exc}") from None

    def replace(self, **changes: Any) -> PruneConfig:
        return dataclasses.replace(self, **changes)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """``value`` as the field's kind, or a ConfigError naming the field and what it takes."""
    kind = f.metadata["kind"]
    if value is None:
        if f.default is None:
            return None
        if kind in ("strs", "oracles"):
            return () if kind == "strs" else {}
        raise ConfigError(f"{f.name} must be set, got null")

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{f.name} must be {what}, got {value!r}")

    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        # Every integer option has its range here, where each value is checked.
        lo, hi = f.metadata["range"]
        if not lo <= value <= hi:
            raise bad(f.metadata.get("accepts") or f"a whole number from {lo} to {hi}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(float(value)):
            raise bad("a finite number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind in ("str", "path"):
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise bad("a non-empty string")
        return value
    if kind == "strs":
        if isinstance(value, (str, Budget)):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (str, Budget)) for v in value
        ):
            raise bad("a string or a list of strings")
        parse = f.metadata.get("parse", tuple)
        return parse(value)
    if kind == "oracles":
        if not isinstance(value, (str, list, tuple, Mapping)):
            raise bad("QUANTITY=SPEC strings such as 'latency=onnxruntime:cpu'")
        return parse_oracle_overrides(value)
    if kind == "round_to":
        return _round_to(value, bad)
    raise AssertionError(kind)


def _round_to(value: Any, bad: Any) -> int | str:
    """``round_to`` as a positive integer or ``"auto"`` (command-line digits accepted)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad("a positive integer or 'auto'")
    return int(value)


# --------------------------------------------------------------------------- files


# A config file is a page of options; anything larger is not one (and is not read whole).
MAX_CONFIG_BYTES = 1 << 20


def not_a_file(mode: int) -> str | None:
    """What a ``stat`` mode names when it is not a regular file ("a folder", "a character
    device, not a regular file"), else None."""
    import stat

    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return f"{kind}, not a regular file"


def input_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an input file ("not found", "is a folder", "is a
    character device, not a regular file"), or None when it is a regular file."""
    import os

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    what = not_a_file(mode)
    return None if what is None else f"is {what}"


def _read_bounded_text(p: Path, *, where: str, limit: int) -> str:
    """The file's text, read only after its open handle is seen to be a regular file of at most
    ``limit`` bytes (a device, a pipe or a folder is named, never read)."""
    import os

    try:
        # Non-blocking: opening a pipe must not wait for a writer before it is refused.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{where} not found") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        what = not_a_file(os.fstat(fd).st_mode)
        if what is not None:
            raise ConfigError(f"{where} is {what}; expected a TOML or YAML file")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(
            f"{where} is over {limit // (1 << 20)} MiB; a config file is a page of options"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options of a TOML file (or YAML when pyyaml is installed) as a plain dict, checked.

    Only the names given are returned (so the command line can tell what the
    file set); their types and values are checked through PruneConfig.
    """
    p = Path(path)
    where = f"config file {str(p)!r}"
    text = _read_bounded_text(p, where=where, limit=MAX_CONFIG_BYTES)
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(
                f"{where} is YAML, which needs pyyaml (pip install pyyaml); or write it as TOML"
            ) from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where} is not valid YAML: {exc}") from exc
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where} is not valid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a table of options")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    if "budget" in data and "budgets" not in data:
        data["budgets"] = data.pop("budget")
    if isinstance(data.get("budgets"), str):
        data["budgets"] = [data["budgets"]]
    extra = {k: data.pop(k) for k in ("out", "overwrite") if k in data}
    # Type and value checks of the names given (defaults fill the rest); a file naming a
    # task or model alone is fine here.
    PruneConfig.from_mapping(data, where=where)
    if "out" in extra and not isinstance(extra["out"], str):
        raise ConfigError(f"{where}: out must be a folder path, got {extra['out']!r}")
    if "overwrite" in extra and not isinstance(extra["overwrite"], bool):
        raise ConfigError(f"{where}: overwrite must be true or false, got {extra['overwrite']!r}")
    return {**data, **extra}


def read_run_config(run_dir: str | Path, *, require_model: bool = True) -> PruneConfig:
    """The config a run directory was started with (its config.json), checked.

    ``require_model=False`` accepts a run of a module handed to ``prune`` (no
    model name, no task factory: the caller hands them again)."""
    path = Path(run_dir) / "config.json"
    what = f"cannot resume {str(run_dir)!r}"
    if not path.is_file():
        raise RunDirError(f"{what}: it has no config.json (not a hwprune run directory)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{what}: config.json is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise RunDirError(
            f"{what}: config.json must hold an object of options, got {type(data).__name__}"
        )
    options = data.get("options", data)
    if not isinstance(options, dict):
        raise RunDirError(f"{what}: config.json's options must be an object, got {options!r}")
    options = {k: v for k, v in options.items() if k not in ("version", "created")}
    try:
        config = PruneConfig.from_mapping(options)
        if require_model:
            config.require_runnable()
        elif not config.budgets:
            raise ConfigError("it names no budget")
    except ConfigError as exc:
        raise RunDirError(f"{what}: config.json is not a valid run config ({exc})") from None
    return config


def write_run_config(run_dir: Path, config: PruneConfig) -> Path:
    """config.json, written atomically: what ``read_run_config`` reads back."""
    import time

    record = {"version": CONFIG_VERSION, "created": time.time(), "options": config.to_dict()}
    from hwprune.files import write_atomic

    return write_atomic(
        run_dir / "config.json", json.dumps(record, indent=2, sort_keys=True) + "\n"
    )


def default(name: str) -> Any:
    """The default of one PruneConfig field (for code that takes the option on its own)."""
    return PruneConfig.__dataclass_fields__[name].default


def default_round_to(oracle_specs: Sequence[str | Oracle]) -> int:
    """The fixed multiple without a latency staircase: 8 where a budget is timed on a GPU or an
    NPU (the oracle's ``needs_gpu``: NVIDIA tensor cores, Intel GPU XMX and NPU tiles like
    multiples of 8), else 1."""
    from oracles import capabilities

    return 8 if any(capabilities(s).needs_gpu for s in oracle_specs) else 1


def resolve_round_to(
    round_to: int | str | None,
    *,
    granularity: str,
    latency_oracles: Sequence[str | Oracle],
    oracle_specs: Sequence[str | Oracle],
) -> int | str:
    """The run's ``round_to``: unset means ``auto`` where a latency budget prunes channels;
    ``auto`` without a latency oracle (or on a weight granularity, where counts are not
    rounded) falls back to ``default_round_to(oracle_specs)``. Oracles are given as specs or as the
    oracles built from them."""
    if isinstance(round_to, int):
        return round_to
    if granularity == "channel" and latency_oracles:
        return AUTO
    return default_round_to(oracle_specs)
