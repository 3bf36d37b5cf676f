"""Compare oracles: how well do parameters, FLOPs or memory predict latency measured on this device?

Policies are sampled over the whole range of pruning (dense to the smallest
allowed model), each pruned model is measured with every oracle (through the
oracle cache), and each oracle is scored as a predictor of a reference oracle.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import oracles
from hwprune.errors import ConfigError
from oracles import MeasurementCache

if TYPE_CHECKING:
    from hwprune.space import ChannelSpace

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ORACLES",
    "default_oracles",
    "gpu_oracles",
    "openvino_oracles",
    "Comparison",
    "sample_policies",
    "compare_oracles",
    "write_report",
]

DEFAULT_ORACLES = (
    "params",
    "flops",
    "peak-memory",
    "onnxruntime:cpu?threads=1",
    "onnxruntime:cpu?threads=2",
    "torch:cpu",
)


def gpu_oracles() -> tuple[str, ...]:
    """The GPU latency oracles this machine can run: ``torch:cuda`` where torch sees a CUDA GPU,
    ``onnxruntime:cuda`` / ``onnxruntime:tensorrt`` where onnxruntime-gpu offers those
    providers, ``tensorrt`` where TensorRT is installed; none without a GPU.
    """
    import importlib.util

    import onnxruntime
    import torch

    if not torch.cuda.is_available():
        return ()
    found = ["torch:cuda"]
    providers = set(onnxruntime.get_available_providers())
    if "CUDAExecutionProvider" in providers:
        found.append("onnxruntime:cuda")
    if "TensorrtExecutionProvider" in providers:
        found.append("onnxruntime:tensorrt")
    if importlib.util.find_spec("tensorrt") is not None:
        found.append("tensorrt")
    return tuple(found)


def openvino_oracles() -> tuple[str, ...]:
    """``openvino:cpu?threads=1`` where the openvino package (the ``openvino`` extra) is installed."""
    import importlib.util

    return ("openvino:cpu?threads=1",) if importlib.util.find_spec("openvino") else ()


def default_oracles() -> tuple[str, ...]:
    """What compare-oracles measures when no oracle is named: the CPU set, OpenVINO where
    installed, plus the GPU ones."""
    return DEFAULT_ORACLES + openvino_oracles() + gpu_oracles()


@dataclass(frozen=True)
class PairStats:
    a: str
    b: str
    spearman: float
    kendall: float


@dataclass(frozen=True)
class PredictorStats:
    """One oracle as a linear predictor of the reference: ref ~ slope * x + intercept."""

    oracle: str
    slope: float
    intercept: float
    mean_rel_error: float
    max_rel_error: float
    r2: float


@dataclass(frozen=True)
class Comparison:
    model: str
    input_shape: tuple[int, ...]
    reference: str
    oracles: list[str]
    units: dict[str, str]
    keeps: list[float]  # mean keep ratio of each sampled policy
    values: dict[str, list[float]]  # oracle -> value per sample (sample 0 is dense)
    pairs: list[PairStats]
    predictors: list[PredictorStats]
    ratio: dict[str, float]  # smallest sampled / dense, per oracle
    seconds: float
    cached: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: an undefined statistic (NaN, e.g. a constant series) is None."""
        return _finite(asdict(self))

    def to_json(self, *, indent: int | None = 2) -> str:
        """Strict JSON (no NaN or Infinity tokens, which JSON does not have)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def sample_policies(space: ChannelSpace, n: int, *, seed: int = 0) -> list[Any]:
    """``n`` policies from dense to the smallest allowed model, with per-unit variety.

    Sample i has a base keep level spaced evenly over [min_keep, 1] and
    per-unit noise around it, so the set covers the whole range of pruning and
    not only shapes near dense. Sample 0 is the dense model.
    """
    from hwprune.space import Policy

    if n < 3:
        raise ValueError(f"need at least 3 samples to compare oracles, got {n}")
    rng = np.random.default_rng(seed)
    lo = space.min_keep
    policies = [Policy.dense(space)]
    units = len(space.units)
    for i in range(1, n):
        level = 1.0 - (1.0 - lo) * i / (n - 1)
        noise = rng.uniform(-0.15, 0.15, size=units) if i < n - 1 else np.zeros(units)
        keep = np.clip(level + noise, lo, 1.0)
        policies.append(Policy(keep=tuple(float(k) for k in keep)))
    return policies


def _rank_corr(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    from scipy import stats

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    return float(stats.spearmanr(x, y).statistic), float(stats.kendalltau(x, y).statistic)


def _predictor(name: str, x: Sequence[float], ref: Sequence[float]) -> PredictorStats:
    xa, ya = np.asarray(x, dtype=float), np.asarray(ref, dtype=float)
    if np.ptp(xa) == 0:
        slope, intercept = 0.0, float(ya.mean())
    else:
        slope, intercept = (float(v) for v in np.polyfit(xa, ya, 1))
    pred = slope * xa + intercept
    rel = np.abs(pred - ya) / np.abs(ya)
    ss_res = float(np.sum((ya - pred) ** 2))
    ss_tot = float(np.sum((ya - ya.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return PredictorStats(name, slope, intercept, float(rel.mean()), float(rel.max()), r2)


def compare_oracles(
    *,
    model: Any,
    model_name: str = "model",
    input_shape: tuple[int, ...],
    oracle_specs: Sequence[str] = DEFAULT_ORACLES,
    reference: str | None = None,
    samples: int = 12,
    seed: int = 0,
    min_keep: float = 0.1,
    cache: MeasurementCache | None = None,
    progress: Callable[[int, int], None] | None = None,
    allow_trace_warnings: bool = False,
) -> Comparison:
    """Measure ``samples`` pruned variants of ``model`` with every oracle and score them.

    ``reference`` defaults to the first latency oracle in ``oracle_specs``.
    ``progress(done, total)``: called with 0 once the oracles and the memory needed are
    checked, then after each variant is measured.
    ``allow_trace_warnings``: see ``export_onnx`` (a forward deciding on input values).
    """
    from hwprune.space import ChannelSpace

    built, reference = _built_oracles(oracle_specs, reference)
    specs = [o.spec for o in built]
    _check_memory(model, built, tuple(input_shape))

    start = time.perf_counter()
    space = ChannelSpace(model, example_input_shape=tuple(input_shape), min_keep=min_keep)
    policies = sample_policies(space, samples, seed=seed)
    if progress is not None:
        progress(0, len(policies))
    values: dict[str, list[float]] = {s: [] for s in specs}
    hits = {s: 0 for s in specs}
    for i, policy in enumerate(policies):
        measured = _measure_variant(space.apply(policy), built, tuple(input_shape), cache=cache,
                                    allow_trace_warnings=allow_trace_warnings)  # fmt: skip
        for spec, m in zip(specs, measured, strict=True):
            values[spec].append(float(m.value))
            hits[spec] += int(m.cached)
        if progress is not None:
            progress(i + 1, len(policies))

    pairs = []
    for i, a in enumerate(specs):
        for b in specs[i + 1 :]:
            pairs.append(PairStats(a, b, *_rank_corr(values[a], values[b])))
    return Comparison(
        model=model_name,
        input_shape=tuple(input_shape),
        reference=reference,
        oracles=specs,
        units={o.spec: o.unit for o in built},
        keeps=[float(np.mean(p.keep)) for p in policies],
        values=values,
        pairs=pairs,
        predictors=[_predictor(s, values[s], values[reference]) for s in specs if s != reference],
        ratio={s: min(v) / v[0] if v[0] else math.nan for s, v in values.items()},
        seconds=time.perf_counter() - start,
        cached=hits,
    )


def _built_oracles(
    oracle_specs: Sequence[str], reference: str | None
) -> tuple[list[oracles.Oracle], str]:
    """Every oracle built once from its spec (the reference added when it is not among them)
    and the reference's canonical spec; an oracle listed twice is refused."""
    built = [oracles.get_oracle(s) for s in oracle_specs]
    specs = [o.spec for o in built]
    if len(set(specs)) != len(specs):
        raise ConfigError(f"an oracle is listed twice: {', '.join(oracle_specs)}")
    if reference is None:
        latency = [o.spec for o in built if o.quantity == "latency"]
        return built, latency[0] if latency else specs[0]
    ref_oracle = oracles.get_oracle(reference)
    if ref_oracle.spec not in specs:
        built.append(ref_oracle)
    return built, ref_oracle.spec


