"""Stages ``export`` and ``report``: model.pt, policy.json, the verified ONNX (and the OpenVINO
IR where a budget is timed by OpenVINO), the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hwprune.errors import HwpruneError
from hwprune.evaluate.precision import timing_report
from hwprune.evaluate.surrogate import surrogate_report
from hwprune.run.context import RunContext
from hwprune.run.estimate import read_estimate
from hwprune.run.final import Final
from hwprune.run.load import Loaded, space_options
from hwprune.run.result import BudgetCheck, PruneResult
from hwprune.run.search import Dense, Searched

__all__ = ["Exported", "export", "report", "pruned_meta", "PRUNED_ATTR", "OPENVINO_DIR"]

# The attribute a pruned module carries: what ``hwprune.save`` needs to rebuild it.
PRUNED_ATTR = "_hwprune_pruned"
# The run's subfolder for the OpenVINO IR (model.xml, model.bin).
OPENVINO_DIR = "openvino"


@dataclass(frozen=True)
class Exported:
    """What the export stage wrote: the checked ONNX (+ engine), and the checked IR or None."""

    onnx: Any  # hwprune.export.final.ExportResult
    openvino: Any = None  # hwprune.export.openvino.OpenVINOExportResult


def policy_dict(policy: Any, space: Any) -> dict[str, Any]:
    try:
        return policy.to_dict(space)
    except (TypeError, HwpruneError):
        return policy.to_dict()


def pruned_meta(ctx: RunContext, loaded: Loaded, f: Final) -> dict[str, Any]:
    """The checkpoint meta of the pruned model: base model, policy, space options, metrics."""
    meta = {
        **loaded.meta,
        "pruned": True,
        "policy": policy_dict(f.candidate.policy, loaded.space),
        "space": space_options(ctx.config, loaded.space),
        "units": {u.id: int(u.channels) for u in loaded.space.units},
    }
    if f.metrics_final and "accuracy" in f.metrics_final:
        meta["accuracy"] = float(f.metrics_final["accuracy"])
    return {k: v for k, v in meta.items() if v is not None}


def export(ctx: RunContext, loaded: Loaded, d: Dense, f: Final) -> Exported:
    """Stage ``export``: policy.json, model.pt (weights + meta), model.onnx (+ engine), and
    openvino/model.xml + .bin when a budget's oracle is OpenVINO (the runtime it was proven on),
    each checked against torch on random inputs."""
    from hwprune.export.final import final_export
    from hwprune.models import save_checkpoint
    from oracles import capabilities

    openvino = any(capabilities(c.oracle).export_format == "openvino-ir" for c in d.constraints)
    with ctx.stage("export", 3 if openvino else 2, "exporting") as step:
        meta = pruned_meta(ctx, loaded, f)
        ctx.path("policy.json").write_text(json.dumps(meta["policy"], indent=2) + "\n",
                                           encoding="utf-8")  # fmt: skip
        save_checkpoint(f.module, ctx.path("model.pt"), meta=meta)
        setattr(f.module, PRUNED_ATTR, meta)
        step(1)
        exported = final_export(
            f.module,
            example_inputs=loaded.example_inputs,
            onnx_path=ctx.path("model.onnx"),
            engine_path=ctx.path("model.engine") if ctx.config.tensorrt else None,
            opset=ctx.config.opset,
            seed=ctx.config.seed,
            allow_trace_warnings=ctx.config.allow_trace_warnings,
        )
        step(2, max_abs_diff=exported.max_abs_diff)
        ir = None
        if openvino:
            ir = _export_openvino(ctx, loaded, f, exported.onnx_path)
            step(3, openvino_max_abs_diff=ir.max_abs_diff)
    return Exported(onnx=exported, openvino=ir)


def _export_openvino(ctx: RunContext, loaded: Loaded, f: Final, onnx_path: Path) -> Any:
    """The OpenVINO IR of the verified ONNX, compared with the torch module; a refusal names
    what the run kept."""
    from hwprune.errors import ExportError
    from hwprune.export.openvino import export_openvino

    try:
        return export_openvino(
            onnx_path, ctx.path(OPENVINO_DIR), module=f.module,
            example_inputs=loaded.example_inputs, seed=ctx.config.seed,
        )  # fmt: skip
    except ExportError as exc:
        raise ExportError(
            f"{exc}; model.pt and model.onnx are written in {ctx.run_dir}, "
            "'hwprune export --openvino DIR' retries the IR"
        ) from exc


def _count(module: Any, *, nonzero: bool = False) -> int:
    if nonzero:
        return int(sum(int((p != 0).sum()) for p in module.parameters()))
    return int(sum(p.numel() for p in module.parameters()))


def _paths(ctx: RunContext, exported: Exported) -> dict[str, Path]:
    paths = {"run_dir": ctx.run_dir}
    for key, name in (("config", "config.json"), ("episodes", "episodes.jsonl"),
                      ("policy", "policy.json"), ("model", "model.pt"),
                      ("report_md", "report.md"), ("report_json", "report.json")):  # fmt: skip
        paths[key] = ctx.path(name)
    paths["onnx"] = exported.onnx.onnx_path
    if exported.onnx.engine_path is not None:
        paths["engine"] = exported.onnx.engine_path
    if exported.openvino is not None:
        paths["openvino"] = exported.openvino.xml_path
    return paths


def _checks(d: Dense, f: Final) -> tuple[BudgetCheck, ...]:
    return tuple(
        BudgetCheck(
            budget=c.budget.text,
            quantity=c.name,
            oracle=c.oracle,
            unit=c.unit,
            dense=float(c.dense_value),
            bound=float(c.bound),
            final=float(f.measurements[c.name].value),
            met=bool(f.met[c.name]),
            margin=1.0 - float(f.measurements[c.name].value) / float(c.bound),
            statistic=str(f.measurements[c.name].statistic),
        )  # fmt: skip
        for c in d.constraints
    )


def _acc(metrics: dict[str, float] | None) -> float | None:
    return None if not metrics or "accuracy" not in metrics else float(metrics["accuracy"])


def result_of(
    ctx: RunContext, loaded: Loaded, d: Dense, s: Searched, f: Final, exported: Exported
) -> PruneResult:
    """The typed result of a finished run."""
    metrics = {k: v for k, v in (("dense", d.metrics), ("pruned", f.metrics_pruned),
                                 ("final", f.metrics_final)) if v is not None}  # fmt: skip
    return PruneResult(
        run_dir=ctx.run_dir, policy=f.candidate.policy, budgets=_checks(d, f),
        dense={c.name: float(c.dense_value) for c in d.constraints},
        final={c.name: float(f.measurements[c.name].value) for c in d.constraints},
        met=dict(f.met), accuracy_dense=_acc(d.metrics), accuracy_pruned=_acc(f.metrics_pruned),
        accuracy_finetuned=_acc(f.metrics_final), params_dense=_count(loaded.model),
        params_final=_count(f.module, nonzero=ctx.config.granularity != "channel"),
        stage_seconds=dict(ctx.stage_seconds), paths=_paths(ctx, exported),
        searcher=s.searcher, evaluations=d.evaluator.evaluations,
        first_feasible_evaluation=s.first_feasible, repairs=f.repairs,
        export_max_abs_diff=exported.onnx.max_abs_diff, tensorrt=exported.onnx.tensorrt_message,
        openvino_max_abs_diff=None if exported.openvino is None else exported.openvino.max_abs_diff,
        metrics=metrics, score_dense=d.evaluator.dense_accuracy, score_chosen=f.candidate.accuracy,
        score_floor=d.evaluator.score_floor,
        task=loaded.task.name, finetuned=loaded.task.finetune is not None,
        evaluated=loaded.task.evaluate is not None, model=f.module,
        proxy=loaded.task.proxy,
        proxy_seconds=mean_proxy_seconds(d.evaluator.history),
        surrogate=surrogate_report(d.evaluator),
        oracle_calls=dict(d.evaluator.oracle_calls), search_extra=dict(s.extra),
        timing=timing_report(d.evaluator, f.measurements), parts=ctx.parts,
        output_shapes=f.shapes, left_whole={k.id: k.reason for k in loaded.space.skipped},
        cost_estimate=read_estimate(ctx) or {},
    )  # fmt: skip


def mean_proxy_seconds(history: Any) -> float | None:
    """The search proxy's mean seconds per evaluated candidate (each computed once; those of
    a resumed run's earlier sessions count with the seconds they cost then)."""
    seconds = [float(o.timings["proxy"]) for o in history if "proxy" in o.timings]
    return sum(seconds) / len(seconds) if seconds else None


def _unit_names(space: Any) -> list[str]:
    return [str(u.id or f"unit {i}") for i, u in enumerate(space.units)]


def _searcher_section(s: Searched) -> str:
    """The searcher's own report.md section, drawn from its ``extra`` ("" for none)."""
    from hwprune.agents import SEARCHERS

    cls = SEARCHERS.get(s.searcher) if s.searcher in SEARCHERS else None
    return cls.report_section(s.extra) if cls is not None else ""


def report(
    ctx: RunContext, loaded: Loaded, d: Dense, s: Searched, f: Final, exported: Exported
) -> PruneResult:
    """Stage ``report``: plots, report.md and report.json."""
    from hwprune.report import write_report, write_report_json
    from hwprune.run.stairs import channel_section

    options = {**ctx.config.to_dict(), "finetune_text": loaded.finetune_text}
    with ctx.stage("report", 1, "writing the report") as step:
        result = result_of(ctx, loaded, d, s, f, exported)
        section, stair_plots = channel_section(ctx, loaded, f.candidate.policy)
        sections = [t for t in (_searcher_section(s), section) if t]
        plots = write_report(
            ctx.run_dir, result=result, history=d.evaluator.history,
            chosen_key=f.candidate.key, constraints=d.constraints,
            unit_names=_unit_names(loaded.space), lagrange=s.extra.get("lagrange"),
            mean_costs=s.extra.get("mean_costs"),
            options=options, sections=sections,
        )  # fmt: skip
        step(1)
    paths = {**result.paths, **{f"plot:{p.stem}": p for p in [*plots, *stair_plots]}}
    # report.json again, with the report stage's own time included.
    result = replace(result, stage_seconds=dict(ctx.stage_seconds), paths=paths)
    write_report_json(ctx.run_dir, result=result, options=options)
    return result