def _check_memory(
    model: Any, built: Sequence[oracles.Oracle], input_shape: tuple[int, ...]
) -> None:
    """Tracing, export and every timed oracle hold copies of the input: refuse before any."""
    from oracles.model import check_memory

    one = 4 * math.prod(int(d) for d in input_shape)
    copies = max([o.settings().get("pool", 4) for o in built if o.timed] or [1])
    layer = _largest_layer_bytes(model, input_shape)
    check_memory(
        oracle="compare-oracles",
        needed=one * copies + layer,
        what=f"{copies} float32 inputs of shape {'x'.join(map(str, input_shape))} and the "
        f"largest layer's input and output ({layer:,} bytes)",
        hint="give a smaller --input-size or --batch",
    )


def _measure_variant(
    module: Any,
    built: Sequence[oracles.Oracle],
    input_shape: tuple[int, ...],
    *,
    cache: MeasurementCache | None,
    allow_trace_warnings: bool,
) -> list[oracles.Measurement]:
    """One pruned variant measured by every oracle, in order (exported to ONNX once, for the
    oracles that take ONNX)."""
    from hwprune.export.onnx import export_onnx

    shapes = {"input": input_shape}
    onnx_bytes = None
    measured = []
    for oracle in built:
        if oracle.input_format == "onnx":
            if onnx_bytes is None:
                onnx_bytes = export_onnx(module, input_shape=input_shape,
                                         allow_trace_warnings=allow_trace_warnings)  # fmt: skip
            measured.append(oracles.measure(oracle, onnx_bytes, input_shapes=shapes, cache=cache))
        else:
            measured.append(oracles.measure(oracle, module, input_shapes=shapes, cache=cache))
    return measured


def _largest_layer_bytes(model: Any, input_shape: tuple[int, ...]) -> int:
    """Bytes of the largest layer input plus output in one forward pass, found on the meta
    device (shapes only, nothing allocated); 0 where the model cannot run there."""
    import copy

    import torch

    largest = 0

    def hook(module: Any, args: Any, output: Any) -> None:
        nonlocal largest
        tensors = [t for t in (*args, output) if isinstance(t, torch.Tensor)]
        largest = max(largest, sum(t.numel() * t.element_size() for t in tensors))

    try:
        meta = copy.deepcopy(model).to("meta")
        handles = [m.register_forward_hook(hook) for m in meta.modules()]
        with torch.no_grad():
            meta(torch.empty(input_shape, device="meta"))
        for h in handles:
            h.remove()
    except Exception as exc:  # an op without a meta kernel: skip the estimate, not the run
        log.debug("no meta-device estimate of activation memory: %s", exc)
        return 0
    return largest


def write_report(result: Comparison, out_dir: str | Path) -> Path:
    """Write report.md, comparison.json and one scatter plot per oracle against the reference."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(result.to_json())
    plots = _plot(result, out)
    lines = [
        f"# Oracle comparison: {result.model} at {'x'.join(map(str, result.input_shape))}",
        "",
        f"{len(result.keeps)} pruned variants (mean keep ratio from {max(result.keeps):.2f} "
        f"to {min(result.keeps):.2f}); reference oracle: `{result.reference}`. "
        f"Measured in {result.seconds:.1f} s.",
        "",
        "## Each oracle as a predictor of the reference (best linear fit)",
        "",
        "| oracle | Spearman | Kendall | mean rel. error | max rel. error | R² | smallest / dense |",
        "|---|---|---|---|---|---|---|",
    ]
    by_pair = {(p.a, p.b): p for p in result.pairs} | {(p.b, p.a): p for p in result.pairs}
    for p in result.predictors:
        pair = by_pair[(p.oracle, result.reference)]
        lines.append(
            f"| `{p.oracle}` | {pair.spearman:.3f} | {pair.kendall:.3f} | {p.mean_rel_error:.1%} | "
            f"{p.max_rel_error:.1%} | {p.r2:.3f} | {result.ratio[p.oracle]:.3f} |"
        )
    lines.append(
        f"| `{result.reference}` (reference) | 1 | 1 | | | | {result.ratio[result.reference]:.3f} |"
    )
    lines += [
        "",
        "## Rank correlation between every pair",
        "",
        "| a | b | Spearman | Kendall |",
        "|---|---|---|---|",
    ]
    for p in result.pairs:
        lines.append(f"| `{p.a}` | `{p.b}` | {p.spearman:.3f} | {p.kendall:.3f} |")
    if plots:
        lines += ["", "## Scatter plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _plot(result: Comparison, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no scatter plots")
        return []
    paths = []
    ref = result.values[result.reference]
    for spec in result.oracles:
        if spec == result.reference:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.scatter(result.values[spec], ref, s=18)
        ax.scatter([result.values[spec][0]], [ref[0]], marker="*", s=90, color="C3", label="dense")
        ax.set_xlabel(f"{spec} [{result.units[spec]}]")
        ax.set_ylabel(f"{result.reference} [{result.units[result.reference]}]")
        ax.set_title(result.model, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = "scatter_" + "".join(c if c.isalnum() else "_" for c in spec) + ".png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths
